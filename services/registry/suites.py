"""Calibration suites: several certifications and declared changes to certified ranges, as one.

A suite names a CALIBRATION collection, adjustments to validity ranges already certified there
("end the old flat at T", "decertify [a, b)") and certifications (datasets, each group with its
validity range). Planning replays the adjustments and certifications on the collection's live
ranges, in memory, and refuses the suite if an adjustment matches nothing or if, afterwards,
two ranges of one data ID would overlap (against what is certified, or within the suite).
Applying it does the same planning inside the caller's transaction, then the changes: all
apply or none do.

The calibration service plans (read only) to refuse early with the reason; the registry
service (or an in-process command) applies. Both use the code here, so the checks are the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.dimensions import DataId
from ..core.errors import AdjustmentMismatchError, CalibrationOverlapError, InputError
from ..core.timespan import Timespan, ns_to_iso
from .collections import CollectionType
from .datasets import DatasetRef
from .registry import Registry

AdjustmentAction = Literal["end", "decertify"]
ADJUSTMENT_ACTIONS: tuple[AdjustmentAction, ...] = ("end", "decertify")


@dataclass(frozen=True)
class ValidityAdjustment:
    """A declared change to what is certified for one data ID of one dataset type.

    ``end``: the live range containing ``end`` now ends there (already ending there: a no-op).
    ``decertify``: validity in ``[begin, end)`` is removed (it must overlap something).
    """

    dataset_type: str
    data_id: Mapping[str, Any]
    action: AdjustmentAction
    begin: int | None = None
    end: int | None = None

    def __post_init__(self) -> None:
        if self.action not in ADJUSTMENT_ACTIONS:
            raise InputError(
                f"unknown adjustment action {self.action!r}; use one of: "
                + ", ".join(ADJUSTMENT_ACTIONS)
            )
        if self.action == "end" and self.end is None:
            raise InputError(
                f"adjustment 'end' of {self.dataset_type} {dict(self.data_id)} needs an end time"
            )
        if self.action == "decertify":
            Timespan(self.begin, self.end)  # refuses an empty range with a clear message

    def describe(self) -> str:
        data_id = ",".join(f"{k}={v}" for k, v in self.data_id.items())
        if self.action == "end":
            return f"end {self.dataset_type} {data_id} at {ns_to_iso(self.end)}"
        return f"decertify {self.dataset_type} {data_id} {Timespan(self.begin, self.end)}"


@dataclass(frozen=True)
class CertifyItem:
    """Datasets certified for one validity range."""

    dataset_ids: tuple[str, ...]
    timespan: Timespan


@dataclass(frozen=True)
class CertifySuite:
    """The registry command of a suite: adjustments first, then every item, in one transaction."""

    collection: str
    items: tuple[CertifyItem, ...]
    adjustments: tuple[ValidityAdjustment, ...] = ()
    request_id: str | None = None


@dataclass(frozen=True)
class SuiteResult:
    certified: int  # validity rows inserted (an exact repeat inserts none)
    adjusted: int  # validity rows cut by the adjustments


@dataclass
class _Range:
    dataset_id: uuid.UUID
    timespan: Timespan
    origin: str  # for messages: "certified" or "item N of the suite"


@dataclass
class ValidityPlan:
    """The live ranges of one collection, changed in memory as a suite would change them."""

    collection: str
    ranges: dict[tuple[str, str], list[_Range]] = field(default_factory=dict)
    cuts: list[tuple[str, DataId, Timespan]] = field(default_factory=list)
    conflicts: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(
        cls, registry: Registry, collection: str, dataset_types: Sequence[str]
    ) -> ValidityPlan:
        plan = cls(collection)
        existing = {c.name: c for c in registry.query_collections()}.get(collection)
        if existing is None or existing.type is not CollectionType.CALIBRATION:
            return plan  # a new collection (a wrong type is refused elsewhere): nothing live
        for name in sorted(set(dataset_types)):
            for ref, ts in registry.query_calibrations(collection, name):
                plan._live(name, ref.data_id.key).append(_Range(ref.id, ts, "certified"))
        return plan

    def _live(self, dataset_type: str, key: str) -> list[_Range]:
        return self.ranges.setdefault((dataset_type, key), [])

    def adjust(self, adjustment: ValidityAdjustment, data_id: DataId) -> None:
        """Apply one adjustment to the plan, remembering the window it cuts (if any)."""
        live = self._live(adjustment.dataset_type, data_id.key)
        if adjustment.action == "end":
            assert adjustment.end is not None
            at = adjustment.end
            holding = [r for r in live if r.timespan.db_begin < at < r.timespan.db_end]
            if not holding:
                if any(r.timespan.end == at for r in live):
                    return  # already ends there: repeating a suite is a no-op
                raise self._mismatch(adjustment, live)
            window = Timespan(at, holding[0].timespan.end)
        else:
            window = Timespan(adjustment.begin, adjustment.end)
            if not any(r.timespan.overlaps(window) for r in live):
                raise self._mismatch(adjustment, live)
        live[:] = [
            _Range(r.dataset_id, piece, r.origin)
            for r in live
            for piece in r.timespan.difference(window)
        ]
        self.cuts.append((adjustment.dataset_type, data_id, window))

    def _mismatch(self, adjustment: ValidityAdjustment, live: list[_Range]) -> Exception:
        have = "; ".join(str(r.timespan) for r in live) or "none"
        return AdjustmentMismatchError(
            f"adjustment '{adjustment.describe()}' matches no certified range in "
            f"{self.collection} (its live ranges: {have}); check the data ID and times"
        )

    def add(self, ref: DatasetRef, timespan: Timespan, origin: str) -> bool:
        """Add one new range; False if it is already certified exactly so (a no-op).

        An overlap with a live range or another new one is recorded in ``conflicts``.
        """
        name = ref.dataset_type.name
        live = self._live(name, ref.data_id.key)
        if any(r.dataset_id == ref.id and r.timespan == timespan for r in live):
            return False
        clashes = [r for r in live if r.timespan.overlaps(timespan)]
        for r in clashes:
            self.conflicts.setdefault(name, []).append(
                f"{ref.data_id.key} {timespan} ({origin}) with {r.timespan} ({r.origin}, "
                f"dataset {r.dataset_id})"
            )
        live.append(_Range(ref.id, timespan, origin))
        return not clashes

    def check(self) -> None:
        """Raise the overlaps found, all of them, naming every dataset type concerned."""
        if self.conflicts:
            raise CalibrationOverlapError(
                self.collection,
                ", ".join(sorted(self.conflicts)),
                [c for name in sorted(self.conflicts) for c in self.conflicts[name]],
            )


def plan_suite(
    registry: Registry,
    collection: str,
    items: Sequence[tuple[Sequence[DatasetRef], Timespan]],
    adjustments: Sequence[ValidityAdjustment],
) -> ValidityPlan:
    """The suite replayed on the collection's live ranges; raises the first reason to refuse."""
    types = [r.dataset_type.name for refs, _ in items for r in refs]
    types += [a.dataset_type for a in adjustments]
    plan = ValidityPlan.load(registry, collection, types)
    for adjustment in adjustments:
        dt = registry.get_dataset_type(adjustment.dataset_type)
        plan.adjust(adjustment, registry.universe.data_id(dt.dimensions, adjustment.data_id))
    for n, (refs, timespan) in enumerate(items, start=1):
        for ref in refs:
            plan.add(ref, timespan, f"item {n} of the suite")
    plan.check()
    return plan


def apply_suite(registry: Registry, suite: CertifySuite) -> SuiteResult:
    """Apply a suite in one transaction (the caller's, if open): adjustments, then items."""
    with registry.transaction():
        items = [
            ([registry.get_dataset(uuid.UUID(i)) for i in item.dataset_ids], item.timespan)
            for item in suite.items
        ]
        plan = plan_suite(registry, suite.collection, items, suite.adjustments)
        adjusted = sum(
            registry.decertify(suite.collection, name, window, [data_id])
            for name, data_id, window in plan.cuts
        )
        # Blessing into a new collection creates it, in the same transaction as the certify.
        registry.register_collection(suite.collection, CollectionType.CALIBRATION)
        certified = sum(registry.certify(suite.collection, refs, ts) for refs, ts in items)
    return SuiteResult(certified, adjusted)
