"""The blessing request: calibrations to certify into a CALIBRATION collection, as one suite.

Version 1 carried one calibration (the fields on the request itself); version 2 added the
further ``calibrations`` and the ``adjustments`` to ranges already certified. A suite's first
calibration still travels in the v1 fields, so a v1 reader sees a whole single blessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

from .record import Part, Record

DataIdValues = Mapping[str, int | str]


@dataclass(frozen=True)
class CalibrationItem(Part):
    """Datasets of one type from one run (all of them, or these data IDs) and their range."""

    dataset_type: str
    run: str
    data_ids: tuple[DataIdValues, ...] = ()
    begin_ns: int | None = None  # None: unbounded
    end_ns: int | None = None


@dataclass(frozen=True)
class ValidityChange(Part):
    """A declared change to a range already certified in the target collection."""

    dataset_type: str
    data_id: DataIdValues
    action: Literal["end", "decertify"]
    begin_ns: int | None = None
    end_ns: int | None = None


@dataclass(frozen=True)
class BlessingRequest(Record):
    RECORD: ClassVar[str] = "BlessingRequest"

    request_id: str
    collection: str
    # The first calibration (the v1 fields):
    dataset_type: str
    run: str
    data_ids: tuple[DataIdValues, ...]
    begin_ns: int | None
    end_ns: int | None
    requested_by: str
    reason: str
    requested_at_ns: int
    adjustments: tuple[ValidityChange, ...] = ()
    calibrations: tuple[CalibrationItem, ...] = ()  # the further ones

    @property
    def items(self) -> tuple[CalibrationItem, ...]:
        """Every calibration of the suite, the first one included."""
        first = CalibrationItem(
            self.dataset_type, self.run, self.data_ids, self.begin_ns, self.end_ns
        )
        return (first, *self.calibrations)
