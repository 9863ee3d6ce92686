"""Blessing suites: the file format, the BlessingRequest they travel as, and their checks.

A suite blesses several calibrations into one CALIBRATION collection in one atomic request,
together with declared changes to ranges already certified there. The YAML file
(``examples/suite.yaml``)::

    collection: SimCam/calib/2025          # target CALIBRATION collection (made if new)
    reason: new flats after the filter swap
    requested_by: alice                    # optional; default: the user running the command
    calibrations:                          # at least one
      - dataset_type: flat
        run: SimCam/calib/flat/20250101
        data_ids:                          # optional; default: every flat in the run
          - {instrument: SimCam, physical_filter: SimCam-r, detector: 94}
        begin: 2025-01-01T00:00:00         # ISO TAI; a missing bound is unbounded
        end: 2025-07-01T00:00:00
    adjustments:                           # optional; applied before the certifications
      - dataset_type: flat
        data_id: {instrument: SimCam, physical_filter: SimCam-r, detector: 94}
        action: end                        # the live range containing `end` now ends there
        end: 2025-01-01T00:00:00
      - dataset_type: bias
        data_id: {instrument: SimCam, detector: 94}
        action: decertify                  # remove validity in [begin, end)
        begin: 2024-12-24T00:00:00
        end: 2024-12-26T00:00:00

``check_suite`` is the one validation path: the calibration service runs it on every
request, and ``obsbus import-calibrations`` on what it imports. It turns a suite into the
CertifySuite registry command, or raises the reason to refuse it.
"""

from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.functional_validators import BeforeValidator

from ..core.dimensions import DataId
from ..core.errors import (
    CollectionTypeError,
    DatasetNotFoundError,
    InputError,
    NotACalibrationError,
    ObsbusError,
    UnregisteredDataIdError,
)
from ..core.timespan import Timespan, now_ns, parse_time, time_to_ns
from ..messages import BlessingRequest, CalibrationItem, ValidityChange
from ..registry.collections import CollectionType
from ..registry.datasets import DatasetRef
from ..registry.registry import Registry
from ..registry.suites import CertifyItem, CertifySuite, ValidityAdjustment, plan_suite

NS_CONTEXT = {"ns": True}  # validation context: times are already integer ns (from a message)


def _tai_ns(value: Any, info: ValidationInfo) -> int | None:
    """ISO TAI text (or a YAML date/timestamp without a zone) as integer ns; None = unbounded."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and info.context == NS_CONTEXT:
        return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise ValueError(f"{value} has a time zone: give TAI times without one")
        value = value.isoformat()
    elif isinstance(value, date):
        value = value.isoformat()
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a time: give ISO TAI such as 2025-01-01T00:00:00")
    try:
        return time_to_ns(parse_time(value))
    except ObsbusError as err:
        raise ValueError(str(err)) from err


TaiNs = Annotated[int | None, BeforeValidator(_tai_ns)]
DataIdValues = dict[str, int | str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationSpec(_Strict):
    """Datasets of one type from one run, certified for one validity range."""

    dataset_type: str = Field(min_length=1)
    run: str = Field(min_length=1)
    data_ids: list[DataIdValues] = Field(default_factory=list)  # empty: all in the run
    begin: TaiNs = None
    end: TaiNs = None

    @model_validator(mode="after")
    def _non_empty(self) -> CalibrationSpec:
        try:
            Timespan(self.begin, self.end)  # refuses begin >= end with a clear message
        except ObsbusError as err:
            raise ValueError(str(err)) from err
        return self

    @property
    def timespan(self) -> Timespan:
        return Timespan(self.begin, self.end)


class AdjustmentSpec(_Strict):
    """A declared change to a range already certified in the target collection."""

    dataset_type: str = Field(min_length=1)
    data_id: DataIdValues
    action: Literal["end", "decertify"]
    begin: TaiNs = None
    end: TaiNs = None

    @model_validator(mode="after")
    def _complete(self) -> AdjustmentSpec:
        try:
            self.adjustment()  # "end" needs an end, "decertify" a non-empty range
        except ObsbusError as err:
            raise ValueError(str(err)) from err
        return self

    def adjustment(self) -> ValidityAdjustment:
        return ValidityAdjustment(
            self.dataset_type, self.data_id, self.action, self.begin, self.end
        )


class Suite(_Strict):
    """Calibrations to bless together, with the changes to existing ranges they need."""

    collection: str = Field(min_length=1)
    reason: str = ""
    requested_by: str | None = None
    calibrations: list[CalibrationSpec] = Field(min_length=1)
    adjustments: list[AdjustmentSpec] = Field(default_factory=list)

    def request(self, request_id: str, requested_by: str | None = None) -> BlessingRequest:
        """The BlessingRequest: the first calibration in the v1 fields, the rest after."""
        first, *further = (_item(c) for c in self.calibrations)
        return BlessingRequest(
            request_id=request_id,
            collection=self.collection,
            dataset_type=first.dataset_type,
            run=first.run,
            data_ids=first.data_ids,
            begin_ns=first.begin_ns,
            end_ns=first.end_ns,
            requested_by=self.requested_by or requested_by or default_requester(),
            reason=self.reason,
            adjustments=tuple(
                ValidityChange(a.dataset_type, dict(a.data_id), a.action, a.begin, a.end)
                for a in self.adjustments
            ),
            calibrations=tuple(further),
            requested_at_ns=now_ns(),
        )

    @classmethod
    def from_request(cls, request: BlessingRequest) -> Suite:
        """The suite a BlessingRequest (any version) carries."""
        return cls.model_validate(
            {
                "collection": request.collection,
                "reason": request.reason,
                "requested_by": request.requested_by,
                "calibrations": [
                    {
                        "dataset_type": i.dataset_type,
                        "run": i.run,
                        "data_ids": [dict(d) for d in i.data_ids],
                        "begin": i.begin_ns,
                        "end": i.end_ns,
                    }
                    for i in request.items
                ],
                "adjustments": [
                    {
                        "dataset_type": a.dataset_type,
                        "data_id": dict(a.data_id),
                        "action": a.action,
                        "begin": a.begin_ns,
                        "end": a.end_ns,
                    }
                    for a in request.adjustments
                ],
            },
            context=NS_CONTEXT,
        )


def _item(c: CalibrationSpec) -> CalibrationItem:
    return CalibrationItem(
        c.dataset_type, c.run, tuple(dict(d) for d in c.data_ids), c.begin, c.end
    )


def default_requester() -> str:
    return os.environ.get("USER") or "unknown"


def load_suite(path: Path) -> Suite:
    """Read a suite file; any problem is one InputError line naming the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read it ({err})") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with collection, calibrations, ...")
    try:
        return Suite.model_validate(data)
    except ValidationError as err:
        raise InputError(f"{path}: {validation_summary(err)}") from err


def validation_summary(err: ValidationError) -> str:
    """The first problem pydantic found, on one line, with where it is."""
    problems = err.errors()
    first = problems[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}{more}" if where else f"{message}{more}"


# --- the checks ---------------------------------------------------------------------------------


def check_suite(registry: Registry, suite: Suite, request_id: str | None) -> CertifySuite:
    """The CertifySuite command a valid suite becomes; raises the reason to refuse it."""
    _check_target(registry, suite.collection)
    items = [(_datasets(registry, spec), spec.timespan) for spec in suite.calibrations]
    adjustments = [a.adjustment() for a in suite.adjustments]
    plan_suite(registry, suite.collection, items, adjustments)
    return CertifySuite(
        suite.collection,
        tuple(CertifyItem(tuple(str(r.id) for r in refs), ts) for refs, ts in items),
        tuple(adjustments),
        request_id,
    )


def _check_target(registry: Registry, collection: str) -> None:
    existing = {c.name: c for c in registry.query_collections()}.get(collection)
    if existing is None:
        return  # blessing into a new collection creates it
    if existing.type is not CollectionType.CALIBRATION:
        raise CollectionTypeError(
            f"collection {collection!r} is {existing.type.value}, not CALIBRATION"
        )
    existing.check_writable("bless into it")


def _datasets(registry: Registry, spec: CalibrationSpec) -> list[DatasetRef]:
    """The datasets one calibration item names: they exist and are calibrations."""
    dt = registry.get_dataset_type(spec.dataset_type)
    if not dt.is_calibration:
        raise NotACalibrationError(
            f"dataset type {spec.dataset_type!r} is not a calibration type; only calibration "
            "datasets can be blessed"
        )
    registry.get_collection(spec.run)
    found = [ref for ref, _ in registry.query_datasets(dt.name, [spec.run])]
    wanted = [registry.universe.data_id(dt.dimensions, d) for d in spec.data_ids]
    refs = [r for r in found if not wanted or r.data_id in wanted]
    have = {r.data_id for r in refs}
    missing = [w for w in wanted if w not in have]
    for data_id in missing:
        check_registered(registry, data_id)
    if missing or not refs:
        raise DatasetNotFoundError(
            f"run {spec.run!r} has no {dt.name} for "
            + (", ".join(str(m) for m in missing) if missing else "any data ID")
        )
    return refs


def check_registered(registry: Registry, data_id: DataId) -> None:
    """Raise UnregisteredDataIdError if a value of ``data_id`` has no dimension record."""
    for name, value in data_id.items():
        element = registry.universe[name]
        assert element.key is not None
        key = {d: data_id[d] for d in element.requires if d in data_id}
        key[element.key.name] = value
        if registry.fetch_dimension_record(name, key) is None:
            raise UnregisteredDataIdError(
                f"data ID value {name}={value!r} is not registered (no {name} record for {key}); "
                "register it first"
            )
