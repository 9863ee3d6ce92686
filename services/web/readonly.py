"""A repository opened for reading only, by construction: the database refuses writes.

The HTTP API serves from such a Butler. Its registry's engine is made read-only where every
engine is made (``services.registry.database.create_engine``): SQLite opens the file with
``mode=ro``, PostgreSQL sessions start with ``default_transaction_read_only=on``. So a write
that some code path attempted anyway fails in the database itself (a ``DatabaseError``),
whatever obsbus code made it; and its changes have nowhere to go but to ``RefusedWrites``,
which refuses them before they reach the database at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..butler import Butler
from ..core.errors import ReadOnlyError
from ..registry.registry import Registry
from ..writes import Change

ACTOR = "obsbus-web"


@dataclass
class RefusedWrites:
    """The ``Writes`` of a read-only Butler: every change is refused."""

    registry: Registry

    def apply(self, change: Change) -> None:
        raise ReadOnlyError("this repository is opened read-only: nothing can be written")

    def close(self) -> None:
        pass


def open_read_only(repo: str | Path) -> Butler:
    """Open ``repo`` (its ``obsbus.yaml`` says where the registry is) for reading only."""
    return Butler.open(repo, actor=ACTOR, writes=RefusedWrites, read_only=True)
