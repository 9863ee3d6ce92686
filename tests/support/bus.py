"""Wiring the services together on a bus, for tests (in memory or on the real broker)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services.bus import codec
from services.bus.runner import ServiceLoop
from services.bus.topics import (
    ALL_TOPICS,
    BLESSING_REQUESTS,
    RAW_ARRIVALS,
    REGISTRY_COMMANDS,
)
from services.bus.transport import Bus, MemoryBus
from services.butler import Butler
from services.calib.service import CalibHandler
from services.ingest.service import IngestHandler
from services.ingest.watcher import Watcher
from services.registry.service import RegistryHandler


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
    return [codec.decode(d.value).value for d in bus.messages(topic)]


def statuses(values: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(v["status"] for v in values)
