"""bus_bench: the ingest and registry handlers in-process, timed and profiled."""

from __future__ import annotations

import cProfile
import itertools
import pstats
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _bus_common import PROJECT_ROOT, log

from services import messages
from services.bus.runner import Incoming, Outgoing
from services.bus.topics import (
    RAW_ARRIVALS,
    REGISTRY_COMMANDS,
)
from services.bus.transport import Delivery, MemoryBus
from services.butler import Butler
from services.core.timespan import now_ns, ns_to_iso
from services.handlers.ingest import IngestHandler
from services.handlers.registry import RegistryHandler
from services.handlers.watcher import Watcher
from services.instruments import load_instrument
from services.instruments.simcam import write_exposure
from services.messages import RawArrival, Record

# --- in-process profile of the handlers -----------------------------------------------------


def arrival_for(path: Path) -> RawArrival:
    st = path.stat()
    return RawArrival(
        arrival_id=str(uuid.uuid4()),
        path=str(path),
        folder=str(path.parent),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        detected_at_ns=now_ns(),
        watcher="bus-bench",
    )


_OFFSETS = itertools.count()


def incoming(topic: str, sent: Sequence[tuple[str | None, Record]]) -> list[Incoming]:
    """What the service loop would hand a handler: encoded, then decoded, like off the wire."""
    out = []
    first = next(_OFFSETS)  # distinct offsets: the registry skips (topic, partition, offset) seen
    for offset, (key, message) in enumerate(sent, start=first * 1_000_000):
        data = message.encode()
        raw_key = None if key is None else key.encode()
        decoded = messages.decode(data)
        delivery = Delivery(topic, 0, offset, raw_key, data, 0)
        out.append(Incoming(delivery, decoded))
    return out


@dataclass
class Profiled:
    name: str
    files: int
    wall_s: float  # without the profiler
    stats: pstats.Stats | None


def _run(
    name: str,
    handler: Callable[[list[Incoming]], list[Outgoing]],
    batch: list[Incoming],
    profiled: bool,
) -> tuple[list[Outgoing], Profiled]:
    """A handler on one batch, then the encoding of its outputs, as the service loop does."""
    profiler = cProfile.Profile() if profiled else None
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    out = handler(batch)
    for o in out:
        o.message.encode()
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - t0
    stats = None if profiler is None else pstats.Stats(profiler)
    return out, Profiled(name, len(batch), wall, stats)


def profile_handlers(tmp: Path, top: int, transfer: str) -> None:
    repo, landing = tmp / "profile-repo", tmp / "profile-landing"
    with Butler.create(repo, actor="bus_bench") as butler:
        load_instrument("SimCam").register(butler.registry)
    when = str(ns_to_iso(now_ns()))
    timed_files = write_exposure(landing, 1, when)  # timed without the profiler
    profiled_files = write_exposure(landing, 2, when)  # profiled
    results: list[Profiled] = []
    with Butler.open(repo, actor="bus_bench") as butler:
        ingest = IngestHandler(butler, transfer=transfer, name="bus-bench")
        registry = RegistryHandler(butler.registry, "bus-bench-registry")
        ingest(incoming(RAW_ARRIVALS.name, [(None, arrival_for(timed_files[0]))]))
        commands: dict[str, list[Outgoing]] = {}
        for label, files in (("timed", timed_files[1:]), ("profiled", profiled_files)):
            batch = incoming(RAW_ARRIVALS.name, [(str(p.parent), arrival_for(p)) for p in files])
            out, result = _run(
                "ingest handler (+ encode of its commands)", ingest, batch, label == "profiled"
            )
            commands[label] = out
            results.append(result)
        for label in ("timed", "profiled"):
            batch = incoming(REGISTRY_COMMANDS.name, [(o.key, o.message) for o in commands[label]])
            name = "registry handler (one batch, one transaction; + encode of its answers)"
            results.append(_run(name, registry, batch, label == "profiled")[1])
    for r in results:
        if r.stats is None:
            log(f"in-process {r.name}: {r.files} files in {r.wall_s:.2f} s")
            log(f"in-process {r.name}: {1000 * r.wall_s / r.files:.2f} ms/file")
            log(f"in-process {r.name}: {r.files / r.wall_s:.1f} files/s")
    for r in results:
        if r.stats is not None:
            log(
                f"profile of the {r.name}, {r.files} files "
                f"({1000 * r.wall_s / r.files:.2f} ms/file under cProfile):"
            )
            show_profile(r.stats, r.files, top)
    watcher_scan_cost(landing)


def short(filename: str) -> str:
    for marker in ("/site-packages/", str(PROJECT_ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


Row = tuple[tuple[str, int, str], tuple[int, int, float, float, Any]]


def show_profile(stats: pstats.Stats, files: int, top: int) -> None:
    """Top functions by own time, and by cumulative time (obsbus's, then libraries'), per file."""
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in table.values())
    log(f"  total {1000 * total / files:.2f} ms/file (own times summed)")

    def show(title: str, rows: list[Row], column: int) -> None:
        log(f"  {title} (ms/file, share, calls/file, function):")
        for (filename, line, func), numbers in rows[:top]:
            t, calls = numbers[column], numbers[1]
            log(
                f"    {1000 * t / files:7.3f}  {100 * t / total:5.1f}%  {calls / files:7.1f}  "
                f"{short(filename)}:{line}({func})"
            )

    ours = str(PROJECT_ROOT / "services")
    rows = list(table.items())
    show("by own time", sorted(rows, key=lambda kv: kv[1][2], reverse=True), 2)
    by_cumulative = sorted(rows, key=lambda kv: kv[1][3], reverse=True)
    show("obsbus functions by cumulative time", [r for r in by_cumulative if ours in r[0][0]], 3)
    libraries = [
        r
        for r in by_cumulative
        if "/site-packages/" in r[0][0] and r[0][2] not in ("<module>", "<listcomp>")
    ]
    show("library functions by cumulative time", libraries, 3)


def watcher_scan_cost(landing: Path) -> None:
    """In scan mode (``--watch-mode scan``; inotify mode reads no directory when idle): the
    cost of one look at the landing tree (every 0.05 s) per file already in it."""
    files = sum(1 for _ in landing.rglob("*.fits"))
    watcher = Watcher(MemoryBus({RAW_ARRIVALS.name: RAW_ARRIVALS.partitions}), [landing], "b", 0)
    watcher.scan()  # candidates
    watcher.scan()  # published
    rounds = 20
    t0 = time.perf_counter()
    for _ in range(rounds):
        watcher.scan()
    per_scan = (time.perf_counter() - t0) / rounds
    log(f"watcher (scan mode) look at {files} published files: {1000 * per_scan:.2f} ms")
    log(
        f"watcher (scan mode) cost per file already landed: {1e6 * per_scan / files:.1f} µs "
        f"(20 looks/s: {100 * 20 * per_scan / files * 1000:.1f}% of a core per 1,000 files)"
    )
