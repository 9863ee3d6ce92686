"""The registry service's handler: the only writer of the registry database.

A batch of commands is applied in one transaction. Each command runs in a savepoint, so a
rejected command (a conflict, an unknown collection...) is answered with a rejection and the
rest of the batch still applies. Every consumed message is recorded in ``bus_processed`` in
the same transaction as its effect, together with the messages it produced: when Kafka
delivers it again (after a crash, before the offset commit), it is not applied twice and the
same answers are sent again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog
from sqlalchemy import select, tuple_

from ..bus.messages import command_from
from ..bus.runner import Incoming, Outgoing
from ..bus.topics import CALIB_OUTCOMES, INGEST_OUTCOMES, REGISTRY_EVENTS
from ..core.errors import ObsbusError
from ..core.timespan import now_ns
from ..ingest.raws import IngestOutcome
from ..ingest.service import exposure_key, outcome_value
from . import generation
from .changes import ChangeSet
from .clock import changes_made_at
from .commands import Certify, Decertify, IngestApplier, IngestRaw, IngestResult, apply_command
from .registry import Registry
from .schema import build_metadata
from .suites import CertifySuite

log = structlog.get_logger(__name__)


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


class RegistryHandler:
    def __init__(self, registry: Registry, group: str) -> None:
        self.registry = registry
        self.group = group
        self.applier = IngestApplier(registry)
        self._processed = build_metadata(registry.universe).tables["bus_processed"]

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
        produced: dict[int, list[Outgoing]] = {}
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
            done = self._already_processed(conn, batch)
            todo, stale = [], []
            for i, item in enumerate(batch):
                d = item.delivery
                message_id, previous = done.get((d.topic, d.partition, d.offset), (None, []))
                if message_id == item.value["command_id"]:
                    produced[i] = previous  # applied before: send the same answers again
                    continue
                if message_id is not None:
                    stale.append(i)  # the topic was recreated: offsets were reused
                todo.append(i)
            self._forget_offsets(conn, [batch[i] for i in stale])
            # The same command sent again (a producer's retry: same id, a new offset).
            repeats = self._applied_by_id(conn, [batch[i].value["command_id"] for i in todo])
            first: dict[str, int] = {}  # ... or twice in this batch: the first copy is applied
            copies: dict[int, int] = {}
            for i in todo:
                command_id = batch[i].value["command_id"]
                if command_id in repeats:
                    produced[i] = repeats[command_id]
                elif command_id in first:
                    copies[i] = first[command_id]
                else:
                    first[command_id] = i
            fresh = [i for i in todo if i not in produced and i not in copies]
            produced.update(self._ingest_together(conn, [(i, batch[i]) for i in fresh]))
            for i in fresh:
                if i not in produced:
                    produced[i] = self._in_savepoint(conn, batch[i])
            for i, original in copies.items():
                produced[i] = produced[original]
            rows = [
                {
                    "consumer_group": self.group,
                    "topic": batch[i].delivery.topic,
                    "partition": batch[i].delivery.partition,
                    "offset": batch[i].delivery.offset,
                    "message_id": batch[i].value["command_id"],
                    "processed_at": now_ns(),
                    "outputs": json.dumps([_dump(o) for o in produced[i]]).encode(),
                }
                for i in todo
            ]
            if rows:
                conn.execute(self._processed.insert(), rows)
            # A commit by another writer while this batch ran (PostgreSQL; SQLite lets one
            # writer at a time) may have made what the applier remembered untrue.
            interleaved = db.bump_generation(conn) - 1 != start
            if interleaved and strict:
                raise _AnotherWriterError
        if interleaved:
            self.applier.forget()
        return [out for i in range(len(batch)) for out in produced[i]]

    def _in_savepoint(self, conn: Any, item: Incoming) -> list[Outgoing]:
        savepoint = conn.begin_nested()
        try:
            # History columns take the command's issue time and issuer: a replay writes the
            # same history, and a user's write through the service is stamped as theirs.
            with changes_made_at(int(item.value["issued_at_ns"])), self._as(item):
                out = self._apply(item)
        except BaseException:
            savepoint.rollback()
            self.applier.forget()
            raise
        if any(o.value.get("kind") == "command-rejected" for o in out):
            savepoint.rollback()  # a rejected command leaves nothing behind
            self.applier.forget()
        else:
            savepoint.commit()
        return out

    @contextmanager
    def _as(self, item: Incoming) -> Iterator[None]:
        previous, self.registry.actor = self.registry.actor, str(item.value["issued_by"])
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
            try:
                cmd = command_from(item.value)
            except ObsbusError:
                continue
            if isinstance(cmd, IngestRaw):
                commands.append((i, item, cmd))
        if len(commands) < 2:
            return {}
        issued = {
            ref.id: int(item.value["issued_at_ns"])
            for _, item, cmd in commands
            for ref in cmd.datasets
        }
        savepoint = conn.begin_nested()
        try:
            with changes_made_at(min(issued.values()), issued):
                results = self.applier.apply_many([cmd for _, _, cmd in commands])
        except ObsbusError:
            savepoint.rollback()
            self.applier.forget()
            return {}
        savepoint.commit()
        return {
            i: self._ingested(cmd, item, result)
            for (i, item, cmd), result in zip(commands, results, strict=True)
        }

    def _already_processed(
        self, conn: Any, batch: Sequence[Incoming]
    ) -> dict[tuple[str, int, int], tuple[str, list[Outgoing]]]:
        c = self._processed.c
        keys = [(i.delivery.topic, i.delivery.partition, i.delivery.offset) for i in batch]
        rows = conn.execute(
            select(c.topic, c.partition, c.offset, c.message_id, c.outputs).where(
                c.consumer_group == self.group,
                tuple_(c.topic, c.partition, c.offset).in_(keys),
            )
        )
        return {(t, p, o): (m, [_load(x) for x in json.loads(out)]) for t, p, o, m, out in rows}

    def _applied_by_id(self, conn: Any, command_ids: Sequence[str]) -> dict[str, list[Outgoing]]:
        """Commands among ``command_ids`` already applied (at another offset): their answers."""
        if not command_ids:
            return {}
        c = self._processed.c
        rows = conn.execute(
            select(c.message_id, c.outputs)
            .where(c.consumer_group == self.group, c.message_id.in_(sorted(set(command_ids))))
            .order_by(c.processed_at.desc())  # the first time it was applied wins
        )
        return {m: [_load(x) for x in json.loads(out)] for m, out in rows}

    def _forget_offsets(self, conn: Any, items: Sequence[Incoming]) -> None:
        c = self._processed.c
        for item in items:
            d = item.delivery
            conn.execute(
                self._processed.delete().where(
                    c.consumer_group == self.group,
                    c.topic == d.topic,
                    c.partition == d.partition,
                    c.offset == d.offset,
                )
            )

    def _apply(self, item: Incoming) -> list[Outgoing]:
        value = item.value
        command_id = value["command_id"]
        key = None if item.delivery.key is None else item.delivery.key.decode()
        try:
            cmd = command_from(value)
            if isinstance(cmd, IngestRaw):
                return self._ingest(cmd, item, key)
            try:
                changed = apply_command(self.registry, cmd)
            finally:
                # Whatever it changed, a record remembered as it was is compared again.
                self.applier.forget_records()
        except ObsbusError as err:
            return self._rejected(value, key, err)
        if isinstance(cmd, ChangeSet):
            ids = [str(ref.id) for ref in cmd.datasets]
            message = f"{cmd.what}: {changed} row(s)"
            return [self._event(command_id, key, "changes-applied", message, dataset_ids=ids)]
        kind = {Certify: "certified", CertifySuite: "certified", Decertify: "decertified"}.get(
            type(cmd), "chain-defined"
        )
        out = [self._event(command_id, key, kind, f"{kind}: {changed} row(s)")]
        if isinstance(cmd, Certify | CertifySuite | Decertify) and cmd.request_id is not None:
            out.append(
                self._calib_outcome(
                    cmd.request_id,
                    cmd.collection,
                    "blessed",
                    None,
                    f"{changed} validity range(s) certified",
                    changed,
                )
            )
        return out

    def _ingest(self, cmd: IngestRaw, item: Incoming, key: str | None) -> list[Outgoing]:
        try:
            result = self.applier.apply(cmd)
        except ObsbusError as err:
            outcome = IngestOutcome(cmd.file, "failed", err.code, str(err))
            return [
                *self._rejected(item.value, key, err, file=cmd.file),
                Outgoing(
                    INGEST_OUTCOMES.name,
                    key,
                    INGEST_OUTCOMES.record,
                    outcome_value(outcome, _arrival(item.value)),
                ),
            ]
        return self._ingested(cmd, item, result)

    def _ingested(self, cmd: IngestRaw, item: Incoming, result: IngestResult) -> list[Outgoing]:
        key = None if item.delivery.key is None else item.delivery.key.decode()
        exposure = int(cmd.datasets[0].data_id["exposure"])
        outcome = IngestOutcome(
            cmd.file,
            result.status,
            instrument=cmd.instrument,
            exposure=exposure,
            detectors=[int(r.data_id["detector"]) for r in cmd.datasets],
            dataset_ids=[str(r.id) for r in cmd.datasets],
            swaps=result.swaps,
        )
        kind = "datasets-registered" if result.status == "ingested" else "already-present"
        event = self._event(
            item.value["command_id"],
            key or exposure_key(cmd.instrument, exposure),
            kind,
            f"{len(cmd.datasets)} dataset(s) in {cmd.run}",
            dataset_ids=outcome.dataset_ids,
            file=cmd.file,
            records_inserted=result.records_inserted,
        )
        return [
            event,
            *self._swapped(item.value["command_id"], event.key, cmd, exposure, result),
            Outgoing(
                INGEST_OUTCOMES.name,
                key,
                INGEST_OUTCOMES.record,
                outcome_value(outcome, _arrival(item.value)),
            ),
        ]

    def _swapped(
        self, command_id: str, key: str | None, cmd: IngestRaw, exposure: int, result: IngestResult
    ) -> list[Outgoing]:
        """One "detector-swapped" event per new device in a slot, for whoever watches swaps.

        A swap is found only when its installation is first recorded, so a repeated raw, a
        later exposure with the same device or a restarted service finds none; a replay
        publishes nothing. Like every answer the event is stored in bus_processed: a command
        redelivered after a crash between commit and offset commit sends it again unchanged
        (same command_id, detector and since_ns), which is how a watcher recognises it.
        """
        since = {i.detector: i.since_ns for i in cmd.installations}
        out = []
        for swap in result.swaps:
            detector = int(swap["detector"])
            event = self._event(
                command_id,
                key,
                "detector-swapped",
                f"{cmd.instrument} detector {detector}: {swap['old_serial']} replaced by "
                f"{swap['new_serial']} from exposure {exposure}",
                file=cmd.file,
            )
            event.value.update(
                instrument=cmd.instrument,
                detector=detector,
                old_serial=swap["old_serial"],
                new_serial=swap["new_serial"],
                exposure=exposure,
                since_ns=since[detector],
            )
            out.append(event)
        return out

    def _rejected(
        self, value: dict[str, Any], key: str | None, err: ObsbusError, file: str | None = None
    ) -> list[Outgoing]:
        out = [
            self._event(
                value["command_id"], key, "command-rejected", str(err), reason=err.code, file=file
            )
        ]
        body = value["body"][1] if isinstance(value["body"], tuple) else value["body"]
        if body.get("request_id"):
            out.append(
                self._calib_outcome(
                    body["request_id"],
                    body.get("collection", ""),
                    "rejected",
                    err.code,
                    str(err),
                    0,
                )
            )
        return out

    def _event(
        self,
        command_id: str,
        key: str | None,
        kind: str,
        message: str,
        *,
        reason: str | None = None,
        dataset_ids: list[str] | None = None,
        records_inserted: int = 0,
        file: str | None = None,
    ) -> Outgoing:
        return Outgoing(
            REGISTRY_EVENTS.name,
            key,
            REGISTRY_EVENTS.record,
            {
                "command_id": command_id,
                "kind": kind,
                "reason": reason,
                "message": message,
                "dataset_ids": dataset_ids or [],
                "records_inserted": records_inserted,
                "at_ns": now_ns(),
                "file": file,
            },
        )

    @staticmethod
    def _calib_outcome(
        request_id: str,
        collection: str,
        status: str,
        reason: str | None,
        message: str,
        certified: int,
    ) -> Outgoing:
        return Outgoing(
            CALIB_OUTCOMES.name,
            collection,
            CALIB_OUTCOMES.record,
            {
                "request_id": request_id,
                "collection": collection,
                "status": status,
                "reason": reason,
                "message": message,
                "certified": certified,
                "at_ns": now_ns(),
            },
        )


def _arrival(value: dict[str, Any]) -> dict[str, Any] | None:
    """The RawArrival an IngestRaw command answers, if it carried one."""
    body = value["body"][1] if isinstance(value["body"], tuple) else value["body"]
    if body.get("arrival_id") is None:
        return None
    return {"arrival_id": body["arrival_id"], "detected_at_ns": body["detected_at_ns"]}


def _dump(o: Outgoing) -> dict[str, Any]:
    return {"topic": o.topic, "key": o.key, "record": o.record, "value": o.value}


def _load(x: dict[str, Any]) -> Outgoing:
    return Outgoing(x["topic"], x["key"], x["record"], x["value"])
