"""Every calibration that applies to a lookup, in one call: "what calibrates this exposure
and detector?".

The candidates are the repository's calibration dataset types whose dimensions the lookup's
data ID (expanded with its exposure's values: physical_filter, band, ...) provides: with
``instrument`` and ``detector`` and an exposure, ``bias(instrument, detector)``,
``camera(instrument)`` and ``transmission_filter(instrument, physical_filter)`` all apply. Each
type is resolved for all lookups at once with the registry's bulk lookup, so the cost grows
with the number of types, not with types × lookups. A type with nothing valid for a lookup is
``None`` for it (reported as "none"), never a failure of the whole lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.timespan import Timespan
from .datasets import DatasetType
from .registry import CalibrationMatch, Registry

__all__ = ["CalibrationSet", "applicable_types", "find_all_calibrations"]

Query = tuple[Mapping[str, Any], Timespan]


@dataclass(frozen=True)
class CalibrationSet:
    """What applies to one lookup: by dataset type, the match or None."""

    data_id: Mapping[str, Any]  # as looked up (expanded with the exposure's values)
    timespan: Timespan
    found: Mapping[str, CalibrationMatch | None]


def applicable_types(registry: Registry, keys: Sequence[str]) -> list[DatasetType]:
    """Calibration dataset types, by name, whose dimensions are all among ``keys``."""
    have = set(keys)
    return [
        t
        for t in sorted(registry.query_dataset_types(), key=lambda t: t.name)
        if t.is_calibration and set(t.dimensions) <= have
    ]


def find_all_calibrations(
    registry: Registry,
    collections: Sequence[str],
    queries: Sequence[Query],
    as_of: int | None = None,
) -> list[CalibrationSet]:
    """For each (data ID, timespan), every applicable calibration type's match (or None).

    One bulk lookup per dataset type, over the lookups whose data ID has its dimensions.
    """
    keys = sorted({k for data_id, _ in queries for k, v in data_id.items() if v is not None})
    found: list[dict[str, CalibrationMatch | None]] = [{} for _ in queries]
    for dataset_type in applicable_types(registry, keys):
        wanted = set(dataset_type.dimensions)
        positions = [
            i
            for i, (data_id, _) in enumerate(queries)
            if wanted <= {k for k, v in data_id.items() if v is not None}
        ]
        for i in positions:  # only lookups that can have this type say "none" for it
            found[i][dataset_type.name] = None
        if not positions:
            continue
        matches = registry.find_calibrations_bulk(
            dataset_type.name, collections, [queries[i] for i in positions], as_of
        )
        for i, match in zip(positions, matches, strict=True):
            found[i][dataset_type.name] = match
    return [
        CalibrationSet(dict(data_id), timespan, by_type)
        for (data_id, timespan), by_type in zip(queries, found, strict=True)
    ]
