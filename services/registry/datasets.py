"""Dataset types, datasets (refs), their RUN/TAGGED membership and datastore records."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Table, select, tuple_
from sqlalchemy.engine import Connection, RowMapping

from ..core.dimensions import DataId, DimensionUniverse
from ..core.errors import (
    DatasetConflictError,
    DatasetNotFoundError,
    DatasetTypeConflictError,
    DatasetTypeError,
    MissingDatasetTypeError,
)
from ..datastore.stored import StoredFile
from .clock import change_time, dataset_time

# Namespace of obsbus's deterministic dataset ids (uuid5); never change it.
DATASET_ID_NAMESPACE = uuid.UUID("5e1d9c1a-8f0b-4c4e-9a8e-0b5b2b7f0a11")


class IdGenerationMode(enum.Enum):
    """How a new dataset gets its id."""

    UNIQUE = "unique"  # random: each put is a new dataset
    DATAID_TYPE_RUN = "dataid_type_run"  # uuid5 of (type, data ID, run): re-ingest is a no-op


@dataclass(frozen=True)
class DatasetType:
    name: str
    dimensions: tuple[str, ...]
    storage_class: str
    is_calibration: bool = False

    @staticmethod
    def split_component(name: str) -> tuple[str, str | None]:
        parent, _, component = name.partition(".")
        return parent, component or None


@dataclass(frozen=True)
class DatasetRef:
    id: uuid.UUID
    dataset_type: DatasetType
    data_id: DataId
    run: str


def make_dataset_id(
    dataset_type: str, data_id: DataId, run: str, mode: IdGenerationMode
) -> uuid.UUID:
    if mode is IdGenerationMode.UNIQUE:
        return uuid.uuid4()
    return uuid.uuid5(DATASET_ID_NAMESPACE, f"{dataset_type}|{data_id.key}|{run}")


InsertOutcome = Literal["inserted", "already-present"]


class DatasetManager:
    def __init__(self, universe: DimensionUniverse, tables: Mapping[str, Table]) -> None:
        self.universe = universe
        self._types = tables["dataset_type"]
        self._datasets = tables["dataset"]
        self._tags = tables["dataset_tag"]
        self._records = tables["datastore_record"]
        self._collections = tables["collection"]
        self._no_data_id = {d.name: None for d in universe.dimensions}
        # Dataset types never change once registered, so caching them is always correct.
        self._type_cache: dict[str, tuple[int, DatasetType]] = {}

    def forget(self) -> None:
        """Drop cached dataset types (called when a transaction rolls back)."""
        self._type_cache.clear()

    # --- dataset types ------------------------------------------------------------------------

    def register_type(self, conn: Connection, dataset_type: DatasetType) -> bool:
        """Define a dataset type; an identical redefinition is a no-op, a different one an error."""
        name = dataset_type.name
        if not name or not name.replace("_", "").isalnum() or not name[0].isalpha():
            raise DatasetTypeError(
                f"invalid dataset type name {name!r}: use letters, digits and '_', "
                "starting with a letter"
            )
        normalized = DatasetType(
            name,
            self.universe.closure(dataset_type.dimensions),
            dataset_type.storage_class,
            dataset_type.is_calibration,
        )
        existing = self._find_type(conn, name)
        if existing is not None:
            old = existing[1]
            if old != normalized:
                diffs = [
                    f"{f}: {getattr(old, f)!r} -> {getattr(normalized, f)!r}"
                    for f in ("dimensions", "storage_class", "is_calibration")
                    if getattr(old, f) != getattr(normalized, f)
                ]
                raise DatasetTypeConflictError(
                    f"dataset type {name!r} is already defined differently ({'; '.join(diffs)}); "
                    "choose another name"
                )
            return False
        conn.execute(
            self._types.insert().values(
                name=name,
                dimensions=" ".join(normalized.dimensions),
                storage_class=normalized.storage_class,
                is_calibration=normalized.is_calibration,
            )
        )
        return True

    def _find_type(self, conn: Connection, name: str) -> tuple[int, DatasetType] | None:
        if name in self._type_cache:
            return self._type_cache[name]
        row = conn.execute(select(self._types).where(self._types.c.name == name)).mappings().first()
        if row is None:
            return None
        found = (int(row["id"]), self._type_from_row(row))
        self._type_cache[name] = found
        return found

    @staticmethod
    def _type_from_row(row: RowMapping) -> DatasetType:
        return DatasetType(
            row["name"],
            tuple(row["dimensions"].split()),
            row["storage_class"],
            bool(row["is_calibration"]),
        )

    def get_type(self, conn: Connection, name: str) -> DatasetType:
        return self.type_with_id(conn, name)[1]

    def type_with_id(self, conn: Connection, name: str) -> tuple[int, DatasetType]:
        found = self._find_type(conn, name)
        if found is None:
            raise MissingDatasetTypeError(
                f"no dataset type {name!r}; register it with `obsbus register-dataset-type`"
            )
        return found

    def list_types(self, conn: Connection) -> list[DatasetType]:
        rows = conn.execute(select(self._types).order_by(self._types.c.name)).mappings()
        return [self._type_from_row(r) for r in rows]

    # --- datasets -----------------------------------------------------------------------------

    def insert(
        self, conn: Connection, run_id: int, refs: Sequence[DatasetRef]
    ) -> list[InsertOutcome]:
        """Add datasets to their RUN; a dataset already present with the same id is a no-op."""
        if not refs:
            return []
        existing_by_id = {
            row["id"]: row
            for row in conn.execute(
                select(
                    self._datasets.c.id,
                    self._datasets.c.dataset_type_id,
                    self._datasets.c.run_id,
                    self._datasets.c.data_id_key,
                ).where(self._datasets.c.id.in_([r.id for r in refs]))
            ).mappings()
        }
        type_ids = {
            r.dataset_type.name: self.type_with_id(conn, r.dataset_type.name)[0] for r in refs
        }
        keys = [(type_ids[r.dataset_type.name], r.data_id.key) for r in refs]
        existing_by_key = {
            (row["dataset_type_id"], row["data_id_key"]): row["id"]
            for row in conn.execute(
                select(
                    self._datasets.c.id,
                    self._datasets.c.dataset_type_id,
                    self._datasets.c.data_id_key,
                )
                .where(self._datasets.c.run_id == run_id)
                .where(
                    tuple_(self._datasets.c.dataset_type_id, self._datasets.c.data_id_key).in_(keys)
                )
            ).mappings()
        }
        outcomes: list[InsertOutcome] = []
        rows: list[dict[str, Any]] = []
        at = change_time()
        for ref, key in zip(refs, keys, strict=True):
            old = existing_by_id.get(ref.id)
            if old is not None:
                if (old["dataset_type_id"], old["run_id"], old["data_id_key"]) != (
                    *key[:1],
                    run_id,
                    key[1],
                ):
                    raise DatasetConflictError(
                        f"dataset id {ref.id} already exists for a different dataset type, "
                        "data ID or run"
                    )
                outcomes.append("already-present")
                continue
            if key in existing_by_key:
                raise DatasetConflictError(
                    f"run {ref.run!r} already has a {ref.dataset_type.name} for {ref.data_id} "
                    f"(dataset {existing_by_key[key]}); use another run"
                )
            existing_by_key[key] = ref.id
            rows.append(
                {
                    "id": ref.id,
                    "dataset_type_id": key[0],
                    "run_id": run_id,
                    "data_id_key": ref.data_id.key,
                    "ingest_date": dataset_time(ref.id, at),
                    # Every row names every dimension column: executemany takes its columns
                    # from the first row, so a missing key would silently drop values.
                    **self._no_data_id,
                    **dict(ref.data_id),
                }
            )
            outcomes.append("inserted")
        if rows:
            conn.execute(self._datasets.insert(), rows)
        return outcomes

    def _ref_query(self) -> Any:
        d, c = self._datasets, self._collections
        return select(d, c.c.name.label("run_name")).join(c, c.c.id == d.c.run_id)

    def _ref_from_row(self, conn: Connection, row: RowMapping) -> DatasetRef:
        dataset_type = self.get_type(conn, self._type_name(conn, row["dataset_type_id"]))
        data_id = DataId({d: row[d] for d in dataset_type.dimensions})
        return DatasetRef(row["id"], dataset_type, data_id, row["run_name"])

    def _type_name(self, conn: Connection, type_id: int) -> str:
        for name, (tid, _) in self._type_cache.items():
            if tid == type_id:
                return name
        name = conn.execute(
            select(self._types.c.name).where(self._types.c.id == type_id)
        ).scalar_one()
        return str(name)

    def get_refs(self, conn: Connection, ids: Iterable[uuid.UUID]) -> list[DatasetRef]:
        wanted = list(ids)
        rows = conn.execute(self._ref_query().where(self._datasets.c.id.in_(wanted))).mappings()
        found = {row["id"]: self._ref_from_row(conn, row) for row in rows}
        missing = [str(i) for i in wanted if i not in found]
        if missing:
            raise DatasetNotFoundError(f"no dataset with id {', '.join(missing[:5])}")
        return [found[i] for i in wanted]

    def find_in_run(
        self,
        conn: Connection,
        type_id: int,
        data_id: DataId,
        run_id: int,
        as_of: int | None = None,
    ) -> DatasetRef | None:
        """The dataset of a type and data ID in a RUN (as of a moment: if it was there then)."""
        d = self._datasets.c
        stmt = self._ref_query().where(
            d.dataset_type_id == type_id, d.run_id == run_id, d.data_id_key == data_id.key
        )
        if as_of is not None:
            stmt = stmt.where(d.ingest_date <= as_of)
        row = conn.execute(stmt).mappings().first()
        return None if row is None else self._ref_from_row(conn, row)

    def find_in_tagged(
        self, conn: Connection, type_id: int, data_id: DataId, collection_id: int
    ) -> DatasetRef | None:
        t = self._tags.c
        row = (
            conn.execute(
                self._ref_query()
                .join(self._tags, t.dataset_id == self._datasets.c.id)
                .where(
                    t.collection_id == collection_id,
                    t.dataset_type_id == type_id,
                    t.data_id_key == data_id.key,
                )
            )
            .mappings()
            .first()
        )
        return None if row is None else self._ref_from_row(conn, row)

    def query(
        self,
        conn: Connection,
        type_id: int,
        run_ids: Sequence[int],
        tagged_ids: Sequence[int],
        condition: Any = None,
    ) -> list[DatasetRef]:
        """Datasets of one type in the given RUN and TAGGED collections (not deduplicated)."""
        d = self._datasets
        refs: list[DatasetRef] = []
        if run_ids:
            stmt = self._ref_query().where(d.c.dataset_type_id == type_id, d.c.run_id.in_(run_ids))
            if condition is not None:
                stmt = stmt.where(condition)
            refs.extend(self._ref_from_row(conn, r) for r in conn.execute(stmt).mappings())
        if tagged_ids:
            t = self._tags.c
            stmt = (
                self._ref_query()
                .join(self._tags, t.dataset_id == d.c.id)
                .where(t.collection_id.in_(tagged_ids), t.dataset_type_id == type_id)
            )
            if condition is not None:
                stmt = stmt.where(condition)
            refs.extend(self._ref_from_row(conn, r) for r in conn.execute(stmt).mappings())
        return refs

    @property
    def dataset_table(self) -> Table:
        return self._datasets

    def tag(self, conn: Connection, collection_id: int, refs: Sequence[DatasetRef]) -> None:
        for ref in refs:
            type_id = self.type_with_id(conn, ref.dataset_type.name)[0]
            t = self._tags.c
            row = conn.execute(
                select(t.dataset_id).where(
                    t.collection_id == collection_id,
                    t.dataset_type_id == type_id,
                    t.data_id_key == ref.data_id.key,
                )
            ).first()
            if row is not None:
                if row[0] == ref.id:
                    continue
                raise DatasetConflictError(
                    f"the tagged collection already holds another {ref.dataset_type.name} "
                    f"for {ref.data_id}; disassociate it first"
                )
            conn.execute(
                self._tags.insert().values(
                    collection_id=collection_id,
                    dataset_id=ref.id,
                    dataset_type_id=type_id,
                    data_id_key=ref.data_id.key,
                )
            )

    def untag(self, conn: Connection, collection_id: int, refs: Sequence[DatasetRef]) -> None:
        t = self._tags.c
        conn.execute(
            self._tags.delete().where(
                t.collection_id == collection_id, t.dataset_id.in_([r.id for r in refs])
            )
        )

    # --- datastore records --------------------------------------------------------------------

    def store_files(
        self, conn: Connection, files: Sequence[StoredFile], datasets_new: bool = False
    ) -> None:
        """Record the files of datasets; a dataset that has its file already keeps it.

        With ``datasets_new`` (their datasets were inserted in this transaction) there is
        nothing to look for: a file record references its dataset (a foreign key), so none
        can exist yet (and the insert would fail loudly if one did, on the primary key).
        """
        if not files:
            return
        have: set[uuid.UUID] = set()
        if not datasets_new:
            have = set(
                conn.execute(
                    select(self._records.c.dataset_id).where(
                        self._records.c.dataset_id.in_([f.dataset_id for f in files])
                    )
                ).scalars()
            )
        rows = [
            {
                "dataset_id": f.dataset_id,
                "path": f.path,
                "formatter": f.formatter,
                "storage_class": f.storage_class,
                "file_size": f.file_size,
                "checksum": f.checksum,
                "locator": f.locator,
            }
            for f in files
            if f.dataset_id not in have
        ]
        if rows:
            conn.execute(self._records.insert(), rows)

    def stored_file(self, conn: Connection, dataset_id: uuid.UUID) -> StoredFile:
        row = (
            conn.execute(select(self._records).where(self._records.c.dataset_id == dataset_id))
            .mappings()
            .first()
        )
        if row is None:
            raise DatasetNotFoundError(f"dataset {dataset_id} has no file in the datastore")
        return StoredFile(
            dataset_id=row["dataset_id"],
            path=row["path"],
            formatter=row["formatter"],
            storage_class=row["storage_class"],
            file_size=row["file_size"],
            checksum=row["checksum"],
            locator=row["locator"],
        )
