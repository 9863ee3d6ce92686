"""Reading topics from the beginning up to the ends they have now (recoveries, replays)."""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence

from ..core.errors import BusError
from .transport import Bus, Delivery, TopicPartition

STALL_S = 60.0  # nothing at all for this long before the ends: give up


def end_offsets(bus: Bus, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """The end offset of every non-empty partition of ``topics``, now."""
    return {(t, p): end for t in topics for p, end in bus.end_offsets(t).items() if end > 0}


def read_to_end(
    bus: Bus,
    topics: Sequence[str],
    group: str,
    batch: int = 5000,
    stall_s: float = STALL_S,
    ends: dict[TopicPartition, int] | None = None,
) -> Generator[Delivery, None, None]:
    """Every message of ``topics`` below ``ends`` (default: the end offsets they have now).

    Ends are offsets, not message counts: a topic may not start at offset 0. Messages
    published meanwhile are not part of it. Raises BusError when the broker stops answering.
    """
    ends = end_offsets(bus, topics) if ends is None else ends
    if not ends:
        return
    reached: dict[TopicPartition, int] = {}
    consumer = bus.consumer(group, list(topics))
    quiet_since = time.monotonic()
    try:
        while any(reached.get(tp, 0) < end for tp, end in ends.items()):
            deliveries = consumer.poll(1.0, batch)
            if deliveries:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > stall_s:
                raise BusError(
                    f"reading {', '.join(topics)} stalled: nothing for {stall_s:g} s before "
                    "their ends; is the broker up?"
                )
            for d in deliveries:
                tp = (d.topic, d.partition)
                reached[tp] = d.offset + 1
                if d.offset < ends.get(tp, 0):
                    yield d
    finally:
        consumer.close()
