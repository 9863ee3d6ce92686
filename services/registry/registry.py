"""The Registry: one object in front of dimension records, datasets, collections and calibs.

Every public method runs in a transaction (joining the caller's ``transaction()`` if one is
open), so a group of calls can be made atomic: ``with registry.transaction(): ...``. Most
delegate to a manager of one kind of row (``records.py``, ``collections.py``,
``datasets.py``, ``calibs.py``, ``installations.py``); what spans several lives in its own
module: searching collections for datasets (``search.py``) and expanding data IDs from
their records (``data_ids.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from ..core.dimensions import DimensionUniverse, default_universe
from ..core.errors import NotACalibrationError
from ..core.timespan import Timespan
from ..datastore.stored import StoredFile
from . import versioning
from .calibs import CalibrationManager, Validity
from .collections import (
    ChainMode,
    Collection,
    CollectionManager,
    CollectionType,
    apply_chain_mode,
)
from .data_ids import expand_data_id, with_exposures
from .database import Database, create_engine
from .datasets import (
    DatasetManager,
    DatasetRef,
    DatasetType,
    IdGenerationMode,
    InsertOutcome,
    make_dataset_id,
)
from .installations import InstallationManager, InstallOutcome
from .known import KnownRecords, check_data_ids_registered
from .records import DimensionRecords, Record, SyncResult
from .schema import build_metadata
from .search import CollectionSearch


@dataclass(frozen=True)
class CalibrationMatch:
    """A calibration found by a lookup, with where and for what range it was found."""

    ref: DatasetRef
    collection: str
    timespan: Timespan | None  # None when found in a RUN or TAGGED collection


class Registry:
    def __init__(self, db: Database, universe: DimensionUniverse, actor: str) -> None:
        self.db = db
        self.universe = universe
        self.actor = actor  # who is writing: stamped on history rows
        tables = build_metadata(universe).tables
        self.records = DimensionRecords(universe, tables)
        self.collections = CollectionManager(tables)
        self.datasets = DatasetManager(universe, tables)
        self.calibs = CalibrationManager(tables)
        self.installations = InstallationManager(self.records)
        self._search = CollectionSearch(
            universe, self.records, self.collections, self.datasets, self.calibs
        )
        db.count_writes = True  # the schema is at head (create, open): it has the generation
        db.on_rollback(self.datasets.forget)
        db.on_rollback(self.collections.forget)

    @classmethod
    def create(cls, url: str, namespace: str | None = None, actor: str = "obsbus") -> Registry:
        engine = create_engine(url, namespace)
        db = Database(engine)
        try:
            with db.transaction() as conn:
                if namespace and db.dialect == "postgresql":
                    conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{namespace}"')
                versioning.upgrade(conn)
        except BaseException:
            db.dispose()  # no pooled connection is left for the garbage collector to close
            raise
        return cls(db, default_universe(), actor)

    @classmethod
    def open(
        cls,
        url: str,
        namespace: str | None = None,
        actor: str = "obsbus",
        *,
        read_only: bool = False,
    ) -> Registry:
        """Open an existing registry; ``read_only``: the database refuses every write made
        through it (see ``database.create_engine``)."""
        db = Database(create_engine(url, namespace, read_only=read_only))
        try:
            with db.transaction(write=False) as conn:
                versioning.check(conn, f"registry {url}" + (f" ({namespace})" if namespace else ""))
        except BaseException:
            db.dispose()  # a refused repository leaves no pooled connection open
            raise
        return cls(db, default_universe(), actor)

    def close(self) -> None:
        self.db.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.db.transaction() as conn:
            yield conn

    def _read(self) -> Any:
        return self.db.transaction(write=False)

    # --- dimension records ----------------------------------------------------------------------

    def insert_dimension_records(self, element: str, records: Sequence[Mapping[str, Any]]) -> int:
        with self.transaction() as conn:
            return self.records.insert(conn, element, records)

    def sync_dimension_records(
        self, element: str, records: Sequence[Mapping[str, Any]]
    ) -> list[SyncResult]:
        with self.transaction() as conn:
            return self.records.sync_many(conn, element, records)

    def sync_dimension_record(self, element: str, record: Mapping[str, Any]) -> SyncResult:
        return self.sync_dimension_records(element, [record])[0]

    def update_dimension_record(
        self, element: str, record: Mapping[str, Any], *, reason: str
    ) -> dict[str, tuple[Any, Any]]:
        with self.transaction() as conn:
            return self.records.update(conn, element, record, reason=reason, by=self.actor)

    def fetch_dimension_record(self, element: str, key: Mapping[str, Any]) -> Record | None:
        with self._read() as conn:
            return self.records.fetch(conn, element, key)

    def query_dimension_records(
        self, element: str, expr: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[Record]:
        """Records of ``element`` matching ``expr``, in key order; ``limit``/``offset``: a page."""
        with self._read() as conn:
            return self.records.query(conn, element, expr, limit=limit, offset=offset)

    def record_audit(self, element: str | None = None) -> list[Record]:
        with self._read() as conn:
            return self.records.audit(conn, element)

    def expand_data_id(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Fill in the dimensions implied by the given ones (e.g. an exposure's filter and band)."""
        with self._read() as conn:
            return expand_data_id(self.records, conn, values)

    # --- detector installations -----------------------------------------------------------------

    def record_installation(
        self, instrument: str, detector: int, serial: str, since_ns: int
    ) -> InstallOutcome:
        """Note that ``serial`` sits in slot ``detector`` from ``since_ns`` on (see
        installations.py for what is returned)."""
        with self.transaction() as conn:
            return self.installations.record(conn, instrument, detector, serial, since_ns)

    def installed_detectors(
        self, instrument: str, detectors: Sequence[int] | None, at_ns: int
    ) -> dict[int, str]:
        """Serial of the device in each slot (None: every slot) at moment ``at_ns`` (slots
        with none are absent)."""
        with self._read() as conn:
            return self.installations.installed(conn, instrument, detectors, at_ns)

    def installed_detector(self, instrument: str, detector: int, at_ns: int) -> str | None:
        """Serial of the device in slot ``detector`` at moment ``at_ns``."""
        return self.installed_detectors(instrument, [detector], at_ns).get(detector)

    # --- dataset types --------------------------------------------------------------------------

    def register_dataset_type(self, dataset_type: DatasetType) -> bool:
        with self.transaction() as conn:
            return self.datasets.register_type(conn, dataset_type)

    def get_dataset_type(self, name: str) -> DatasetType:
        with self._read() as conn:
            return self.datasets.get_type(conn, name)

    def query_dataset_types(self) -> list[DatasetType]:
        with self._read() as conn:
            return self.datasets.list_types(conn)

    # --- collections ----------------------------------------------------------------------------

    def register_collection(self, name: str, type_: CollectionType, doc: str | None = None) -> bool:
        with self.transaction() as conn:
            return self.collections.register(conn, name, type_, doc)[1]

    def register_run(self, name: str, doc: str | None = None) -> bool:
        return self.register_collection(name, CollectionType.RUN, doc)

    def get_collection(self, name: str) -> Collection:
        with self._read() as conn:
            return self.collections.get(conn, name)

    def query_collections(self) -> list[Collection]:
        with self._read() as conn:
            return self.collections.all(conn)

    def get_chain(self, parent: str, as_of: int | None = None) -> list[str]:
        with self._read() as conn:
            collection = self.collections.get(conn, parent, expect=CollectionType.CHAINED)
            return self.collections.children(conn, collection, as_of)

    def set_chain(
        self, parent: str, children: Sequence[str], mode: ChainMode = "redefine"
    ) -> list[str]:
        with self.transaction() as conn:
            self.collections.register(conn, parent, CollectionType.CHAINED)
            current = self.collections.children(conn, self.collections.get(conn, parent), None)
            new = apply_chain_mode(current, list(children), mode)
            return self.collections.set_chain(conn, parent, new, self.actor)

    def freeze_collection(self, name: str) -> Collection:
        with self.transaction() as conn:
            return self.collections.freeze(conn, name, self.actor)

    def resolve_collections(self, names: Sequence[str], as_of: int | None = None) -> list[str]:
        with self._read() as conn:
            return self.collections.flatten(conn, names, as_of)

    # --- datasets -------------------------------------------------------------------------------

    def make_ref(
        self,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any],
        run: str,
        mode: IdGenerationMode = IdGenerationMode.UNIQUE,
    ) -> DatasetRef:
        dt = self.get_dataset_type(dataset_type) if isinstance(dataset_type, str) else dataset_type
        normalized = self.universe.data_id(dt.dimensions, data_id)
        return DatasetRef(make_dataset_id(dt.name, normalized, run, mode), dt, normalized, run)

    def insert_datasets(
        self, refs: Sequence[DatasetRef], known: KnownRecords | None = None
    ) -> list[InsertOutcome]:
        """Add datasets to their runs (created if needed); repeats of the same id are no-ops.

        Every data ID value must have its record; ``known``: records known to exist (not
        looked up again; see known.py)."""
        outcomes: list[InsertOutcome] = []
        with self.transaction() as conn:
            by_run: dict[str, list[int]] = {}
            for i, ref in enumerate(refs):
                by_run.setdefault(ref.run, []).append(i)
            results: dict[int, InsertOutcome] = {}
            check_data_ids_registered(self.records, conn, refs, known)
            for run, idxs in by_run.items():
                run_col, _ = self.collections.register(conn, run, CollectionType.RUN)
                run_col.check_writable("add datasets")
                group = [refs[i] for i in idxs]
                for i, outcome in zip(
                    idxs, self.datasets.insert(conn, run_col.id, group), strict=True
                ):
                    results[i] = outcome
            outcomes = [results[i] for i in range(len(refs))]
        return outcomes

    def get_dataset(self, dataset_id: uuid.UUID) -> DatasetRef:
        with self._read() as conn:
            return self.datasets.get_refs(conn, [dataset_id])[0]

    def store_files(self, files: Sequence[StoredFile], *, datasets_new: bool = False) -> None:
        """``datasets_new``: every file's dataset was inserted in this transaction."""
        with self.transaction() as conn:
            self.datasets.store_files(conn, files, datasets_new)

    def stored_file(self, dataset_id: uuid.UUID) -> StoredFile:
        with self._read() as conn:
            return self.datasets.stored_file(conn, dataset_id)

    def associate(self, collection: str, refs: Sequence[DatasetRef]) -> None:
        with self.transaction() as conn:
            tagged = self.collections.get(conn, collection, expect=CollectionType.TAGGED)
            tagged.check_writable("associate datasets")
            self.datasets.tag(conn, tagged.id, refs)

    def disassociate(self, collection: str, refs: Sequence[DatasetRef]) -> None:
        with self.transaction() as conn:
            tagged = self.collections.get(conn, collection, expect=CollectionType.TAGGED)
            tagged.check_writable("disassociate datasets")
            self.datasets.untag(conn, tagged.id, refs)

    def find_dataset(
        self,
        dataset_type: str,
        data_id: Mapping[str, Any],
        collections: Sequence[str],
        timespan: Timespan | None = None,
        as_of: int | None = None,
    ) -> CalibrationMatch | None:
        """The first match along the collection search path (CALIBRATION needs a timespan)."""
        with self._read() as conn:
            found = self._search.find_first(
                conn, dataset_type, data_id, collections, timespan, as_of
            )
        return None if found is None else CalibrationMatch(*found)

    def query_datasets(
        self,
        dataset_type: str,
        collections: Sequence[str],
        expr: str | None = None,
        find_first: bool = False,
    ) -> list[tuple[DatasetRef, str]]:
        """Datasets of a type in the collections (each with the collection it was found in)."""
        with self._read() as conn:
            return self._search.query(conn, dataset_type, collections, expr, find_first)

    # --- calibrations ---------------------------------------------------------------------------

    def certify(self, collection: str, refs: Sequence[DatasetRef], timespan: Timespan) -> int:
        with self.transaction() as conn:
            target = self.collections.get(conn, collection, expect=CollectionType.CALIBRATION)
            target.check_writable("certify into it")
            by_type: dict[str, list[Validity]] = {}
            for ref in refs:
                type_id, dt = self.datasets.type_with_id(conn, ref.dataset_type.name)
                if not dt.is_calibration:
                    raise NotACalibrationError(
                        f"dataset type {dt.name!r} is not a calibration type: only datasets of "
                        "types registered with --is-calibration can be certified"
                    )
                by_type.setdefault(dt.name, []).append(
                    Validity(target.id, type_id, ref.data_id.key, ref.id, timespan)
                )
            self.datasets.get_refs(conn, [r.id for r in refs])  # all must exist
            return sum(
                self.calibs.certify(conn, collection, name, entries, self.actor)
                for name, entries in by_type.items()
            )

    def decertify(
        self,
        collection: str,
        dataset_type: str,
        timespan: Timespan,
        data_ids: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        with self.transaction() as conn:
            target = self.collections.get(conn, collection, expect=CollectionType.CALIBRATION)
            target.check_writable("decertify from it")
            type_id, dt = self.datasets.type_with_id(conn, dataset_type)
            keys = None
            if data_ids is not None:
                keys = [self.universe.data_id(dt.dimensions, d).key for d in data_ids]
            return self.calibs.decertify(conn, target.id, type_id, timespan, keys, self.actor)

    def find_calibration(
        self,
        dataset_type: str,
        data_id: Mapping[str, Any],
        collections: Sequence[str],
        timespan: Timespan,
        as_of: int | None = None,
    ) -> CalibrationMatch | None:
        return self.find_dataset(dataset_type, data_id, collections, timespan, as_of)

    def with_exposures(
        self, data_ids: Sequence[Mapping[str, Any]]
    ) -> list[tuple[dict[str, Any], Timespan]]:
        """Expand data IDs that name an exposure with its implied values, plus its timespan.

        Two queries however many data IDs: one for the exposures, one for their filters.
        """
        return with_exposures(self.db, self.records, data_ids)

    def find_calibrations_bulk(
        self,
        dataset_type: str,
        collections: Sequence[str],
        queries: Sequence[tuple[Mapping[str, Any], Timespan]],
        as_of: int | None = None,
    ) -> list[CalibrationMatch | None]:
        """Resolve many (data ID, timespan) lookups with one joined query per search."""
        with self._read() as conn:
            found = self._search.find_calibrations(conn, dataset_type, collections, queries, as_of)
        return [None if f is None else CalibrationMatch(*f) for f in found]

    def query_calibrations(
        self, collection: str, dataset_type: str | None = None, as_of: int | None = None
    ) -> list[tuple[DatasetRef, Timespan]]:
        with self._read() as conn:
            target = self.collections.get(conn, collection, expect=CollectionType.CALIBRATION)
            type_id = None
            if dataset_type is not None:
                type_id = self.datasets.type_with_id(conn, dataset_type)[0]
            rows = self.calibs.live(conn, target.id, type_id, as_of)
            refs = (
                {r.id: r for r in self.datasets.get_refs(conn, list({v.dataset_id for v in rows}))}
                if rows
                else {}
            )
            return [(refs[v.dataset_id], v.timespan) for v in rows]
