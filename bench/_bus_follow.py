"""bus_bench: following the outcomes live, reading arrivals and commands back after the run."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from _bus_common import tai_minus_unix_ns

from services.bus import codec
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

# --- following the topics -------------------------------------------------------------------


@dataclass
class Seen:
    """One message the tracker consumed: its decoded value, producer timestamp, receipt."""

    value: dict[str, Any]
    sent_ns: int  # the Kafka record timestamp (producer send time), as TAI ns
    received_ns: int  # when this process decoded it live (TAI ns; 0 if read back later)


@dataclass
class Tracker:
    """Follows outcomes and dead letters of the namespace in a thread; ``read_back`` reads
    the arrivals and commands afterwards (their times are the records' Kafka timestamps), so
    the follower's own CPU, which competes with the services for the cores, stays small.
    """

    settings: KafkaSettings
    arrivals: dict[str, Seen] = field(default_factory=dict)  # by file path
    commands: dict[str, Seen] = field(default_factory=dict)
    outcomes: dict[str, Seen] = field(default_factory=dict)
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
        value = codec.decode(d.value).value
        with self._lock:
            self.outcomes.setdefault(value["file"], Seen(value, sent_ns, now_ns()))

    def read_back(self) -> None:
        """Read the arrivals and commands published so far (from the start of the topics)."""
        tai_minus_unix = tai_minus_unix_ns()
        bus = self.settings.bus("obsbus-bus-bench-read-back")
        topics = [RAW_ARRIVALS.name, REGISTRY_COMMANDS.name]
        group = f"bus-bench-read-back-{uuid.uuid4().hex[:8]}"
        try:
            for d in read_to_end(bus, topics, group):
                seen = Seen(
                    codec.decode(d.value).value,
                    d.timestamp_ms * 1_000_000 + tai_minus_unix,
                    0,  # not received live
                )
                self._take_back(d.topic, seen)
        finally:
            bus.close()

    def _take_back(self, topic: str, seen: Seen) -> None:
        value = seen.value
        with self._lock:
            if topic == RAW_ARRIVALS.name:
                self.arrivals.setdefault(value["path"], seen)
            else:
                body = value["body"][1] if isinstance(value["body"], tuple) else value["body"]
                if "file" in body:
                    self.commands.setdefault(body["file"], seen)
