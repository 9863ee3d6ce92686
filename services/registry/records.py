"""Dimension records: insert, sync, explicit update with an audit trail, and queries.

Records are static facts. ``sync`` makes re-registering identical facts a no-op and refuses a
differing one with every differing field named; changing a fact is ``update`` with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import Table, and_, select, tuple_
from sqlalchemy.engine import Connection, RowMapping

from ..core.dimensions import DimensionUniverse, Element
from ..core.errors import (
    DimensionRecordError,
    ExpressionError,
    RecordConflictError,
    RecordExistsError,
    RecordNotFoundError,
)
from ..core.timespan import Timespan
from ..core.where_parser import parse
from ..core.where_sql import to_sql
from .clock import change_time
from .schema import element_table_name

SyncResult = Literal["inserted", "unchanged"]
Record = dict[str, Any]


class DimensionRecords:
    def __init__(self, universe: DimensionUniverse, tables: Mapping[str, Table]) -> None:
        self.universe = universe
        self._tables = tables
        # How many updates were asked for (applied or not): a memory of what records hold
        # (known.py) made before a change is dropped when it sees this move.
        self.updates = 0

    def table(self, element: str) -> Table:
        self.universe[element]  # raises a clear error for unknown names
        return self._tables[element_table_name(element)]

    # --- conversion ---------------------------------------------------------------------------

    @staticmethod
    def _to_row(element: Element, record: Mapping[str, Any]) -> dict[str, Any]:
        row = {k: v for k, v in record.items() if k != "timespan"}
        if element.has_timespan:
            ts: Timespan | None = record.get("timespan")
            row["timespan_begin"] = None if ts is None else ts.db_begin
            row["timespan_end"] = None if ts is None else ts.db_end
        return row

    @staticmethod
    def _from_row(element: Element, row: RowMapping) -> Record:
        record = {k: v for k, v in row.items() if not k.startswith("timespan_")}
        if element.has_timespan:
            b, e = row["timespan_begin"], row["timespan_end"]
            record["timespan"] = None if b is None else Timespan.from_db(b, e)
        return record

    def _key_clause(self, element: Element, record: Mapping[str, Any]) -> Any:
        table = self.table(element.name)
        return and_(*(table.c[k] == record[k] for k in element.key_columns))

    # --- reads --------------------------------------------------------------------------------

    def fetch(self, conn: Connection, element_name: str, key: Mapping[str, Any]) -> Record | None:
        element = self.universe[element_name]
        table = self.table(element_name)
        missing = [k for k in element.key_columns if key.get(k) is None]
        if missing:
            raise DimensionRecordError(f"{element_name} key lacks {', '.join(missing)}")
        row = conn.execute(select(table).where(self._key_clause(element, key))).mappings().first()
        return None if row is None else self._from_row(element, row)

    def fetch_many(
        self, conn: Connection, element_name: str, keys: Sequence[Mapping[str, Any]]
    ) -> dict[tuple[Any, ...], Record]:
        """Records for many keys in one round trip, keyed by their key-column tuple."""
        element = self.universe[element_name]
        table = self.table(element_name)
        cols = [table.c[k] for k in element.key_columns]
        wanted = list({tuple(k[c] for c in element.key_columns) for k in keys})
        out: dict[tuple[Any, ...], Record] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = conn.execute(select(table).where(tuple_(*cols).in_(chunk))).mappings()
            for row in rows:
                out[tuple(row[c] for c in element.key_columns)] = self._from_row(element, row)
        return out

    def query(
        self,
        conn: Connection,
        element_name: str,
        expr: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Record]:
        """Records of an element in key order (so ``limit``/``offset`` pages are stable)."""
        element = self.universe[element_name]
        table = self.table(element_name)
        stmt = select(table)
        if expr:
            stmt = stmt.where(to_sql(parse(expr), self._resolver(element, table)))
        stmt = stmt.order_by(*(table.c[k] for k in element.key_columns))
        if limit is not None or offset:
            stmt = stmt.limit(limit).offset(offset)
        return [self._from_row(element, r) for r in conn.execute(stmt).mappings()]

    def _resolver(self, element: Element, table: Table) -> Any:
        def resolve(name: str) -> Any:
            field = name.removeprefix(f"{element.name}.")
            if field == element.name and element.key is not None:
                field = element.key.name  # `exposure = 5` in an exposure query means its id
            if field in table.c and not field.startswith("timespan_"):
                return table.c[field]
            raise ExpressionError(
                f"{element.name} has no field {name!r}; fields: "
                + ", ".join(c for c in table.c.keys() if not c.startswith("timespan_"))
            )

        return resolve

    # --- writes -------------------------------------------------------------------------------

    def insert(
        self, conn: Connection, element_name: str, records: Iterable[Mapping[str, Any]]
    ) -> int:
        element = self.universe[element_name]
        checked = [self.universe.check_record(element_name, r) for r in records]
        if not checked:
            return 0
        existing = self.fetch_many(conn, element_name, checked)
        if existing:
            first = next(iter(existing.values()))
            key = ", ".join(f"{k}={first[k]!r}" for k in element.key_columns)
            raise RecordExistsError(
                f"{element_name} record {key} already exists "
                f"({len(existing)} of {len(checked)} given); use sync to accept identical records"
            )
        conn.execute(self.table(element_name).insert(), [self._to_row(element, r) for r in checked])
        return len(checked)

    def sync(self, conn: Connection, element_name: str, record: Mapping[str, Any]) -> SyncResult:
        return self.sync_many(conn, element_name, [record])[0]

    def sync_many(
        self, conn: Connection, element_name: str, records: Sequence[Mapping[str, Any]]
    ) -> list[SyncResult]:
        """Insert new records; identical ones are unchanged; any conflict writes nothing."""
        element = self.universe[element_name]
        checked = [self.universe.check_record(element_name, r) for r in records]
        existing = self.fetch_many(conn, element_name, checked)
        results: list[SyncResult] = []
        new: dict[tuple[Any, ...], Record] = {}
        for record in checked:
            key = tuple(record[c] for c in element.key_columns)
            old = existing.get(key) or new.get(key)
            if old is None:
                new[key] = record
                results.append("inserted")
                continue
            diffs = _diff(element, old, record)
            if diffs:
                raise RecordConflictError(
                    element_name, {c: record[c] for c in element.key_columns}, diffs
                )
            results.append("unchanged")
        if new:
            conn.execute(
                self.table(element_name).insert(), [self._to_row(element, r) for r in new.values()]
            )
        return results

    def update(
        self,
        conn: Connection,
        element_name: str,
        record: Mapping[str, Any],
        *,
        reason: str,
        by: str,
    ) -> dict[str, tuple[Any, Any]]:
        """Change a registered record; every changed field is written to the audit trail."""
        self.updates += 1
        if not reason.strip():
            raise DimensionRecordError(f"updating a {element_name} record needs a reason")
        element = self.universe[element_name]
        checked = self.universe.check_record(element_name, record)
        old = self.fetch(conn, element_name, checked)
        if old is None:
            key = ", ".join(f"{k}={checked[k]!r}" for k in element.key_columns)
            raise RecordNotFoundError(f"no {element_name} record {key} to update")
        diffs = _diff(element, old, checked)
        if not diffs:
            return {}
        row = self._to_row(element, checked)
        conn.execute(
            self.table(element_name).update().where(self._key_clause(element, checked)).values(row)
        )
        key_json = json.dumps({k: checked[k] for k in element.key_columns}, sort_keys=True)
        at = change_time()
        conn.execute(
            self._tables["record_audit"].insert(),
            [
                {
                    "element": element_name,
                    "record_key": key_json,
                    "field": field,
                    "old_value": _json_value(o),
                    "new_value": _json_value(n),
                    "reason": reason,
                    "changed_at": at,
                    "changed_by": by,
                }
                for field, (o, n) in diffs.items()
            ],
        )
        return diffs

    def audit(self, conn: Connection, element_name: str | None = None) -> list[Record]:
        table = self._tables["record_audit"]
        stmt = select(table).order_by(table.c.id)
        if element_name:
            stmt = stmt.where(table.c.element == element_name)
        return [dict(r) for r in conn.execute(stmt).mappings()]


def flat_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A dimension record as a flat object: its timespan as ``begin``/``end`` (ISO TAI, None
    where unbounded or absent), every other field as it is."""
    row = {k: v for k, v in record.items() if k != "timespan"}
    if "timespan" in record:
        ts: Timespan | None = record["timespan"]
        row["begin"], row["end"] = ts.to_iso() if ts is not None else (None, None)
    return row


def _diff(element: Element, old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    return {f: (old.get(f), new.get(f)) for f in element.value_columns if old.get(f) != new.get(f)}


def _json_value(value: Any) -> str:
    if isinstance(value, Timespan):
        return json.dumps(value.to_json())
    return json.dumps(value)
