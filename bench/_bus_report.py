"""bus_bench: per-file times, latencies and the printed report."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _bus_common import NS, log, tai_minus_unix_ns
from _bus_follow import Tracker

from services.bus.topics import (
    RAW_ARRIVALS,
)

TARGET_P99_S = 0.5  # the targets (reported, not asserted)
TARGET_FILES_PER_S = 1500.0


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> str:
    if not values:
        return "no data"
    return (
        f"p50 {percentile(values, 50):.3f} s  p99 {percentile(values, 99):.3f} s  "
        f"max {max(values):.3f} s"
    )


# --- partitions -----------------------------------------------------------------------------


def arrivals_partition(folder: str) -> int:
    """The partition kafka-python's default partitioner gives a RawArrival keyed by folder."""
    from kafka.partitioner.default import murmur2

    return int(murmur2(folder.encode()) & 0x7FFFFFFF) % RAW_ARRIVALS.partitions


@dataclass
class Burst:
    index: int
    seq: int
    write_start_ns: int
    landed_ns: int  # right after the last rename: every file of the burst is there
    paths: list[str]


@dataclass
class FileTimes:
    burst: int
    landed: int
    mtime: int | None
    detected: int | None
    ingested: int | None  # the RegistryCommand's issued_at_ns (the ingest handler built it)
    command_sent: int | None
    worker: str | None
    decided: int | None  # IngestOutcome.finished_at_ns (inside the registry's transaction)
    outcome_sent: int | None  # after the registry's commit and flush
    received: int | None
    status: str | None


def file_times(bursts: Sequence[Burst], tracker: Tracker) -> list[FileTimes]:
    tai_minus_unix = tai_minus_unix_ns()
    out = []
    with tracker._lock:
        for b in bursts:
            for path in b.paths:
                arrival = tracker.arrivals.get(path)
                command = tracker.commands.get(path)
                outcome = tracker.outcomes.get(path)
                out.append(
                    FileTimes(
                        burst=b.index,
                        landed=b.landed_ns,
                        mtime=None
                        if arrival is None
                        else arrival.message.mtime_ns + tai_minus_unix,
                        detected=None if outcome is None else outcome.message.detected_at_ns,
                        ingested=None if command is None else command.message.issued_at_ns,
                        command_sent=None if command is None else command.sent_ns,
                        worker=None if command is None else command.message.issued_by,
                        decided=None if outcome is None else outcome.message.finished_at_ns,
                        outcome_sent=None if outcome is None else outcome.sent_ns,
                        received=None if outcome is None else outcome.received_ns,
                        status=None if outcome is None else outcome.message.status,
                    )
                )
    return out


def seconds(
    files: Sequence[FileTimes],
    begin: Callable[[FileTimes], int | None],
    end: Callable[[FileTimes], int | None],
) -> list[float]:
    out = []
    for f in files:
        b, e = begin(f), end(f)
        if b is not None and e is not None:
            out.append((e - b) / NS)
    return out


def _landed(f: FileTimes) -> int | None:
    return f.landed


def _decided(f: FileTimes) -> int | None:
    return f.decided


STAGES: tuple[
    tuple[str, Callable[[FileTimes], int | None], Callable[[FileTimes], int | None]], ...
] = (
    ("landing->detected (watcher)", lambda f: f.landed, lambda f: f.detected),
    ("file written (mtime)->detected", lambda f: f.mtime, lambda f: f.detected),
    (
        "detected->ingested (arrivals queue + ingest handler)",
        lambda f: f.detected,
        lambda f: f.ingested,
    ),
    (
        "ingested->command sent (rest of the ingest batch)",
        lambda f: f.ingested,
        lambda f: f.command_sent,
    ),
    (
        "command sent->outcome decided (registry queue + apply)",
        lambda f: f.command_sent,
        lambda f: f.decided,
    ),
    (
        "outcome decided->published (registry commit + flush)",
        lambda f: f.decided,
        lambda f: f.outcome_sent,
    ),
    ("published->seen by a consumer", lambda f: f.outcome_sent, lambda f: f.received),
)


def report(
    bursts: Sequence[Burst], tracker: Tracker, owner: dict[int, str], workers: list[str]
) -> None:
    files = file_times(bursts, tracker)
    finished = [f for f in files if f.decided is not None]
    statuses = Counter(f.status for f in finished)
    log(f"files landed: {len(files)} in {len(bursts)} burst(s)")
    log("outcomes: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items(), key=str)))
    if not finished:
        return
    first_landing = min(b.landed_ns for b in bursts)
    first_write = min(b.write_start_ns for b in bursts)
    last = max(f.decided for f in finished if f.decided is not None)
    last_published = max(f.outcome_sent for f in finished if f.outcome_sent is not None)
    log(
        f"sustained throughput (first landing -> last outcome): "
        f"{len(finished) / max((last - first_landing) / NS, 1e-9):.1f} files/s "
        f"(target {TARGET_FILES_PER_S:,.0f})"
    )
    log(f"run length (first landing -> last outcome): {(last - first_landing) / NS:.2f} s")
    log(
        f"sustained throughput (start of the first write -> last outcome published): "
        f"{len(finished) / max((last_published - first_write) / NS, 1e-9):.1f} files/s"
    )
    for b in bursts:
        mine = [f for f in files if f.burst == b.index]
        partition = arrivals_partition(str(Path(b.paths[0]).parent))
        used = Counter(f.worker for f in mine if f.worker is not None)
        log(
            f"burst {b.index}: seq {b.seq}, {len(b.paths)} files, landed in "
            f"{(b.landed_ns - b.write_start_ns) / NS:.2f} s, arrivals partition {partition} "
            f"(owner {owner.get(partition, '?')}); handled by "
            + ", ".join(f"{w} ({n})" for w, n in sorted(used.items()))
        )
        latency = seconds(mine, _landed, _decided)
        if latency:
            log(f"burst {b.index} latency p50: {percentile(latency, 50):.3f} s")
            log(
                f"burst {b.index} latency p99: {percentile(latency, 99):.3f} s "
                f"(target {TARGET_P99_S} s)"
            )
            log(f"burst {b.index} latency max: {max(latency):.3f} s")
        log(
            f"burst {b.index} latency detected->outcome (watcher's detected_at_ns): "
            + spread(seconds(mine, lambda f: f.detected, lambda f: f.decided))
        )
        log(
            f"burst {b.index} latency landing->outcome published (after the registry commit): "
            + spread(seconds(mine, lambda f: f.landed, lambda f: f.outcome_sent))
        )
        for name, begin, end in STAGES:
            log(f"burst {b.index} split {name}: {spread(seconds(mine, begin, end))}")
    met = sum(
        1
        for b in bursts
        if (lat := seconds([f for f in files if f.burst == b.index], _landed, _decided))
        and percentile(lat, 99) < TARGET_P99_S
    )
    log(f"bursts meeting the p99 < {TARGET_P99_S} s target: {met} of {len(bursts)}")
    log("all bursts latency landing->outcome: " + spread(seconds(files, _landed, _decided)))
    per_worker = Counter(f.worker for f in files if f.worker is not None)
    log("files per ingest worker: " + ", ".join(f"{w} {per_worker.get(w, 0)}" for w in workers))
