"""The registry's write generation: a counter that every write transaction moves on by one.

A process that remembers what the database holds between transactions (the registry
service: known.py) must know whether anyone else wrote in between: a registry service on
another host sharing the database, or anything writing to it directly. ``Database.transaction``
bumps the counter just before each write transaction of a ``Registry`` commits; a process that
finds the counter moved on since its own last bump knows another writer committed, and forgets
what it remembered. (Raw SQL and schema migrations do not count: they are not registry writes.)

The bump comes last, so its row lock is held only while committing: other writers wait for
each other's commit, not for each other's whole transaction, and no lock cycle can form with
the rows they wrote before.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..core.errors import DatabaseError

TABLE = "registry_generation"
_BUMP = text(f"UPDATE {TABLE} SET generation = generation + 1 WHERE id = 1 RETURNING generation")
_READ = text(f"SELECT generation FROM {TABLE} WHERE id = 1")


def current(conn: Connection) -> int:
    """The generation as the connection sees it (the last committed write's, or ours)."""
    return _value(conn.execute(_READ).scalar())


def bump(conn: Connection) -> int:
    """Move the generation on (locking its row until commit); returns the new value.

    The value before it, ``bump - 1``, is the last committed write's: that is what a
    process compares with the generation of its own previous write.
    """
    return _value(conn.execute(_BUMP).scalar())


def _value(found: int | None) -> int:
    if found is None:
        raise DatabaseError(
            f"the registry database has no write generation (table {TABLE} is empty); "
            "upgrade it with `obsbus migrate REPO`"
        )
    return int(found)
