"""Where a Butler's registry changes go: the ``Writes`` it was opened with.

``LocalWrites`` (the default) applies each change here, in one transaction. While a registry
service serves the repository it is the only writer (it owns the database, and its command
topic is what a replay rebuilds the registry from), so whoever opens the Butler then gives it
a writer that sends each change to the service and waits for its answer
(``services.clients.writes.BusWrites``; the command line decides, in ``services.cli.opening``).
Either way the same function applies the change (``services.registry.command_types.apply_command``),
so the result is the same. The library never looks for running services itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .core.errors import NoAnswerError
from .registry.changes import ChangeSet
from .registry.command_types import apply_command
from .registry.commands import Certify, Decertify, SetChain
from .registry.registry import Registry

Change = ChangeSet | Certify | Decertify | SetChain


class Writes(Protocol):
    def apply(self, change: Change) -> None: ...

    def close(self) -> None:
        """Let go of what it holds (the Butler that made it calls this as it closes)."""


# What a Butler is opened with: it makes its writer from its registry, and owns it.
WritesFactory = Callable[[Registry], Writes]


@dataclass
class LocalWrites:
    registry: Registry

    def apply(self, change: Change) -> None:
        with self.registry.transaction():
            apply_command(self.registry, change)

    def close(self) -> None:
        pass  # the registry is the Butler's, closed by it


def apply_or_hold(writes: Writes, change: Change) -> NoAnswerError | None:
    """Apply ``change``; if it was sent to the registry service but not answered, return the
    error instead of raising it, so the caller keeps the files the change points at (the
    service may still apply it) and raises it once its datastore transaction is committed."""
    try:
        writes.apply(change)
    except NoAnswerError as err:
        return err
    return None
