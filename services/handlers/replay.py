"""Rebuilding a registry from the registry-command topic.

Commands the live service dead-lettered are skipped (they never took effect). Within a
partition, commands are applied in their order there, as the live service did; every
command but raw ingest shares one key (``topics.WRITES_KEY``), so certifications, chains and
change sets replay in the order they were sent. Across partitions (raw ingest is keyed by
exposure) the command issued first goes first: a command that depended on another (e.g. a
certification of flats made from raws) was issued after that one was answered.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from ..bus.readback import STALL_S, end_offsets, read_to_end
from ..bus.runner import Incoming
from ..bus.topics import DEAD_LETTERS, REGISTRY_COMMANDS
from ..bus.transport import Bus
from ..core.errors import ObsbusError
from ..messages import DeadLetter, RegistryCommand
from ..registry.registry import Registry
from .registry import RegistryHandler

BATCH = 500


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
    counts.refused += sum(getattr(a.message, "kind", None) == "command-rejected" for a in answers)


def _in_issue_order(bus: Bus, group: str, counts: ReplayCounts) -> Iterator[Incoming]:
    """A k-way merge of the partitions: each is in issue order already, so the next command
    is the earliest head, once every partition not yet read to its end has one."""
    dead = _dead_lettered(bus, group)
    topic = REGISTRY_COMMANDS.name
    ends = {p: end for (_, p), end in end_offsets(bus, [topic]).items()}
    heads: dict[int, deque[tuple[int, Incoming]]] = {p: deque() for p in ends}
    finished: set[int] = set()
    source = read_to_end(
        bus, [topic], group, BATCH, STALL_S, ends={(topic, p): e for p, e in ends.items()}
    )
    try:
        while True:
            while any(not heads[p] and p not in finished for p in ends):
                d = next(source, None)
                if d is None:  # every partition read to its end
                    finished.update(ends)
                    break
                if d.offset + 1 >= ends[d.partition]:
                    finished.add(d.partition)
                if (d.partition, d.offset) in dead:
                    counts.skipped += 1  # the live service never applied it
                    continue
                try:
                    command = RegistryCommand.decode(d.value)
                except ObsbusError:
                    counts.skipped += 1
                    continue
                heads[d.partition].append((command.issued_at_ns, Incoming(d, command)))
            ready = [p for p in ends if heads[p]]
            if not ready:
                return
            first = min(ready, key=lambda p: (heads[p][0][0], p, heads[p][0][1].delivery.offset))
            yield heads[first].popleft()[1]
    finally:
        source.close()


def _dead_lettered(bus: Bus, group: str) -> set[tuple[int, int]]:
    """(partition, offset) of the registry commands the live service dead-lettered (a poison
    command, or one of a type it could not read): a replay must not apply them either."""
    dead: set[tuple[int, int]] = set()
    for d in read_to_end(bus, [DEAD_LETTERS.name], f"{group}-dead-letters", BATCH, STALL_S):
        try:
            letter = DeadLetter.decode(d.value)
        except ObsbusError:
            continue
        if letter.topic == REGISTRY_COMMANDS.name:
            dead.add((letter.partition, letter.offset))
    return dead
