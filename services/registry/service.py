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
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, tuple_

from ..bus.messages import command_from
from ..bus.runner import Incoming, Outgoing
from ..bus.topics import CALIB_OUTCOMES, INGEST_OUTCOMES, REGISTRY_EVENTS
from ..core.errors import ObsbusError
from ..core.timespan import now_ns
from ..ingest.raws import IngestOutcome
from ..ingest.service import exposure_key, outcome_value
from .commands import Certify, Decertify, IngestApplier, IngestRaw, apply_command
from .registry import Registry
from .schema import build_metadata


class RegistryHandler:
    def __init__(self, registry: Registry, group: str) -> None:
        self.registry = registry
        self.group = group
        self.applier = IngestApplier(registry)
        self._processed = build_metadata(registry.universe).tables["bus_processed"]

    def __call__(self, batch: Sequence[Incoming]) -> list[Outgoing]:
        outputs: list[Outgoing] = []
        with self.registry.transaction() as conn:
            self.applier.new_batch()
            done = self._already_processed(conn, batch)
            rows = []
            for item in batch:
                d = item.delivery
                previous = done.get((d.topic, d.partition, d.offset))
                if previous is not None:
                    outputs.extend(previous)
                    continue
                with conn.begin_nested():
                    produced = self._apply(item)
                outputs.extend(produced)
                rows.append(
                    {
                        "consumer_group": self.group,
                        "topic": d.topic,
                        "partition": d.partition,
                        "offset": d.offset,
                        "processed_at": now_ns(),
                        "outputs": json.dumps([_dump(o) for o in produced]).encode(),
                    }
                )
            if rows:
                conn.execute(self._processed.insert(), rows)
        return outputs

    def _already_processed(
        self, conn: Any, batch: Sequence[Incoming]
    ) -> dict[tuple[str, int, int], list[Outgoing]]:
        c = self._processed.c
        keys = [(i.delivery.topic, i.delivery.partition, i.delivery.offset) for i in batch]
        rows = conn.execute(
            select(c.topic, c.partition, c.offset, c.outputs).where(
                c.consumer_group == self.group,
                tuple_(c.topic, c.partition, c.offset).in_(keys),
            )
        )
        return {(t, p, o): [_load(x) for x in json.loads(out)] for t, p, o, out in rows}

    def _apply(self, item: Incoming) -> list[Outgoing]:
        value = item.value
        command_id = value["command_id"]
        key = None if item.delivery.key is None else item.delivery.key.decode()
        try:
            cmd = command_from(value)
            if isinstance(cmd, IngestRaw):
                return self._ingest(cmd, value, key)
            changed = apply_command(self.registry, cmd)
        except ObsbusError as err:
            return self._rejected(value, key, err)
        kind = {Certify: "certified", Decertify: "decertified"}.get(type(cmd), "chain-defined")
        out = [self._event(command_id, key, kind, f"{kind}: {changed} row(s)")]
        if isinstance(cmd, Certify | Decertify) and cmd.request_id is not None:
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

    def _ingest(self, cmd: IngestRaw, value: dict[str, Any], key: str | None) -> list[Outgoing]:
        body = value["body"][1] if isinstance(value["body"], tuple) else value["body"]
        arrival = None
        if body.get("arrival_id") is not None:
            arrival = {"arrival_id": body["arrival_id"], "detected_at_ns": body["detected_at_ns"]}
        try:
            result = self.applier.apply(cmd)
        except ObsbusError as err:
            outcome = IngestOutcome(cmd.file, "failed", err.code, str(err))
            return [
                *self._rejected(value, key, err, file=cmd.file),
                Outgoing(
                    INGEST_OUTCOMES.name,
                    key,
                    INGEST_OUTCOMES.record,
                    outcome_value(outcome, arrival),
                ),
            ]
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
            value["command_id"],
            key or exposure_key(cmd.instrument, exposure),
            kind,
            f"{len(cmd.datasets)} dataset(s) in {cmd.run}",
            dataset_ids=outcome.dataset_ids,
            file=cmd.file,
            records_inserted=result.records_inserted,
        )
        return [
            event,
            Outgoing(
                INGEST_OUTCOMES.name, key, INGEST_OUTCOMES.record, outcome_value(outcome, arrival)
            ),
        ]

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


def _dump(o: Outgoing) -> dict[str, Any]:
    return {"topic": o.topic, "key": o.key, "record": o.record, "value": o.value}


def _load(x: dict[str, Any]) -> Outgoing:
    return Outgoing(x["topic"], x["key"], x["record"], x["value"])
