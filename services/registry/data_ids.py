"""Expanding data IDs with the values their dimension records imply.

A data ID may name an exposure without its physical_filter, band, group or day_obs: those are
in the exposure's (and its filter's) records. The Registry's two expansions are here:

- ``expand_data_id``: every dimension implied by the given ones, one record at a time until
  nothing more is implied (``Registry.expand_data_id``; ``find_dataset`` uses it for a data
  ID that lacks some of its dataset type's dimensions);
- ``with_exposures``: many data IDs that name an exposure, in two queries however many there
  are, each with its exposure's timespan (``Registry.with_exposures``, for calibration
  lookups by exposure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from ..core.errors import RecordNotFoundError
from ..core.timespan import Timespan
from .database import Database
from .records import DimensionRecords

__all__ = ["expand_data_id", "with_exposures"]


def expand_data_id(
    records: DimensionRecords, conn: Connection, values: Mapping[str, Any]
) -> dict[str, Any]:
    """Fill in the dimensions implied by the given ones (e.g. an exposure's filter and band)."""
    out = dict(values)
    changed = True
    while changed:
        changed = False
        for element in records.universe.dimensions:
            if element.name not in out or not element.implies:
                continue
            if all(d in out for d in element.implies):
                continue
            assert element.key is not None
            key = {d: out[d] for d in element.requires if d in out}
            key[element.key.name] = out[element.name]
            record = records.fetch(conn, element.name, key)
            if record is None:
                raise RecordNotFoundError(f"no {element.name} record for {key}; register it first")
            for dim in element.implies:
                if record.get(dim) is not None and dim not in out:
                    out[dim] = record[dim]
                    changed = True
    return out


def with_exposures(
    db: Database, records: DimensionRecords, data_ids: Sequence[Mapping[str, Any]]
) -> list[tuple[dict[str, Any], Timespan]]:
    """Expand data IDs that name an exposure with its implied values, plus its timespan.

    Two queries however many data IDs (in one read transaction of ``db``): one for the
    exposures, one for their filters.
    """
    with db.transaction(write=False) as conn:
        exp_keys = [{"instrument": d["instrument"], "id": int(d["exposure"])} for d in data_ids]
        exposures = records.fetch_many(conn, "exposure", exp_keys)
        filters = records.fetch_many(
            conn,
            "physical_filter",
            [
                {"instrument": e["instrument"], "name": e["physical_filter"]}
                for e in exposures.values()
                if e["physical_filter"] is not None
            ],
        )
    out: list[tuple[dict[str, Any], Timespan]] = []
    for values, key in zip(data_ids, exp_keys, strict=True):
        exposure = exposures.get((key["instrument"], key["id"]))
        if exposure is None or exposure["timespan"] is None:
            raise RecordNotFoundError(
                f"no exposure {key['id']} of {key['instrument']} with a timespan is registered"
            )
        expanded = {**values, "exposure": key["id"]}
        for dim in ("physical_filter", "group", "day_obs"):
            if exposure[dim] is not None:
                expanded.setdefault(dim, exposure[dim])
        band = filters.get((key["instrument"], exposure["physical_filter"]), {}).get("band")
        if band is not None:
            expanded.setdefault("band", band)
        out.append((expanded, exposure["timespan"]))
    return out
