"""The exactly-once inbox: which consumed messages took effect, and what they answered.

Delivery is at least once (runner.py): after a crash before the offset commit, Kafka
delivers again what was already handled. A handler whose effects live in a database records
every message it consumed in its table (``bus_processed``) in the same transaction as their
effect, with the messages it produced. So a message delivered again is not applied again,
and its answers are sent again unchanged.

A message is known by its place (topic, partition, offset) and by its own id (``id_of``):
- same place, same id: delivered again; answer as before;
- same place, another id: the topic was recreated and offsets reused; the old row goes;
- same id at another place (a producer's retry), or twice in one batch: applied once, the
  copies answered the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, select, tuple_
from sqlalchemy.engine import Connection

from ..core.timespan import now_ns
from ..messages import RECORDS
from .runner import Incoming, Outgoing


@dataclass
class Sorted:
    """A batch sorted by the inbox: what to apply, and the answers of the rest."""

    fresh: list[int] = field(default_factory=list)  # batch indexes to apply, in order
    answered: dict[int, list[Outgoing]] = field(default_factory=dict)  # known answers
    copies: dict[int, int] = field(default_factory=dict)  # index -> the index it repeats
    todo: list[int] = field(default_factory=list)  # every index not recorded at its place


class Inbox:
    def __init__(self, table: Table, group: str, id_of: Callable[[Incoming], str]) -> None:
        self.table = table
        self.group = group
        self.id_of = id_of

    def sort(self, conn: Connection, batch: Sequence[Incoming]) -> Sorted:
        out = Sorted()
        done = self._at_places(conn, batch)
        stale = []
        for i, item in enumerate(batch):
            d = item.delivery
            message_id, previous = done.get((d.topic, d.partition, d.offset), (None, []))
            if message_id == self.id_of(item):
                out.answered[i] = previous  # applied before: send the same answers again
                continue
            if message_id is not None:
                stale.append(item)  # the topic was recreated: offsets were reused
            out.todo.append(i)
        self._forget_places(conn, stale)
        repeats = self._by_id(conn, [self.id_of(batch[i]) for i in out.todo])
        first: dict[str, int] = {}
        for i in out.todo:
            message_id = self.id_of(batch[i])
            if message_id in repeats:
                out.answered[i] = repeats[message_id]
            elif message_id in first:
                out.copies[i] = first[message_id]
            else:
                first[message_id] = i
                out.fresh.append(i)
        return out

    def record(
        self,
        conn: Connection,
        batch: Sequence[Incoming],
        todo: Sequence[int],
        answers: dict[int, list[Outgoing]],
    ) -> None:
        """Record the messages ``todo`` as processed, with their answers (same transaction
        as their effect)."""
        rows = [
            {
                "consumer_group": self.group,
                "topic": batch[i].delivery.topic,
                "partition": batch[i].delivery.partition,
                "offset": batch[i].delivery.offset,
                "message_id": self.id_of(batch[i]),
                "processed_at": now_ns(),
                "outputs": json.dumps([_dump(o) for o in answers[i]]).encode(),
            }
            for i in todo
        ]
        if rows:
            conn.execute(self.table.insert(), rows)

    def _at_places(
        self, conn: Connection, batch: Sequence[Incoming]
    ) -> dict[tuple[str, int, int], tuple[str, list[Outgoing]]]:
        c = self.table.c
        keys = [(i.delivery.topic, i.delivery.partition, i.delivery.offset) for i in batch]
        rows = conn.execute(
            select(c.topic, c.partition, c.offset, c.message_id, c.outputs).where(
                c.consumer_group == self.group,
                tuple_(c.topic, c.partition, c.offset).in_(keys),
            )
        )
        return {(t, p, o): (m, _loads(out)) for t, p, o, m, out in rows}

    def _by_id(self, conn: Connection, message_ids: Sequence[str]) -> dict[str, list[Outgoing]]:
        """Messages among ``message_ids`` processed already (at another place): answers."""
        if not message_ids:
            return {}
        c = self.table.c
        rows = conn.execute(
            select(c.message_id, c.outputs)
            .where(c.consumer_group == self.group, c.message_id.in_(sorted(set(message_ids))))
            .order_by(c.processed_at.desc())  # the first time it was applied wins
        )
        return {m: _loads(out) for m, out in rows}

    def _forget_places(self, conn: Connection, items: Sequence[Incoming]) -> None:
        c = self.table.c
        for item in items:
            d = item.delivery
            conn.execute(
                self.table.delete().where(
                    c.consumer_group == self.group,
                    c.topic == d.topic,
                    c.partition == d.partition,
                    c.offset == d.offset,
                )
            )


def _dump(o: Outgoing) -> dict[str, Any]:
    return {
        "topic": o.topic,
        "key": o.key,
        "record": o.message.RECORD,
        "value": o.message.to_value(),
    }


def _loads(outputs: bytes) -> list[Outgoing]:
    return [
        Outgoing(x["topic"], x["key"], RECORDS[x["record"]].from_value(x["value"]))
        for x in json.loads(outputs)
    ]
