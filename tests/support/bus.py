"""Wiring the services together on a bus, for tests (in memory or on the real broker)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services import messages
from services.bus.runner import ServiceLoop
from services.bus.topics import (
    ALL_TOPICS,
    BLESSING_REQUESTS,
    RAW_ARRIVALS,
    REGISTRY_COMMANDS,
)
from services.bus.transport import Bus, MemoryBus
from services.butler import Butler
from services.handlers.calib import CalibHandler
from services.handlers.ingest import IngestHandler
from services.handlers.registry import RegistryHandler
from services.handlers.watcher import Watcher
from services.messages import RawArrival


def memory_bus() -> MemoryBus:
    return MemoryBus({t.name: t.partitions for t in ALL_TOPICS})


class Pipeline:
    """The four services over one bus, stepped by hand (no threads, no timing)."""

    def __init__(self, bus: Bus, butler: Butler, landing: Path, suffix: str = "") -> None:
        self.bus = bus
        self.watcher = Watcher(bus, [landing], f"watcher{suffix}", settle_s=0.0)
        self.ingest = ServiceLoop(
            "ingest", bus, f"ingest{suffix}", [RAW_ARRIVALS.name], IngestHandler(butler)
        )
        self.registry = ServiceLoop(
            "registry",
            bus,
            f"registry{suffix}",
            [REGISTRY_COMMANDS.name],
            RegistryHandler(butler.registry, f"registry{suffix}"),
        )
        self.calib = ServiceLoop(
            "calib", bus, f"calib{suffix}", [BLESSING_REQUESTS.name], CalibHandler(butler.registry)
        )
        self.loops = (self.ingest, self.registry, self.calib)

    def drain(self, rounds: int = 50, poll_s: float = 0.05) -> None:
        """Step every service until a round moves nothing."""
        quiet = 0
        for _ in range(rounds):
            moved = len(self.watcher.scan()) + sum(loop.step(poll_s) for loop in self.loops)
            quiet = 0 if moved else quiet + 1
            if quiet == 2:  # two rounds in a row with nothing to do
                return


def decoded(bus: MemoryBus, topic: str) -> list[dict[str, Any]]:
    """A topic's messages, each read as its typed record, as values (dicts)."""
    return [messages.decode(d.value).to_value() for d in bus.messages(topic)]


def raw_arrival(path: str | Path, size: int = 0, mtime_ns: int = 0) -> RawArrival:
    """A RawArrival of ``path`` as the watcher would publish it (size and mtime as given,
    or the file's own if it exists)."""
    path = Path(path)
    if path.exists() and not size:
        size, mtime_ns = path.stat().st_size, path.stat().st_mtime_ns
    return RawArrival(
        arrival_id=str(uuid.uuid4()),
        path=str(path),
        folder=str(path.parent),
        size=size,
        mtime_ns=mtime_ns,
        detected_at_ns=0,
        watcher="pytest",
    )


def statuses(values: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(v["status"] for v in values)
