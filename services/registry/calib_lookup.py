"""Every calibration that applies to a lookup, in one call: "what calibrates this exposure
and detector?".

The candidates are the repository's calibration dataset types whose dimensions the lookup's
data ID (expanded with its exposure's values: physical_filter, band, ...) provides: with
``instrument`` and ``detector`` and an exposure, ``bias(instrument, detector)``,
``camera(instrument)`` and ``transmission_filter(instrument, physical_filter)`` all apply. Each
type is resolved for all lookups at once with the registry's bulk lookup, so the cost grows
with the number of types, not with types × lookups. A type with nothing valid for a lookup is
``None`` for it (reported as "none"), never a failure of the whole lookup.

What a lookup is for comes first: ``lookup_timespan`` (one lookup, by time or by exposure) and
``lookup_queries`` (many, each row by exposure or by time, the exposures expanded in two
queries however many); ``as_of_moment`` is the moment a lookup answers as of.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import DataIdError, InputError
from ..core.timespan import Timespan, now_ns, parse_time, time_to_ns
from .datasets import DatasetType
from .registry import CalibrationMatch, Registry

__all__ = [
    "CalibrationSet",
    "applicable_types",
    "as_of_moment",
    "find_all_calibrations",
    "lookup_queries",
    "lookup_timespan",
]

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


def as_of_moment(as_of: str | None) -> int:
    """The moment (TAI ns) a lookup answers as of: ``as_of`` (ISO TAI), or now.

    Always a definite moment, reported with the answer, so the answer can be reproduced.
    """
    return time_to_ns(parse_time(as_of)) if as_of else now_ns()


def lookup_timespan(
    registry: Registry,
    values: dict[str, Any],
    *,
    time: str | None = None,
    exposure: int | None = None,
) -> Timespan | None:
    """The timespan one lookup is for: the exposure's (``values`` then gains the exposure's
    values: physical_filter, band, ...), the instant ``time`` (ISO TAI), or None."""
    if exposure is not None:
        if "instrument" not in values:
            raise DataIdError("an exposure lookup needs an instrument in its data ID")
        ((expanded, ts),) = registry.with_exposures([{**values, "exposure": exposure}])
        values.update(expanded)
        return ts
    if time is not None:
        return Timespan.at(time)
    return None


def lookup_queries(
    registry: Registry,
    lookups: Sequence[Mapping[str, Any]],
    source: str,
    instrument_hint: str = "add an instrument",
) -> list[Query]:
    """The (data ID, timespan) of many lookups, each a data ID with an ``exposure`` or a
    ``time`` (ISO TAI): an exposure row gets the exposure's timespan and values (all such rows
    in two queries), a time row the instant. Errors name ``source`` and the row (1-based);
    ``instrument_hint`` says how to give a missing instrument."""
    rows = [dict(d) for d in lookups]
    if any("exposure" not in d and "time" not in d for d in rows):
        raise InputError(f"{source}: every row needs an exposure or a time column")
    with_exposure = [i for i, d in enumerate(rows) if "exposure" in d]
    exposure_id = registry.universe["exposure"].key
    assert exposure_id is not None
    for i in with_exposure:
        where = f"{source} row {i + 1}"
        if rows[i].get("instrument") is None:
            raise DataIdError(f"{where}: an exposure lookup needs an instrument; {instrument_hint}")
        rows[i]["exposure"] = exposure_id.coerce(rows[i]["exposure"], f"{where}: exposure")
    queries: list[Query] = [
        (d, Timespan(0, 1) if "exposure" in d else Timespan.at(str(d["time"]))) for d in rows
    ]  # exposure rows get their real timespan just below
    expanded = registry.with_exposures([rows[i] for i in with_exposure])
    for i, item in zip(with_exposure, expanded, strict=True):
        queries[i] = item
    return queries
