"""Searching collections for datasets: the lookups behind the Registry's find and query methods.

A search is given collection names; CHAINED ones are flattened into their children (as they
were at ``as_of``, when given) and the rest are searched in that order:

- ``find_first``: the first match for one data ID; a CALIBRATION collection matches only for
  a timespan, with the validity range that holds it (``Registry.find_dataset``,
  ``find_calibration``);
- ``query``: every dataset of a type, optionally constrained by a ``--where`` expression, with
  the collection it was found in (``Registry.query_datasets``);
- ``find_calibrations``: many (data ID, timespan) lookups at once, one joined query over
  CALIBRATION collections only (``Registry.find_calibrations_bulk``).

A match is a ``Found``: the dataset, the collection it was found in and its validity range
(None outside CALIBRATION collections), the fields of the ``CalibrationMatch`` that the
Registry, whose API returns those, makes of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..core.dimensions import DataId, DimensionUniverse
from ..core.errors import CalibrationAmbiguityError, CollectionTypeError
from ..core.timespan import Timespan
from .calibs import CalibrationManager, Validity
from .collections import Collection, CollectionManager, CollectionType
from .data_ids import expand_data_id
from .datasets import DatasetManager, DatasetRef, DatasetType
from .queries import dataset_where
from .records import DimensionRecords

__all__ = ["CollectionSearch", "Found"]

Found = tuple[DatasetRef, str, Timespan | None]
"""A match: the dataset, the collection it was found in, its validity range (or None)."""


class CollectionSearch:
    """Searches over the registry's tables, each in the caller's transaction (``conn``)."""

    def __init__(
        self,
        universe: DimensionUniverse,
        records: DimensionRecords,
        collections: CollectionManager,
        datasets: DatasetManager,
        calibs: CalibrationManager,
    ) -> None:
        self.universe = universe
        self.records = records
        self.collections = collections
        self.datasets = datasets
        self.calibs = calibs

    def find_first(
        self,
        conn: Connection,
        dataset_type: str,
        data_id: Mapping[str, Any],
        collections: Sequence[str],
        timespan: Timespan | None = None,
        as_of: int | None = None,
    ) -> Found | None:
        """The first match along the collection search path (CALIBRATION needs a timespan)."""
        type_id, dt = self.datasets.type_with_id(conn, dataset_type)
        values = self._expand_for(conn, dt, data_id)
        normalized = self.universe.data_id(dt.dimensions, values)
        for name in self.collections.flatten(conn, collections, as_of):
            collection = self.collections.resolve(conn, name)
            match = self._find_in(conn, collection, type_id, dt, normalized, timespan, as_of)
            if match is not None:
                return match
        return None

    def _expand_for(self, conn: Connection, dt: DatasetType, data_id: Mapping[str, Any]) -> Any:
        if all(d in data_id for d in dt.dimensions):
            return data_id
        return expand_data_id(self.records, conn, data_id)

    def _find_in(
        self,
        conn: Connection,
        collection: Collection,
        type_id: int,
        dt: DatasetType,
        data_id: DataId,
        timespan: Timespan | None,
        as_of: int | None,
    ) -> Found | None:
        ref: DatasetRef | None = None
        if collection.type is CollectionType.RUN:
            ref = self.datasets.find_in_run(conn, type_id, data_id, collection.id, as_of)
        elif collection.type is CollectionType.TAGGED:
            ref = self.datasets.find_in_tagged(conn, type_id, data_id, collection.id)
        elif collection.type is CollectionType.CALIBRATION and timespan is not None:
            found = self.calibs.lookup(
                conn,
                collection.id,
                type_id,
                data_id.key,
                timespan,
                as_of,
                f"{dt.name} {data_id} in {collection.name}",
            )
            if found is not None:
                validity, run = found
                ref = DatasetRef(validity.dataset_id, dt, data_id, run)
                return ref, collection.name, validity.timespan
        return None if ref is None else (ref, collection.name, None)

    def query(
        self,
        conn: Connection,
        dataset_type: str,
        collections: Sequence[str],
        expr: str | None = None,
        find_first: bool = False,
    ) -> list[tuple[DatasetRef, str]]:
        """Datasets of a type in the collections (each with the collection it was found in)."""
        type_id, dt = self.datasets.type_with_id(conn, dataset_type)
        condition = (
            dataset_where(self.records, self.datasets.dataset_table, dt, expr) if expr else None
        )
        out: list[tuple[DatasetRef, str]] = []
        seen: set[str] = set()
        for name in self.collections.flatten(conn, collections):
            collection = self.collections.get(conn, name)
            if collection.type is CollectionType.RUN:
                refs = self.datasets.query(conn, type_id, [collection.id], [], condition)
            elif collection.type is CollectionType.TAGGED:
                refs = self.datasets.query(conn, type_id, [], [collection.id], condition)
            else:
                ids = {v.dataset_id for v in self.calibs.live(conn, collection.id, type_id, None)}
                refs = self._refs_matching(conn, sorted(ids), type_id, condition)
            for ref in sorted(refs, key=lambda r: r.data_id.key):
                if find_first and ref.data_id.key in seen:
                    continue
                seen.add(ref.data_id.key)
                out.append((ref, name))
        return out

    def _refs_matching(
        self, conn: Connection, ids: Sequence[uuid.UUID], type_id: int, condition: Any
    ) -> list[DatasetRef]:
        if not ids:
            return []
        table = self.datasets.dataset_table
        stmt = select(table.c.id).where(table.c.id.in_(ids), table.c.dataset_type_id == type_id)
        if condition is not None:
            stmt = stmt.where(condition)
        return self.datasets.get_refs(conn, list(conn.execute(stmt).scalars()))

    def find_calibrations(
        self,
        conn: Connection,
        dataset_type: str,
        collections: Sequence[str],
        queries: Sequence[tuple[Mapping[str, Any], Timespan]],
        as_of: int | None = None,
    ) -> list[Found | None]:
        """Resolve many (data ID, timespan) lookups with one joined query per search."""
        type_id, dt = self.datasets.type_with_id(conn, dataset_type)
        names = self.collections.flatten(conn, collections, as_of)
        cols = [self.collections.resolve(conn, n) for n in names]
        calib_cols = [c for c in cols if c.type is CollectionType.CALIBRATION]
        if len(calib_cols) != len(cols):
            other = [c.name for c in cols if c.type is not CollectionType.CALIBRATION]
            raise CollectionTypeError(
                f"bulk calibration lookups search CALIBRATION collections only; "
                f"{', '.join(other)} are not"
            )
        keys = [self.universe.data_id(dt.dimensions, d).key for d, _ in queries]
        matches = self.calibs.bulk_lookup(
            conn,
            [c.id for c in calib_cols],
            type_id,
            [(k, ts) for k, (_, ts) in zip(keys, queries, strict=True)],
            as_of,
        )
        rank = {c.id: i for i, c in enumerate(calib_cols)}
        chosen: list[Validity | None] = []
        for key, (_, ts), found in zip(keys, queries, matches, strict=True):
            if not found:
                chosen.append(None)
                continue
            best = min(rank[v.collection_id] for v in found)
            winners = [v for v in found if rank[v.collection_id] == best]
            if len(winners) > 1:
                raise CalibrationAmbiguityError(
                    f"{dt.name} {key}: the time range {ts} spans {len(winners)} validity "
                    f"ranges in {calib_cols[best].name}; ask for a narrower range"
                )
            chosen.append(winners[0])
        ids = sorted({v.dataset_id for v in chosen if v is not None})
        refs = {r.id: r for r in self.datasets.get_refs(conn, ids)} if ids else {}
        names_by_id = {c.id: c.name for c in calib_cols}
        return [
            None if v is None else (refs[v.dataset_id], names_by_id[v.collection_id], v.timespan)
            for v in chosen
        ]
