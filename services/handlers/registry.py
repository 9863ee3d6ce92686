"""The registry service's handler: the only writer of the registry database.

A batch of commands is applied in one transaction. Each command runs in a savepoint, so a
rejected command (a conflict, an unknown collection...) is answered with a rejection and the
rest of the batch still applies. Every consumed message is recorded in the exactly-once inbox
(services/bus/inbox.py) in the same transaction as its effect, together with the messages it
produced: when Kafka delivers it again (after a crash, before the offset commit), it is not
applied twice and the same answers are sent again. What each result is answered with is in
registry_answers.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog

from ..bus.declaration import Declaration
from ..bus.inbox import Inbox
from ..bus.runner import Incoming, Outgoing
from ..bus.topics import CALIB_OUTCOMES, INGEST_OUTCOMES, REGISTRY_COMMANDS, REGISTRY_EVENTS
from ..core.errors import ObsbusError
from ..messages import RegistryCommand
from ..registry import generation
from ..registry.clock import changes_made_at
from ..registry.command_types import apply_command
from ..registry.commands import IngestApplier, IngestRaw
from ..registry.registry import Registry
from ..registry.schema import build_metadata
from .registry_answers import Applied, Rejected, Result, answers

log = structlog.get_logger(__name__)

SERVICE = Declaration(
    "registry",
    reads=(REGISTRY_COMMANDS,),
    writes=(REGISTRY_EVENTS, INGEST_OUTCOMES, CALIB_OUTCOMES),
    group="obsbus-registry",
    doc="registry commands in, applied in one transaction per batch; events and outcomes out",
)


class _AnotherWriterError(Exception):
    """Another writer committed while a batch was applied: roll it back, apply it again.

    Control flow inside the handler only; never reaches a user."""


def _another_writer(group: str, when: str) -> None:
    log.warning(
        "another writer committed to the registry",
        when=when,
        group=group,
        consequence="what the service remembered of the database is forgotten; unless it "
        "came through the registry-command topic, a replay will not reproduce the change",
    )


def _command(item: Incoming) -> RegistryCommand:
    assert isinstance(item.message, RegistryCommand)  # the runner checks each topic's record
    return item.message


class RegistryHandler:
    def __init__(self, registry: Registry, group: str) -> None:
        self.registry = registry
        self.group = group
        self.applier = IngestApplier(registry)
        self.inbox = Inbox(
            build_metadata(registry.universe).tables["bus_processed"],
            group,
            lambda item: _command(item).command_id,
        )

    def __call__(self, batch: Sequence[Incoming]) -> list[Outgoing]:
        if self.registry.db.in_transaction:  # a programming error, never a user's
            raise RuntimeError("RegistryHandler owns its batch's transaction: call it outside one")
        try:
            return self._apply_batch(batch, strict=True)
        except _AnotherWriterError:
            # Rolled back, and the applier forgot: applied again, it uses only what it reads
            # in its own transaction, as any writer does (so a writer that never stops
            # cannot keep it from going on).
            _another_writer(self.group, "while a batch was applied")
            return self._apply_batch(batch, strict=False)

    def _apply_batch(self, batch: Sequence[Incoming], *, strict: bool) -> list[Outgoing]:
        db = self.registry.db
        with self.registry.transaction() as conn:
            # What the applier knows the database holds stays true from one batch to the
            # next while no one else writes, so an exposure's records are synced once, not
            # again in each of its small batches. It forgets on a rollback, after every
            # command but raw ingest (see _apply), and when the write generation shows that
            # another writer committed since this service's last batch (generation.py).
            start = generation.current(conn)
            if start != db.last_generation:
                if db.last_generation is not None and strict:  # (not again when retried)
                    _another_writer(self.group, "since the last batch")
                self.applier.forget()
            sorted_ = self.inbox.sort(conn, batch)
            produced = sorted_.answered
            produced.update(self._ingest_together(conn, [(i, batch[i]) for i in sorted_.fresh]))
            for i in sorted_.fresh:
                if i not in produced:
                    produced[i] = self._in_savepoint(conn, batch[i])
            for i, original in sorted_.copies.items():
                produced[i] = produced[original]
            self.inbox.record(conn, batch, sorted_.todo, produced)
            # A commit by another writer while this batch ran (PostgreSQL; SQLite lets one
            # writer at a time) may have made what the applier remembered untrue.
            interleaved = db.bump_generation(conn) - 1 != start
            if interleaved and strict:
                raise _AnotherWriterError
        if interleaved:
            self.applier.forget()
        return [out for i in range(len(batch)) for out in produced[i]]

    def _in_savepoint(self, conn: Any, item: Incoming) -> list[Outgoing]:
        command = _command(item)
        savepoint = conn.begin_nested()
        try:
            # History columns take the command's issue time and issuer: a replay writes the
            # same history, and a user's write through the service is stamped as theirs.
            with changes_made_at(command.issued_at_ns), self._as(command):
                result = self._apply(command)
        except BaseException:
            savepoint.rollback()
            self.applier.forget()
            raise
        if isinstance(result, Rejected):
            savepoint.rollback()  # a rejected command leaves nothing behind
            self.applier.forget()
        else:
            savepoint.commit()
        return answers(item, command, result)

    @contextmanager
    def _as(self, command: RegistryCommand) -> Iterator[None]:
        previous, self.registry.actor = self.registry.actor, command.issued_by
        try:
            yield
        finally:
            self.registry.actor = previous

    def _ingest_together(
        self, conn: Any, items: list[tuple[int, Incoming]]
    ) -> dict[int, list[Outgoing]]:
        """All IngestRaw commands of the batch in one go; {} if any is rejected (then each is
        applied on its own, so only that one is refused)."""
        commands = []
        for i, item in items:
            command = _command(item)
            if isinstance(command.body, IngestRaw):
                commands.append((i, item, command, command.body))
        if len(commands) < 2:
            return {}
        issued = {
            ref.id: command.issued_at_ns for _, _, command, raw in commands for ref in raw.datasets
        }
        savepoint = conn.begin_nested()
        try:
            with changes_made_at(min(issued.values()), issued):
                results = self.applier.apply_many([raw for *_, raw in commands])
        except ObsbusError:
            savepoint.rollback()
            self.applier.forget()
            return {}
        savepoint.commit()
        return {
            i: answers(item, command, result)
            for (i, item, command, _), result in zip(commands, results, strict=True)
        }

    def _apply(self, command: RegistryCommand) -> Result:
        """Apply one command: what it did, or why it was refused."""
        cmd = command.body
        try:
            if isinstance(cmd, IngestRaw):
                return self.applier.apply(cmd)
            try:
                return Applied(apply_command(self.registry, cmd))
            finally:
                # Whatever it changed, a record remembered as it was is compared again.
                self.applier.forget_records()
        except ObsbusError as err:
            return Rejected(err)
