"""The night as a control room sees it: every message of the topics, folded into one view.

``NightView.add`` takes each decoded record in topic order; ``snapshot`` answers what the
dashboard shows. Nothing here reads a topic or a clock on its own (the caller passes both),
so the same fold runs over a live consumer, a replayed history and a test's list.

What the topics cannot say, the view does not guess: a raw arrival names only a path, so a
file is counted under its exposure once an outcome names the exposure, or once another file
of the same folder has (``landing/<day>/<seq>/`` holds one exposure). Until then it is
"in flight", under its folder.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from ..core.timespan import ns_to_iso
from ..messages import (
    BlessingRequest,
    CalibrationOutcome,
    DeadLetter,
    IngestOutcome,
    RawArrival,
    Record,
    RegistryEvent,
)

# Upper bounds (seconds) of the landed→registered latency histogram: sub-second at the summit,
# minutes when a service was down.
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LATEST = 20  # rows kept of each "latest" list
NS = 1_000_000_000

Key = tuple[str, int]  # (instrument, exposure)


@dataclass
class FileState:
    path: str
    status: str  # "landed" (no outcome yet), "ingested", "already-present" or "failed"
    landed_ns: int | None = None
    reason: str | None = None
    message: str = ""
    detectors: tuple[int, ...] = ()
    dataset_ids: tuple[str, ...] = ()
    latency_s: float | None = None


@dataclass
class ExposureState:
    instrument: str
    exposure: int
    expected: int  # detectors of the instrument (0: not an instrument obsbus knows)
    first_ns: int
    last_ns: int
    files: dict[str, FileState] = field(default_factory=dict)

    def counts(self) -> Counter[str]:
        return Counter(f.status for f in self.files.values())

    def detectors_done(self) -> int:
        done = ("ingested", "already-present")
        return len({d for f in self.files.values() if f.status in done for d in f.detectors})


@dataclass
class Histogram:
    """Cumulative counts per bucket bound, their sum and count (Prometheus' histogram)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total_s: float = 0.0

    def observe(self, value_s: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value_s)] += 1
        self.total_s += value_s

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it), the last bound infinite."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class NightView:
    """The fold. ``expected_detectors(instrument)`` says how many detectors an exposure of
    that instrument has; ``exposure_step(instrument)`` how its exposure ids advance (a gap
    between two seen exposures of the same night is flagged)."""

    def __init__(
        self,
        expected_detectors: Callable[[str], int],
        exposure_step: Callable[[str], int] = lambda _: 1,
        max_exposures: int = 5000,
    ) -> None:
        self._expected = expected_detectors
        self._step = exposure_step
        self._max_exposures = max_exposures
        self.exposures: dict[Key, ExposureState] = {}
        self.in_flight: dict[str, RawArrival] = {}  # path -> arrival without an outcome yet
        self._in_flight_by_folder: dict[str, set[str]] = {}  # the same paths, by folder
        self._folder_exposure: dict[str, Key] = {}
        self._unplaced: dict[str, dict[str, FileState]] = {}  # folder -> outcomes, no exposure
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (status, reason or "") totals
        self.registry_events: Counter[str] = Counter()
        self.latency = Histogram()
        self._latency_by_minute: dict[int, list[float]] = {}
        self.failures: deque[dict[str, Any]] = deque(maxlen=LATEST)
        self.dead_letters: Counter[str] = Counter()  # by origin topic
        self.latest_dead_letters: deque[dict[str, Any]] = deque(maxlen=LATEST)
        self.blessings: dict[str, dict[str, Any]] = {}
        self.swaps: deque[dict[str, Any]] = deque(maxlen=LATEST)
        self.messages = 0

    # --- the fold ------------------------------------------------------------------------------

    def add(self, record: Record) -> None:
        """Fold one message in (any record; those the view has no use for are counted)."""
        self.messages += 1
        if isinstance(record, IngestOutcome):
            self._outcome(record)
        elif isinstance(record, RawArrival):
            self._arrival(record)
        elif isinstance(record, RegistryEvent):
            self._registry_event(record)
        elif isinstance(record, BlessingRequest):
            self._blessing_request(record)
        elif isinstance(record, CalibrationOutcome):
            self._blessing_outcome(record)
        elif isinstance(record, DeadLetter):
            self._dead_letter(record)

    def add_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.add(record)

    def _arrival(self, a: RawArrival) -> None:
        key = self._folder_exposure.get(_folder(a.path))
        exposure = self.exposures.get(key) if key else None
        if exposure is None:
            self.in_flight[a.path] = a
            self._in_flight_by_folder.setdefault(_folder(a.path), set()).add(a.path)
            return
        known = exposure.files.get(a.path)
        if known is None or known.status == "landed":
            exposure.files[a.path] = FileState(a.path, "landed", a.detected_at_ns)
        exposure.last_ns = max(exposure.last_ns, a.detected_at_ns)

    def _outcome(self, o: IngestOutcome) -> None:
        self.outcomes[(o.status, o.reason or "")] += 1
        arrival = self.in_flight.pop(o.file, None)
        if arrival is not None:
            self._in_flight_by_folder.get(_folder(o.file), set()).discard(o.file)
        landed_ns = o.detected_at_ns or (arrival.detected_at_ns if arrival else None)
        latency_s = None
        if landed_ns is not None and o.finished_at_ns >= landed_ns:
            latency_s = (o.finished_at_ns - landed_ns) / NS
            self.latency.observe(latency_s)
            self._latency_by_minute.setdefault(o.finished_at_ns // (60 * NS), []).append(latency_s)
        if o.status == "failed":
            self.failures.appendleft(
                {
                    "file": o.file,
                    "reason": o.reason,
                    "message": o.message,
                    "at": ns_to_iso(o.finished_at_ns),
                }
            )
        state = FileState(
            o.file, o.status, landed_ns, o.reason, o.message, o.detectors, o.dataset_ids, latency_s
        )
        key = self._key_of(o)
        if key is None:  # placed once its folder's exposure is known (outcomes of other
            self._unplaced.setdefault(_folder(o.file), {})[o.file] = state  # keys may lag)
            return
        exposure = self.exposures.get(key)
        if exposure is None:
            exposure = self._new_exposure(key, landed_ns or o.finished_at_ns)
        exposure.files[o.file] = state
        exposure.last_ns = max(exposure.last_ns, o.finished_at_ns)
        folder = _folder(o.file)
        if self._folder_exposure.setdefault(folder, key) == key:
            self._claim_in_flight(folder, exposure)

    def _key_of(self, o: IngestOutcome) -> Key | None:
        if o.instrument is not None and o.exposure is not None:
            return (o.instrument, o.exposure)
        return self._folder_exposure.get(_folder(o.file))  # unreadable: its folder's exposure

    def _new_exposure(self, key: Key, first_ns: int) -> ExposureState:
        if len(self.exposures) >= self._max_exposures:  # the oldest goes first
            oldest = min(self.exposures.values(), key=lambda e: e.last_ns)
            del self.exposures[(oldest.instrument, oldest.exposure)]
        exposure = ExposureState(key[0], key[1], self._expected(key[0]), first_ns, first_ns)
        self.exposures[key] = exposure
        return exposure

    def _claim_in_flight(self, folder: str, exposure: ExposureState) -> None:
        for path in self._in_flight_by_folder.pop(folder, set()):
            arrival = self.in_flight.pop(path)
            exposure.files.setdefault(path, FileState(path, "landed", arrival.detected_at_ns))
        for path, state in self._unplaced.pop(folder, {}).items():
            exposure.files.setdefault(path, state)

    def _registry_event(self, e: RegistryEvent) -> None:
        self.registry_events[e.kind] += 1
        if e.kind == "detector-swapped":
            self.swaps.appendleft(
                {
                    "instrument": e.instrument,
                    "detector": e.detector,
                    "old_serial": e.old_serial,
                    "new_serial": e.new_serial,
                    "exposure": e.exposure,
                    "since": ns_to_iso(e.since_ns),
                    "at": ns_to_iso(e.at_ns),
                }
            )

    def _blessing_request(self, r: BlessingRequest) -> None:
        entry = self.blessings.setdefault(r.request_id, {"status": "pending"})
        entry.update(
            request_id=r.request_id,
            collection=r.collection,
            dataset_type=r.dataset_type,
            run=r.run,
            requested_by=r.requested_by,
            why=r.reason,
            requested_at=ns_to_iso(r.requested_at_ns),
        )

    def _blessing_outcome(self, o: CalibrationOutcome) -> None:
        entry = self.blessings.setdefault(o.request_id, {"request_id": o.request_id})
        entry.update(
            collection=o.collection,
            status=o.status,
            reason=o.reason,
            message=o.message,
            certified=o.certified,
            decided_at=ns_to_iso(o.at_ns),
        )

    def _dead_letter(self, d: DeadLetter) -> None:
        self.dead_letters[d.topic] += 1
        self.latest_dead_letters.appendleft(
            {
                "topic": d.topic,
                "partition": d.partition,
                "offset": d.offset,
                "service": d.service,
                "error_code": d.error_code,
                "error": d.error,
                "at": ns_to_iso(d.failed_at_ns),
            }
        )

    # --- what it answers -----------------------------------------------------------------------

    def latency_series(self, since_ns: int) -> list[dict[str, Any]]:
        """p50/p99 of landed→registered per minute since ``since_ns``."""
        first = since_ns // (60 * NS)
        for minute in [m for m in self._latency_by_minute if m < first]:
            del self._latency_by_minute[minute]  # outside every later window too
        return [
            {
                "minute": ns_to_iso(minute * 60 * NS),
                "n": len(values),
                "p50_s": quantile(values, 0.5),
                "p99_s": quantile(values, 0.99),
            }
            for minute, values in sorted(self._latency_by_minute.items())
        ]

    def unplaced_failures(self) -> list[FileState]:
        """Failed files under no exposure (unreadable, in a folder no exposure has)."""
        return [f for files in self._unplaced.values() for f in files.values()]

    def exposure(self, instrument: str, exposure: int) -> ExposureState | None:
        return self.exposures.get((instrument, exposure))

    def gaps(self, since_ns: int) -> list[dict[str, Any]]:
        """Exposure ids missing between two exposures seen (of one instrument, a few steps
        apart: a larger jump is a new night or a new sequence, not a gap)."""
        out = []
        by_instrument: dict[str, list[int]] = {}
        for e in self.exposures.values():
            if e.last_ns >= since_ns:
                by_instrument.setdefault(e.instrument, []).append(e.exposure)
        for instrument, ids in sorted(by_instrument.items()):
            step = self._step(instrument)
            ids.sort()
            for a, b in itertools.pairwise(ids):
                if step < b - a <= 10 * step:
                    missing = list(range(a + step, b, step))
                    out.append({"instrument": instrument, "after": a, "missing": missing})
        return out


def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


def _folder(path: str) -> str:
    return str(PurePath(path).parent)
