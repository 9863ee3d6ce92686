"""The registry's write generation: a counter that every write transaction moves on by one.

A process that remembers what the database holds between transactions (the registry
service: known.py) must know whether anyone else wrote in between: another registry service,
or an operator's ``obsbus`` command writing directly. ``Database.transaction`` bumps the
counter just before each write transaction commits; a process that finds the counter moved
on since its own last bump knows another writer committed, and forgets what it remembered.

The bump comes last so the row lock it takes is held only while committing: writers are not
serialised by it, and no lock cycle can form with the rows they wrote before.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

TABLE = "registry_generation"
_BUMP = text(f"UPDATE {TABLE} SET generation = generation + 1 WHERE id = 1")
_READ = text(f"SELECT generation FROM {TABLE} WHERE id = 1")


def current(conn: Connection) -> int:
    """The generation as the connection sees it (the last committed write's, or ours)."""
    return int(conn.execute(_READ).scalar_one())


def bump(conn: Connection) -> int:
    """Move the generation on (locking its row until commit); returns the new value.

    The value before it, ``bump - 1``, is the last committed write's: that is what a
    process compares with the generation of its own previous write.
    """
    conn.execute(_BUMP)
    return current(conn)
