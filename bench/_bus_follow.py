"""bus_bench: following the outcomes live, reading arrivals and commands back after the run."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from _bus_common import tai_minus_unix_ns

from services.bus.config import KafkaSettings
from services.bus.readback import read_to_end
from services.bus.topics import (
    DEAD_LETTERS,
    INGEST_OUTCOMES,
    RAW_ARRIVALS,
    REGISTRY_COMMANDS,
)
from services.bus.transport import Delivery
from services.core.timespan import now_ns
from services.messages import IngestOutcome, RawArrival, Record, RegistryCommand
from services.registry.commands import IngestRaw

# --- following the topics -------------------------------------------------------------------

M = TypeVar("M", bound=Record)


@dataclass
class Seen(Generic[M]):
    """One message the tracker consumed: its decoded record, producer timestamp, receipt."""

    message: M
    sent_ns: int  # the Kafka record timestamp (producer send time), as TAI ns
    received_ns: int  # when this process decoded it live (TAI ns; 0 if read back later)


@dataclass
class Tracker:
    """Follows outcomes and dead letters of the namespace in a thread; ``read_back`` reads
    the arrivals and commands afterwards (their times are the records' Kafka timestamps), so
    the follower's own CPU, which competes with the services for the cores, stays small.
    """

    settings: KafkaSettings
    arrivals: dict[str, Seen[RawArrival]] = field(default_factory=dict)  # by file path
    commands: dict[str, Seen[RegistryCommand]] = field(default_factory=dict)
    outcomes: dict[str, Seen[IngestOutcome]] = field(default_factory=dict)
    dead_letters: int = 0
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tracker", daemon=True)
        self._thread.start()
        self._ready.wait(60)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def outcome_count(self, paths: Iterable[str]) -> int:
        with self._lock:
            return sum(p in self.outcomes for p in paths)

    def _run(self) -> None:
        tai_minus_unix = tai_minus_unix_ns()
        topics = [INGEST_OUTCOMES.name, DEAD_LETTERS.name]
        try:
            bus = self.settings.bus("obsbus-bus-bench")
            consumer = bus.consumer(f"bus-bench-{uuid.uuid4().hex[:8]}", topics)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            self._ready.set()
            return
        try:
            first = consumer.poll(0.5, 2000)  # joins the group; reads from offset 0 anyway
            self._ready.set()
            batch = first
            while True:
                for d in batch:
                    self._take(d, d.timestamp_ms * 1_000_000 + tai_minus_unix)
                if self._stop.is_set():
                    break
                batch = consumer.poll(0.2, 2000)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
        finally:
            consumer.close()
            bus.close()

    def _take(self, d: Delivery, sent_ns: int) -> None:
        if d.topic == DEAD_LETTERS.name:
            self.dead_letters += 1
            return
        outcome = IngestOutcome.decode(d.value)
        with self._lock:
            self.outcomes.setdefault(outcome.file, Seen(outcome, sent_ns, now_ns()))

    def read_back(self) -> None:
        """Read the arrivals and commands published so far (from the start of the topics)."""
        tai_minus_unix = tai_minus_unix_ns()
        bus = self.settings.bus("obsbus-bus-bench-read-back")
        topics = [RAW_ARRIVALS.name, REGISTRY_COMMANDS.name]
        group = f"bus-bench-read-back-{uuid.uuid4().hex[:8]}"
        try:
            for d in read_to_end(bus, topics, group):
                self._take_back(d, d.timestamp_ms * 1_000_000 + tai_minus_unix)
        finally:
            bus.close()

    def _take_back(self, d: Delivery, sent_ns: int) -> None:
        """An arrival or a raw's command read back (received_ns 0: not received live)."""
        if d.topic == RAW_ARRIVALS.name:
            arrival = RawArrival.decode(d.value)
            with self._lock:
                self.arrivals.setdefault(arrival.path, Seen(arrival, sent_ns, 0))
            return
        command = RegistryCommand.decode(d.value)
        if isinstance(command.body, IngestRaw):  # the only command about one file
            with self._lock:
                self.commands.setdefault(command.body.file, Seen(command, sent_ns, 0))
