"""The dashboard service: reads the topics into the night's view, and the services' states.

It catches up on the topics' history from the first offset (a fresh consumer group each
start, never committed: the dashboard keeps no position, it rebuilds its view), then
follows. The registry command topic is not read: its effects are on the event topics.
Two threads feed it: one reads the bus, one re-reads the status files and asks the broker
every ``status_every_s`` (that can wait on an unreachable broker; a page request never does).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from ..bus.declaration import Declaration
from ..bus.runner import write_status_file
from ..bus.topics import (
    BLESSING_REQUESTS,
    CALIB_OUTCOMES,
    DEAD_LETTERS,
    INGEST_OUTCOMES,
    RAW_ARRIVALS,
    REGISTRY_EVENTS,
)
from ..bus.transport import Bus, Consumer
from ..core.errors import BusError, ObsbusError
from ..core.timespan import now_ns
from ..instruments import load_instrument
from ..messages import decode
from ..ops.metrics import MetricsInput
from ..ops.night import NightView
from ..ops.snapshot import exposure_detail, snapshot
from ..ops.status import status_rows

log = structlog.get_logger(__name__)

SERVICE = Declaration(
    "dashboard",
    reads=(
        RAW_ARRIVALS,
        INGEST_OUTCOMES,
        REGISTRY_EVENTS,
        BLESSING_REQUESTS,
        CALIB_OUTCOMES,
        DEAD_LETTERS,
    ),
    writes=(),
    max_records=5000,
    doc="every event topic in (from its first offset, then live); the page, /metrics, the API",
)


def expected_detectors(instrument: str) -> int:
    """An exposure's detector count (0 for an instrument obsbus does not know)."""
    try:
        return len(load_instrument(instrument).detectors)
    except ObsbusError:
        return 0


def exposure_step(instrument: str) -> int:
    try:
        return load_instrument(instrument).exposure_step
    except ObsbusError:
        return 1


class Dashboard:
    def __init__(
        self,
        bus: Bus,
        repo: Path | None,
        window_s: float = 12 * 3600,
        quiet_s: float = 120.0,
        name: str = "dashboard",
        status_file: Path | None = None,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.bus, self.repo, self.name = bus, repo, name
        self.window_s, self.quiet_s = window_s, quiet_s
        self.status_file = status_file
        self.clock = clock
        self.view = NightView(expected_detectors, exposure_step)
        self.lock = threading.Lock()
        self.version = 0  # bumped on every change the page could show
        self.services: list[dict[str, Any]] = []
        self.undecodable = 0
        self.lag: int | None = None
        self.last_read_ns = 0
        self.caught_up_after_s: float | None = None
        self.url: str | None = None
        self._started = time.monotonic()

    # --- feeding -------------------------------------------------------------------------------

    def read(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Catch up, then follow, until ``stop``; a broker outage is waited out."""
        consumer: Consumer | None = None
        while not stop.is_set():
            try:
                if consumer is None:
                    group = f"obsbus-dashboard-{uuid.uuid4().hex[:12]}"
                    consumer = self.bus.consumer(group, [t.name for t in SERVICE.reads])
                self.step(consumer, poll_s)
            except BusError as err:
                log.warning("the bus failed; reading again", error=str(err))
                if consumer is not None:
                    consumer.close()
                consumer = None
                with self.lock:  # from the first offset again: the view starts over
                    self.view = NightView(expected_detectors, exposure_step)
                stop.wait(2.0)
        if consumer is not None:
            consumer.close()

    def step(self, consumer: Consumer, poll_s: float = 0.0) -> int:
        deliveries = consumer.poll(poll_s, SERVICE.max_records)
        decoded = []
        for d in deliveries:
            try:
                decoded.append(decode(d.value))
            except ObsbusError:
                self.undecodable += 1
        lag = consumer.lag()
        with self.lock:
            self.view.add_all(decoded)
            self.lag = lag
            if deliveries:
                self.version += 1
                self.last_read_ns = now_ns()
            if lag == 0 and self.caught_up_after_s is None and consumer.assignment():
                self.caught_up_after_s = time.monotonic() - self._started
                log.info("caught up", messages=self.view.messages, seconds=self.caught_up_after_s)
                self.version += 1
        return len(deliveries)

    def watch_services(self, stop: threading.Event, every_s: float = 2.0) -> None:
        while not stop.is_set():
            self.refresh_services()
            stop.wait(every_s)

    def refresh_services(self) -> None:
        rows = status_rows(self.repo) if self.repo is not None else []
        with self.lock:
            if rows != self.services:
                self.services = rows
                self.version += 1
        self.write_status()

    def write_status(self) -> None:
        if self.status_file is None:
            return
        with self.lock:
            status = {
                "service": self.name,
                "pid": os.getpid(),
                "updated_at_ns": now_ns(),
                "consumed": self.view.messages,
                "failed": self.undecodable,
                "lag": self.lag,
                "last_message_ns": self.last_read_ns,
                "url": self.url,
            }
        write_status_file(self.status_file, status)

    # --- answering -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            out = snapshot(self.view, self.clock(), self.window_s, self.quiet_s)
            out["services"] = list(self.services)
            out["reader"] = {
                "lag": self.lag,
                "caught_up": self.caught_up_after_s is not None,
                "caught_up_after_s": self.caught_up_after_s,
                "undecodable": self.undecodable,
            }
            out["version"] = self.version
        return out

    def exposure(self, instrument: str, exposure: int) -> dict[str, Any] | None:
        with self.lock:
            state = self.view.exposure(instrument, exposure)
            return None if state is None else exposure_detail(state, self.clock(), self.quiet_s)

    def metrics_input(self) -> MetricsInput:
        with self.lock:
            return MetricsInput.of(self.view, self.services)
