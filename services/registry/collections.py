"""Collections: RUN, TAGGED, CALIBRATION and CHAINED, with daf_butler's semantics.

A RUN is a dataset's one home; TAGGED holds references; CALIBRATION holds references with
validity ranges; CHAINED is an ordered search path of other collections. Chain definitions are
kept forever (``superseded_at``) so a search path can be resolved "as of" a past moment;
``apply_chain_mode`` says how a chain's children change (redefine, extend, prepend, remove).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy
from sqlalchemy import Table, and_, bindparam, or_, select
from sqlalchemy.engine import Connection, RowMapping

from ..core.errors import (
    ChainCycleError,
    CollectionExistsError,
    CollectionFrozenError,
    CollectionTypeError,
    MissingCollectionError,
)
from ..core.timespan import ns_to_iso
from .clock import change_time

ChainMode = Literal["redefine", "extend", "prepend", "remove"]
"""How ``Registry.set_chain`` combines new children with a chain's current ones."""


class CollectionType(enum.Enum):
    RUN = "RUN"
    TAGGED = "TAGGED"
    CALIBRATION = "CALIBRATION"
    CHAINED = "CHAINED"

    @classmethod
    def parse(cls, text: str) -> CollectionType:
        try:
            return cls(text.upper())
        except ValueError:
            raise CollectionTypeError(
                f"unknown collection type {text!r}; use one of {', '.join(t.value for t in cls)}"
            ) from None


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    type: CollectionType
    doc: str | None
    frozen_at: int | None

    def check_writable(self, action: str) -> None:
        if self.frozen_at is not None:
            raise CollectionFrozenError(
                f"collection {self.name!r} is frozen since {ns_to_iso(self.frozen_at)} TAI: "
                f"cannot {action}; write into a new collection instead"
            )


class CollectionManager:
    def __init__(self, tables: Mapping[str, Table]) -> None:
        self._collection = tables["collection"]
        self._chain = tables["collection_chain"]
        # A collection's id and type never change, so reads may reuse them (see resolve).
        self._resolved: dict[str, Collection] = {}

    def _from_row(self, row: RowMapping) -> Collection:
        return Collection(
            id=int(row["id"]),
            name=str(row["name"]),
            type=CollectionType(row["type"]),
            doc=row["doc"],
            frozen_at=row["frozen_at"],
        )

    def find(self, conn: Connection, name: str) -> Collection | None:
        row = (
            conn.execute(select(self._collection).where(self._collection.c.name == name))
            .mappings()
            .first()
        )
        return None if row is None else self._from_row(row)

    def get(
        self, conn: Connection, name: str, *, expect: CollectionType | None = None
    ) -> Collection:
        found = self.find(conn, name)
        if found is None:
            raise MissingCollectionError(
                f"no collection {name!r}; `obsbus query-collections REPO` lists them"
            )
        if expect is not None and found.type is not expect:
            raise CollectionTypeError(
                f"collection {name!r} is {found.type.value}, not {expect.value}"
            )
        return found

    def forget(self) -> None:
        """Drop cached collections (called when a transaction rolls back)."""
        self._resolved.clear()

    def resolve(self, conn: Connection, name: str) -> Collection:
        """Like ``get`` for read paths: cached, so its ``frozen_at`` may be out of date."""
        found = self._resolved.get(name)
        if found is None:
            found = self._resolved[name] = self.get(conn, name)
        return found

    def register(
        self, conn: Connection, name: str, type_: CollectionType, doc: str | None = None
    ) -> tuple[Collection, bool]:
        """Create a collection; an existing one of the same type is returned unchanged."""
        existing = self.find(conn, name)
        if existing is not None:
            if existing.type is not type_:
                raise CollectionExistsError(
                    f"collection {name!r} already exists as {existing.type.value}, "
                    f"not {type_.value}"
                )
            return existing, False
        if not name or name.strip() != name:
            raise CollectionTypeError(f"invalid collection name {name!r}")
        try:
            with conn.begin_nested():  # a concurrent writer may create it first
                result = conn.execute(
                    self._collection.insert().values(
                        name=name, type=type_.value, doc=doc, created_at=change_time()
                    )
                )
        except sqlalchemy.exc.IntegrityError:
            if self.find(conn, name) is None:
                raise
            return self.register(conn, name, type_, doc)
        pk = result.inserted_primary_key
        assert pk is not None
        return Collection(int(pk[0]), name, type_, doc, None), True

    def all(self, conn: Connection) -> list[Collection]:
        rows = conn.execute(select(self._collection).order_by(self._collection.c.name))
        return [self._from_row(r) for r in rows.mappings()]

    def freeze(self, conn: Connection, name: str, by: str) -> Collection:
        collection = self.get(conn, name)
        if collection.frozen_at is not None:
            return collection
        at = change_time()
        conn.execute(
            self._collection.update()
            .where(self._collection.c.id == collection.id)
            .values(frozen_at=at, frozen_by=by)
        )
        return Collection(collection.id, name, collection.type, collection.doc, at)

    # --- chains -------------------------------------------------------------------------------

    @functools.cached_property
    def _children_statements(self) -> dict[bool, Any]:
        # Built once (now / as of a moment): every lookup through a chain runs one of these.
        c = self._chain.c
        as_of: Any = bindparam("as_of")
        statements = {}
        for with_as_of, rows in (
            (False, c.superseded_at.is_(None)),
            (
                True,
                and_(
                    c.defined_at <= as_of, or_(c.superseded_at.is_(None), c.superseded_at > as_of)
                ),
            ),
        ):
            statements[with_as_of] = (
                select(self._collection.c.name)
                .join(self._chain, c.child_id == self._collection.c.id)
                .where(c.parent_id == bindparam("parent_id"), rows)
                .order_by(c.position)
            )
        return statements

    def children(self, conn: Connection, parent: Collection, as_of: int | None = None) -> list[str]:
        params = {"parent_id": parent.id} | ({} if as_of is None else {"as_of": as_of})
        stmt = self._children_statements[as_of is not None]
        return [str(n) for n in conn.execute(stmt, params).scalars()]

    def set_chain(
        self, conn: Connection, parent_name: str, children: Sequence[str], by: str
    ) -> list[str]:
        """Redefine a CHAINED collection (the old definition is kept as history)."""
        parent = self.get(conn, parent_name, expect=CollectionType.CHAINED)
        parent.check_writable("change its chain")
        if len(set(children)) != len(children):
            dupes = sorted({c for c in children if children.count(c) > 1})
            raise CollectionTypeError(f"chain {parent_name!r} would list {dupes} twice")
        child_cols = [self.get(conn, name) for name in children]
        for child in child_cols:
            if parent_name in self._reachable(conn, child):
                raise ChainCycleError(
                    f"adding {child.name!r} to chain {parent_name!r} would make a cycle"
                )
        if self.children(conn, parent) == list(children):
            return list(children)
        at = change_time()
        conn.execute(
            self._chain.update()
            .where(self._chain.c.parent_id == parent.id, self._chain.c.superseded_at.is_(None))
            .values(superseded_at=at)
        )
        if child_cols:
            conn.execute(
                self._chain.insert(),
                [
                    {
                        "parent_id": parent.id,
                        "position": i,
                        "child_id": child.id,
                        "defined_at": at,
                        "command": by,
                    }
                    for i, child in enumerate(child_cols)
                ],
            )
        return list(children)

    def _reachable(self, conn: Connection, start: Collection) -> set[str]:
        """Every collection name reachable from ``start`` through current chains."""
        seen: set[str] = set()
        todo = [start]
        while todo:
            collection = todo.pop()
            if collection.name in seen:
                continue
            seen.add(collection.name)
            if collection.type is CollectionType.CHAINED:
                todo.extend(self.get(conn, n) for n in self.children(conn, collection))
        return seen

    def flatten(
        self, conn: Connection, names: Sequence[str], as_of: int | None = None
    ) -> list[str]:
        """Expand chains depth-first into the ordered list of non-chained collections."""
        out: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            collection = self.resolve(conn, name)
            if collection.type is CollectionType.CHAINED:
                if name in path:  # history could only hold a cycle if written outside obsbus
                    raise ChainCycleError(f"chain {name!r} contains itself")
                for child in self.children(conn, collection, as_of):
                    visit(child, (*path, name))
            elif name not in out:
                out.append(name)

        for name in names:
            visit(name, ())
        return out


def apply_chain_mode(current: list[str], children: list[str], mode: ChainMode) -> list[str]:
    """The children of a chain once ``children`` are applied to ``current`` by ``mode``."""
    if mode == "redefine":
        return children
    if mode == "prepend":
        return children + [c for c in current if c not in children]
    if mode == "extend":
        return [c for c in current if c not in children] + children
    if mode == "remove":
        return [c for c in current if c not in children]
    raise CollectionTypeError(
        f"unknown chain mode {mode!r}; use redefine, extend, prepend or remove"
    )
