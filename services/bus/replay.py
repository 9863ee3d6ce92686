"""Rebuilding a registry from the registry-command topic.

Commands the live service dead-lettered are skipped (they never took effect). Within a
partition, commands are applied in their order there, as the live service did; every
command but raw ingest shares one key (``topics.WRITES_KEY``), so certifications, chains and
change sets replay in the order they were sent. Across partitions (raw ingest is keyed by
exposure) the command issued first goes first: a command that depended on another (e.g. a
certification of flats made from raws) was issued after that one was answered.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from ..core.errors import BusError, ObsbusError
from ..registry.registry import Registry
from ..registry.service import RegistryHandler
from . import codec
from .runner import Incoming
from .topics import DEAD_LETTERS, REGISTRY_COMMANDS
from .transport import Bus

BATCH = 500
STALL_S = 60.0  # no message at all for this long before the end: give up


@dataclass
class ReplayCounts:
    applied: int = 0
    refused: int = 0  # refused again, as they may have been live (see `obsbus events`)
    skipped: int = 0  # dead-lettered when they were live (or undecodable): not applied


def replay(bus: Bus, registry: Registry) -> ReplayCounts:
    """Apply every command on the topic now (up to its current end), in issue order."""
    group = f"obsbus-replay-{uuid.uuid4().hex[:8]}"
    handler = RegistryHandler(registry, group)
    counts = ReplayCounts()
    batch: list[Incoming] = []
    for item in _in_issue_order(bus, group, counts):
        batch.append(item)
        if len(batch) >= BATCH:
            _apply(handler, batch, counts)
            batch = []
    _apply(handler, batch, counts)
    return counts


def _apply(handler: RegistryHandler, batch: list[Incoming], counts: ReplayCounts) -> None:
    answers = handler(batch)  # published live already; a replay only rebuilds
    counts.applied += len(batch)
    counts.refused += sum(a.value.get("kind") == "command-rejected" for a in answers)


def _in_issue_order(bus: Bus, group: str, counts: ReplayCounts) -> Iterator[Incoming]:
    """A k-way merge of the partitions: each is in issue order already, so the next command
    is the earliest head, once every partition not yet read to its end has one."""
    dead = _dead_lettered(bus, group)
    ends = {p: end for p, end in bus.end_offsets(REGISTRY_COMMANDS.name).items() if end > 0}
    heads: dict[int, deque[tuple[int, Incoming]]] = {p: deque() for p in ends}
    finished: set[int] = set()
    consumer = bus.consumer(group, [REGISTRY_COMMANDS.name])
    try:
        while True:
            quiet_since = time.monotonic()
            while any(not heads[p] and p not in finished for p in ends):
                deliveries = consumer.poll(1.0, BATCH)
                if deliveries:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > STALL_S:
                    raise BusError(
                        f"replay stalled: nothing more from {REGISTRY_COMMANDS.name} for "
                        f"{STALL_S:g} s before its end; is the broker up?"
                    )
                for d in deliveries:
                    if d.offset + 1 >= ends.get(d.partition, 0):
                        finished.add(d.partition)
                    if d.offset >= ends.get(d.partition, 0):
                        continue  # arrived after the replay started: not part of it
                    if (d.partition, d.offset) in dead:
                        counts.skipped += 1  # the live service never applied it
                        continue
                    try:
                        message = codec.decode(d.value)
                    except ObsbusError:
                        counts.skipped += 1
                        continue
                    issued = int(message.value["issued_at_ns"])
                    heads[d.partition].append(
                        (issued, Incoming(d, message.record_name, message.value))
                    )
            ready = [p for p in ends if heads[p]]
            if not ready:
                return
            first = min(ready, key=lambda p: (heads[p][0][0], p, heads[p][0][1].delivery.offset))
            yield heads[first].popleft()[1]
    finally:
        consumer.close()


def _dead_lettered(bus: Bus, group: str) -> set[tuple[int, int]]:
    """(partition, offset) of the registry commands the live service dead-lettered (a poison
    command, or one of a type it could not read): a replay must not apply them either."""
    ends = {p: end for p, end in bus.end_offsets(DEAD_LETTERS.name).items() if end > 0}
    dead: set[tuple[int, int]] = set()
    if not ends:
        return dead
    reached: dict[int, int] = {}
    consumer = bus.consumer(f"{group}-dead-letters", [DEAD_LETTERS.name])
    quiet_since = time.monotonic()
    try:
        while any(reached.get(p, 0) < end for p, end in ends.items()):
            deliveries = consumer.poll(1.0, BATCH)
            if deliveries:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > STALL_S:
                raise BusError(f"replay stalled reading {DEAD_LETTERS.name}; is the broker up?")
            for d in deliveries:
                reached[d.partition] = d.offset + 1
                try:
                    letter = codec.decode(d.value).value
                except ObsbusError:
                    continue
                if letter["topic"] == REGISTRY_COMMANDS.name:
                    dead.add((int(letter["partition"]), int(letter["offset"])))
    finally:
        consumer.close()
    return dead
