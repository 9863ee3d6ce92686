"""Certification of calibrations into CALIBRATION collections, and validity lookups.

A validity row says "this dataset is valid for [begin, end) in this collection". Rows are never
deleted: decertify stamps ``decertified_at`` and inserts what remains of the range, so a lookup
"as of" moment T sees the rows with ``certified_at <= T < decertified_at``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    cast,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, RowMapping

from ..core.errors import CalibrationAmbiguityError, CalibrationOverlapError
from ..core.timespan import Timespan
from .clock import change_time
from .database import PG_DEADLOCK, PG_EXCLUSION_VIOLATION, sqlstate

# How often certify plans again after losing a race to a concurrent certifier (PostgreSQL).
_RACE_ATTEMPTS = 3


@dataclass(frozen=True)
class Validity:
    """One certified range of one dataset in one CALIBRATION collection."""

    collection_id: int
    dataset_type_id: int
    data_id_key: str
    dataset_id: uuid.UUID
    timespan: Timespan

    def describe(self) -> str:
        return f"{self.data_id_key} {self.timespan} (dataset {self.dataset_id})"


class CalibrationManager:
    def __init__(self, tables: Mapping[str, Table]) -> None:
        self._v = tables["calib_validity"]
        self._datasets = tables["dataset"]
        self._collections = tables["collection"]

    def _live(self, as_of: int | None) -> Any:
        c = self._v.c
        if as_of is None:
            return c.decertified_at.is_(None)
        return and_(
            c.certified_at <= as_of, or_(c.decertified_at.is_(None), c.decertified_at > as_of)
        )

    @staticmethod
    def _overlapping(ts: Timespan, begin: Any, end: Any) -> Any:
        return and_(begin < ts.db_end, end > ts.db_begin)

    def _row_validity(self, row: RowMapping) -> Validity:
        return Validity(
            row["collection_id"],
            row["dataset_type_id"],
            row["data_id_key"],
            row["dataset_id"],
            Timespan.from_db(row["begin_ns"], row["end_ns"]),
        )

    def find_overlaps(
        self,
        conn: Connection,
        collection_id: int,
        type_id: int,
        keys: Sequence[str],
        ts: Timespan,
    ) -> list[Validity]:
        c = self._v.c
        rows = conn.execute(
            select(self._v)
            .where(
                c.collection_id == collection_id,
                c.dataset_type_id == type_id,
                c.data_id_key.in_(keys),
                self._live(None),
                self._overlapping(ts, c.begin_ns, c.end_ns),
            )
            .order_by(c.data_id_key, c.begin_ns)
        ).mappings()
        return [self._row_validity(r) for r in rows]

    def certify(
        self,
        conn: Connection,
        collection: str,
        dataset_type: str,
        entries: Sequence[Validity],
        by: str,
    ) -> int:
        """Insert validity rows; an identical live row is a no-op; any overlap writes nothing."""
        for _ in range(_RACE_ATTEMPTS):
            new = self._plan(conn, collection, dataset_type, entries)
            if not new:
                return 0
            try:
                with conn.begin_nested():
                    return self._insert(conn, new, by)
            except sqlalchemy.exc.DBAPIError as err:
                # A concurrent writer committed an overlapping row first (PostgreSQL's exclusion
                # constraint waited for it), or the two inserts deadlocked on the constraint's
                # index and PostgreSQL chose this one as the victim. Plan again: at READ
                # COMMITTED the other row is now visible, so an identical replay becomes a no-op
                # and anything else a CalibrationOverlapError naming it.
                if sqlstate(err) not in (PG_EXCLUSION_VIOLATION, PG_DEADLOCK):
                    raise
        clashes = {
            v.describe()
            for entry in entries
            for v in self.find_overlaps(
                conn,
                entry.collection_id,
                entry.dataset_type_id,
                [entry.data_id_key],
                entry.timespan,
            )
        }
        raise CalibrationOverlapError(collection, dataset_type, sorted(clashes))

    def _plan(
        self, conn: Connection, collection: str, dataset_type: str, entries: Sequence[Validity]
    ) -> list[Validity]:
        """The entries still to insert; raises if any overlaps a stored or another new range."""
        conflicts: list[str] = []
        new: list[Validity] = []
        for entry in entries:
            if entry in new:
                continue  # the same dataset and range listed twice in one call
            stored = self.find_overlaps(
                conn,
                entry.collection_id,
                entry.dataset_type_id,
                [entry.data_id_key],
                entry.timespan,
            )
            pending = [
                v
                for v in new
                if v.data_id_key == entry.data_id_key and v.timespan.overlaps(entry.timespan)
            ]
            if stored == [entry] and not pending:
                continue  # already certified exactly so: replays and retries are no-ops
            if stored or pending:
                conflicts.extend(v.describe() for v in (*stored, *pending))
                continue
            new.append(entry)
        if conflicts:
            raise CalibrationOverlapError(collection, dataset_type, sorted(set(conflicts)))
        return new

    def _insert(self, conn: Connection, new: Sequence[Validity], by: str) -> int:
        at = change_time()
        rows = [
            {
                "collection_id": v.collection_id,
                "dataset_type_id": v.dataset_type_id,
                "data_id_key": v.data_id_key,
                "dataset_id": v.dataset_id,
                "begin_ns": v.timespan.db_begin,
                "end_ns": v.timespan.db_end,
                "certified_at": at,
                "certified_by": by,
            }
            for v in new
        ]
        conn.execute(self._v.insert(), rows)
        return len(rows)

    def decertify(
        self,
        conn: Connection,
        collection_id: int,
        type_id: int,
        ts: Timespan,
        keys: Sequence[str] | None,
        by: str,
    ) -> int:
        """Cut ``ts`` out of every matching live range (splitting ranges where needed)."""
        if conn.dialect.name == "postgresql":
            # One decertify at a time per collection and dataset type (SQLite's BEGIN IMMEDIATE
            # gives that for free): otherwise two could split the same row, and the second's
            # remainders would clash with the first's. Waiting here, the select below then sees
            # the first one's committed remainders (READ COMMITTED).
            conn.execute(
                select(
                    func.pg_advisory_xact_lock(cast(collection_id, Integer), cast(type_id, Integer))
                )
            )
        c = self._v.c
        stmt = select(self._v).where(
            c.collection_id == collection_id,
            c.dataset_type_id == type_id,
            self._live(None),
            self._overlapping(ts, c.begin_ns, c.end_ns),
        )
        if keys is not None:
            stmt = stmt.where(c.data_id_key.in_(keys))
        rows = list(conn.execute(stmt).mappings())
        if not rows:
            return 0
        at = change_time()
        conn.execute(
            self._v.update()
            .where(c.id.in_([r["id"] for r in rows]))
            .values(decertified_at=at, decertified_by=by)
        )
        pieces = []
        for row in rows:
            for piece in self._row_validity(row).timespan.difference(ts):
                pieces.append(
                    {
                        "collection_id": row["collection_id"],
                        "dataset_type_id": row["dataset_type_id"],
                        "data_id_key": row["data_id_key"],
                        "dataset_id": row["dataset_id"],
                        "begin_ns": piece.db_begin,
                        "end_ns": piece.db_end,
                        "certified_at": at,
                        "certified_by": f"{by} (remainder)",
                    }
                )
        if pieces:
            conn.execute(self._v.insert(), pieces)
        return len(rows)

    @functools.cached_property
    def _lookup_statements(self) -> dict[bool, Any]:
        """The single-lookup query, built once per variant (now / as of a moment).

        Lookups are the hot path: building SQLAlchemy expressions costs more than running
        them, so the statements take bound parameters instead.
        """
        c, d, runs = self._v.c, self._datasets.c, self._collections.c
        statements = {}
        for with_as_of in (False, True):
            live = (
                and_(
                    c.certified_at <= bindparam("as_of"),
                    or_(c.decertified_at.is_(None), c.decertified_at > bindparam("as_of")),
                )
                if with_as_of
                else c.decertified_at.is_(None)
            )
            statements[with_as_of] = (
                select(self._v, runs.name.label("run_name"))
                .join(self._datasets, d.id == c.dataset_id)
                .join(self._collections, runs.id == d.run_id)
                .where(
                    c.collection_id == bindparam("collection_id"),
                    c.dataset_type_id == bindparam("type_id"),
                    c.data_id_key == bindparam("key"),
                    live,
                    c.begin_ns < bindparam("end"),
                    c.end_ns > bindparam("begin"),
                )
                .order_by(c.begin_ns)
            )
        return statements

    def lookup(
        self,
        conn: Connection,
        collection_id: int,
        type_id: int,
        key: str,
        ts: Timespan,
        as_of: int | None,
        describe: str,
    ) -> tuple[Validity, str] | None:
        """The one live range matching, with its dataset's RUN name (one query)."""
        params = {
            "collection_id": collection_id,
            "type_id": type_id,
            "key": key,
            "begin": ts.db_begin,
            "end": ts.db_end,
        }
        if as_of is not None:
            params["as_of"] = as_of
        stmt = self._lookup_statements[as_of is not None]
        rows = list(conn.execute(stmt, params).mappings())
        if len(rows) > 1:
            ranges = "; ".join(str(self._row_validity(r).timespan) for r in rows)
            raise CalibrationAmbiguityError(
                f"{describe}: the time range {ts} spans {len(rows)} validity ranges ({ranges}); "
                "ask for a single time or a narrower range"
            )
        return (self._row_validity(rows[0]), str(rows[0]["run_name"])) if rows else None

    def bulk_lookup(
        self,
        conn: Connection,
        collection_ids: Sequence[int],
        type_id: int,
        queries: Sequence[tuple[str, Timespan]],
        as_of: int | None,
    ) -> list[list[Validity]]:
        """All live matches for many (data ID key, timespan) queries in one joined query.

        Nothing is written to the repository's tables, so it works in a read-only session:
        on PostgreSQL the queries are bound as four arrays and read back with ``unnest`` (a
        temporary table is a CREATE, refused in a READ ONLY transaction); SQLite puts them
        in a temporary table, which lives outside the database file (also when the file is
        opened read-only).
        """
        if not queries:
            return []  # (an empty executemany is deprecated in SQLAlchemy)
        rows = [
            {"idx": i, "data_id_key": k, "begin_ns": ts.db_begin, "end_ns": ts.db_end}
            for i, (k, ts) in enumerate(queries)
        ]
        if conn.dialect.name == "postgresql":
            arrays = {name: [r[name] for r in rows] for name in _QUERY_TYPES}
            return self._bulk_join(conn, _UNNESTED, arrays, collection_ids, type_id, as_of, rows)
        tmp = Table(
            f"calib_query_{uuid.uuid4().hex[:12]}",
            MetaData(),
            *(
                Column(name, type_, primary_key=name == "idx")
                for name, type_ in _QUERY_TYPES.items()
            ),
            prefixes=["TEMPORARY"],
        )
        tmp.create(conn)
        try:
            conn.execute(tmp.insert(), rows)
            return self._bulk_join(conn, tmp, {}, collection_ids, type_id, as_of, rows)
        finally:
            tmp.drop(conn)

    def _bulk_join(
        self,
        conn: Connection,
        q: Any,
        params: Mapping[str, Any],
        collection_ids: Sequence[int],
        type_id: int,
        as_of: int | None,
        rows: Sequence[Mapping[str, Any]],
    ) -> list[list[Validity]]:
        """The live ranges overlapping each query row of ``q`` (a table, or a table function
        of bound ``params``)."""
        c = self._v.c
        stmt = (
            select(q.c.idx, self._v)
            .join(
                self._v,
                and_(
                    c.data_id_key == q.c.data_id_key,
                    c.begin_ns < q.c.end_ns,
                    c.end_ns > q.c.begin_ns,
                ),
            )
            .where(
                c.collection_id.in_(collection_ids),
                c.dataset_type_id == type_id,
                self._live(as_of),
            )
        )
        out: list[list[Validity]] = [[] for _ in rows]
        for row in conn.execute(stmt, params).mappings():
            out[row["idx"]].append(self._row_validity(row))
        return out

    def live(
        self,
        conn: Connection,
        collection_id: int,
        type_id: int | None,
        as_of: int | None,
    ) -> list[Validity]:
        c = self._v.c
        stmt = select(self._v).where(c.collection_id == collection_id, self._live(as_of))
        if type_id is not None:
            stmt = stmt.where(c.dataset_type_id == type_id)
        rows = conn.execute(stmt.order_by(c.dataset_type_id, c.data_id_key, c.begin_ns))
        return [self._row_validity(r) for r in rows.mappings()]


# The columns of the bulk lookup's query rows.
_QUERY_TYPES: dict[str, Any] = {
    "idx": Integer(),
    "data_id_key": String(512),
    "begin_ns": BigInteger(),
    "end_ns": BigInteger(),
}

# PostgreSQL: the query rows as ``unnest`` of one bound array per column (four parameters
# however many rows).
_UNNESTED = (
    func.unnest(*(bindparam(name, type_=ARRAY(t)) for name, t in _QUERY_TYPES.items()))
    .table_valued(*(sqlalchemy.column(name, t) for name, t in _QUERY_TYPES.items()))
    .render_derived()
)
