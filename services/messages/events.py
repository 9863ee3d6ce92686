"""The events the services publish: raw arrivals, ingest outcomes, registry events,
calibration outcomes and dead letters (schemas/<name>.v<N>.avsc has each one's docs)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..core.timespan import now_ns
from .record import Part, Record

IngestStatus = Literal["ingested", "already-present", "failed"]


@dataclass(frozen=True)
class RawArrival(Record):
    """A complete raw file appeared in a watched landing folder."""

    RECORD: ClassVar[str] = "RawArrival"

    arrival_id: str  # the same file seen again after a restart keeps it (see watcher.py)
    path: str
    folder: str
    size: int
    mtime_ns: int
    detected_at_ns: int
    watcher: str


@dataclass(frozen=True)
class DetectorSwap(Part):
    """A new device seen in a detector slot."""

    detector: int
    new_serial: str
    old_serial: str | None = None


@dataclass(frozen=True)
class IngestOutcome(Record):
    """What happened to one raw file: ingested, already-present or failed with a reason."""

    RECORD: ClassVar[str] = "IngestOutcome"

    file: str
    status: IngestStatus
    reason: str | None = None  # an error code (see services.core.errors) when failed
    message: str = ""
    instrument: str | None = None
    exposure: int | None = None
    detectors: tuple[int, ...] = ()
    dataset_ids: tuple[str, ...] = ()
    swaps: tuple[DetectorSwap, ...] = ()
    arrival_id: str | None = None  # the RawArrival it answers (none from `ingest-raws`)
    detected_at_ns: int | None = None
    finished_at_ns: int = 0

    def answering(self, arrival: RawArrival | None) -> IngestOutcome:
        """This outcome as the answer to ``arrival`` (if it had one), finished now."""
        return dataclasses.replace(
            self,
            arrival_id=None if arrival is None else arrival.arrival_id,
            detected_at_ns=None if arrival is None else arrival.detected_at_ns,
            finished_at_ns=now_ns(),
        )


@dataclass(frozen=True)
class RegistryEvent(Record):
    """What the registry service did with one command (``kind``), for whoever watches."""

    RECORD: ClassVar[str] = "RegistryEvent"

    command_id: str
    kind: str
    message: str
    at_ns: int
    reason: str | None = None
    dataset_ids: tuple[str, ...] = ()
    records_inserted: int = 0
    file: str | None = None
    # A "detector-swapped" event's slot and devices:
    instrument: str | None = None
    detector: int | None = None
    old_serial: str | None = None
    new_serial: str | None = None
    exposure: int | None = None
    since_ns: int | None = None


@dataclass(frozen=True)
class CalibrationOutcome(Record):
    """A blessing request blessed, or rejected with the reason."""

    RECORD: ClassVar[str] = "CalibrationOutcome"

    request_id: str
    collection: str
    status: Literal["blessed", "rejected"]
    message: str
    certified: int
    at_ns: int
    reason: str | None = None


@dataclass(frozen=True)
class DeadLetter(Record):
    """A message a service could not handle, with where it came from and the error."""

    RECORD: ClassVar[str] = "DeadLetter"

    topic: str
    partition: int
    offset: int
    value: bytes
    error: str
    error_code: str
    service: str
    failed_at_ns: int
    key: bytes | None = None
