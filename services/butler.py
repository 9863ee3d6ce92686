"""The Butler: a repository folder = registry (database) + datastore (files).

It is the library entry point for everything the CLI does. File and database changes are
made together: the datastore transaction wraps the registry transaction, so a failure in
either leaves neither a row without its file nor a file without its row.
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core.config import (
    CONFIG_NAME,
    SQLITE_NAME,
    RepoConfig,
    check_new_repo,
    read_config,
    write_config,
)
from .core.errors import DatasetNotFoundError, ObsbusError, UnregisteredDataIdError
from .core.timespan import Timespan
from .datastore.datastore import FileDatastore
from .datastore.formatters import load_formatter
from .datastore.storage_classes import get_storage_class
from .datastore.stored import StoredFile
from .datastore.transaction import DatastoreTransaction
from .registry.changes import ChangeSet
from .registry.datasets import DatasetRef, DatasetType, IdGenerationMode, InsertOutcome
from .registry.registry import CalibrationMatch, Registry
from .writes import LocalWrites, WritesFactory, apply_or_hold


def default_actor() -> str:
    try:
        return f"library:{getpass.getuser()}"
    except OSError:  # no user name in some containers
        return "library"


@contextmanager
def _removed_on_failure(paths: Sequence[Path], unless: Path) -> Iterator[None]:
    """If the block fails, remove those of ``paths`` it made (folders only if left empty).

    ``paths`` lists folders before what they hold; paths that already existed are left alone,
    and so is everything if ``unless`` exists by then (a concurrent create made the repo).
    """
    made = [p for p in paths if not p.exists() and not p.is_symlink()]
    try:
        yield
    except BaseException:
        if unless.exists():
            raise
        for path in reversed(made):
            with suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class FileToIngest:
    """One file and the dataset it becomes (see ``Butler.ingest``)."""

    path: Path
    ref: DatasetRef
    formatter: str | None = None  # import path; None = from storage class and extension


def ingest_file(
    files: DatastoreTransaction,
    path: Path,
    ref: DatasetRef,
    transfer: str,
    formatter: str | None = None,
) -> StoredFile:
    """Bring ``path`` into the datastore as the file of dataset ``ref``."""
    return files.ingest(
        path,
        dataset_id=ref.id,
        dataset_type=ref.dataset_type.name,
        run=ref.run,
        data_id=ref.data_id,
        storage_class=ref.dataset_type.storage_class,
        formatter=formatter,
        transfer=transfer,
    )


class Butler:
    """A repository opened for reading and writing.

    Its registry changes go to ``writes``, which the opener chooses (``Butler.open(...,
    writes=...)``): made from the registry, owned by the Butler and closed with it. The default
    applies them here (``LocalWrites``); while a registry service serves the repository the
    opener passes one that sends them to it (``services.clients.writes.BusWrites``; the command
    line decides in ``services.cli.opening``). The library itself never looks for services.
    """

    def __init__(
        self,
        root: Path,
        config: RepoConfig,
        registry: Registry,
        writes: WritesFactory = LocalWrites,
    ) -> None:
        self.root = root
        self.config = config
        self.registry = registry
        self.datastore = FileDatastore(config.datastore_root(root), config.templates)
        self.writes = writes(registry)

    @classmethod
    def create(
        cls,
        root: str | Path,
        *,
        db: str | None = None,
        db_namespace: str | None = None,
        actor: str | None = None,
        writes: WritesFactory = LocalWrites,
    ) -> Butler:
        """Make a new repository: the registry first, then the datastore folder, and
        ``obsbus.yaml`` last, since that file is what makes the folder a repository.

        If any step fails, what this call made on disk is removed again, so a retry starts
        clean (on PostgreSQL the schema is made in one transaction, rolled back on failure).
        ``writes`` is as for ``open``.
        """
        root = Path(root).resolve()
        config = RepoConfig(db=db, db_namespace=db_namespace)
        check_new_repo(root)
        sqlite = root / SQLITE_NAME
        ours = [
            *reversed([p for p in (root, *root.parents) if not p.exists()]),  # outermost first
            *(sqlite.with_name(sqlite.name + end) for end in ("", "-wal", "-shm", "-journal")),
            config.datastore_root(root),
        ]
        with _removed_on_failure(ours, unless=root / CONFIG_NAME):
            root.mkdir(parents=True, exist_ok=True)
            registry = Registry.create(
                config.db_url(root), config.namespace(), actor or default_actor()
            )
            try:
                config.datastore_root(root).mkdir(parents=True, exist_ok=True)
                write_config(root, config)
            except BaseException:
                registry.close()
                raise
        return cls(root, config, registry, writes)

    @classmethod
    def open(
        cls,
        root: str | Path,
        *,
        actor: str | None = None,
        writes: WritesFactory = LocalWrites,
        read_only: bool = False,
    ) -> Butler:
        """Open a repository; its registry changes go to ``writes(registry)`` (by default
        applied here, in-process: see the class docstring). ``read_only``: the registry's
        database refuses every write (``Registry.open``)."""
        root = Path(root).resolve()
        config = read_config(root)
        registry = Registry.open(
            config.db_url(root), config.namespace(), actor or default_actor(), read_only=read_only
        )
        return cls(root, config, registry, writes)

    def close(self) -> None:
        try:
            self.writes.close()
        finally:
            self.registry.close()

    def __enter__(self) -> Butler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing --------------------------------------------------------------------------------

    def ingest(self, files: Sequence[FileToIngest], transfer: str = "copy") -> list[InsertOutcome]:
        """Register datasets and bring their files in, all or nothing.

        A dataset already present (same id) is left as it is and its file is not transferred
        again, so repeating an ingest with deterministic ids is a no-op. A data ID value
        without its dimension record is an `UnregisteredDataIdError` whose ``index`` is the
        position of the file in ``files`` (when the registry is written here).
        """
        present = {f.ref.id for f in files if self._has_dataset(f.ref.id)}
        new = [i for i, f in enumerate(files) if f.ref.id not in present]
        unanswered = None
        with self.datastore.transaction(batch_sync=True) as files_txn:
            stored = [
                ingest_file(files_txn, files[i].path, files[i].ref, transfer, files[i].formatter)
                for i in new
            ]
            files_txn.make_durable()  # the files, then the rows that point at them
            if new:
                runs = sorted({files[i].ref.run for i in new})
                changes = ChangeSet(
                    what=f"ingest of {len(new)} file(s) into {', '.join(runs)}",
                    datasets=tuple(files[i].ref for i in new),
                    stored=tuple(stored),
                )
                try:
                    unanswered = apply_or_hold(self.writes, changes)
                except UnregisteredDataIdError as err:
                    if err.index is None:
                        raise
                    raise UnregisteredDataIdError(str(err), new[err.index]) from err
        if unanswered is not None:
            raise unanswered  # sent, unanswered: its files stay for when it is applied
        return ["already-present" if f.ref.id in present else "inserted" for f in files]

    def register_dataset_type(self, dataset_type: DatasetType) -> bool:
        """Define a dataset type; False if that exact definition exists already."""
        get_storage_class(dataset_type.storage_class)  # refuse unknown ones up front
        known = {t.name: t for t in self.registry.query_dataset_types()}
        if known.get(dataset_type.name) == dataset_type:
            return False
        what = f"dataset type {dataset_type.name}"
        self.writes.apply(ChangeSet(what=what, dataset_types=(dataset_type,)))
        return True

    def _has_dataset(self, dataset_id: uuid.UUID) -> bool:
        try:
            self.registry.get_dataset(dataset_id)
        except DatasetNotFoundError:
            return False
        return True

    def put(
        self,
        obj: Any,
        dataset_type: str,
        data_id: Mapping[str, Any],
        run: str,
        *,
        mode: IdGenerationMode = IdGenerationMode.UNIQUE,
        formatter: str | None = None,
    ) -> DatasetRef:
        """Write ``obj`` as a new dataset (a repeat with a deterministic id changes nothing)."""
        ref = self.registry.make_ref(dataset_type, data_id, run, mode)
        if self._has_dataset(ref.id):
            return ref
        with self.datastore.transaction() as files_txn:
            stored = files_txn.put(
                obj,
                dataset_id=ref.id,
                dataset_type=ref.dataset_type.name,
                run=run,
                data_id=ref.data_id,
                storage_class=ref.dataset_type.storage_class,
                formatter=formatter,
            )
            what = f"put {ref.dataset_type.name} into {run}"
            changes = ChangeSet(what=what, datasets=(ref,), stored=(stored,))
            unanswered = apply_or_hold(self.writes, changes)
        if unanswered is not None:
            raise unanswered  # sent, unanswered: its file stays for when it is applied
        return ref

    # --- reading --------------------------------------------------------------------------------

    def find(
        self,
        dataset_type: str,
        data_id: Mapping[str, Any],
        collections: Sequence[str],
        timespan: Timespan | None = None,
        as_of: int | None = None,
    ) -> CalibrationMatch:
        parent, _ = DatasetType.split_component(dataset_type)
        match = self.registry.find_dataset(parent, data_id, collections, timespan, as_of)
        if match is None:
            where = " at " + str(timespan) if timespan is not None else ""
            raise DatasetNotFoundError(
                f"no {parent} for {self.typed_data_id(data_id)} in {', '.join(collections)}{where}"
            )
        return match

    def typed_data_id(self, data_id: Mapping[str, Any]) -> dict[str, Any]:
        """Data ID values as the registry holds them (``detector=3`` from the CLI is 3, not
        '3'), for messages and answers; a value that is not a dimension's, or does not convert,
        stays."""
        out = dict(data_id)
        for name, value in data_id.items():
            try:
                key = self.registry.universe[name].key
                if key is not None:
                    out[name] = key.coerce(value, name)
            except ObsbusError:
                pass
        return out

    def stored_file(self, ref: DatasetRef | uuid.UUID) -> StoredFile:
        return self.registry.stored_file(ref.id if isinstance(ref, DatasetRef) else ref)

    def get(
        self,
        ref: DatasetRef | uuid.UUID,
        component: str | None = None,
        *,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        """Read a dataset back, using only its datastore record.

        ``parameters`` are what a component needs to pick its part out of the dataset, e.g.
        ``get(camera_ref, "detector", parameters={"detector": 94})``.
        """
        return self.datastore.read(self.stored_file(ref), component, parameters)

    def component_parameters(self, ref: DatasetRef | uuid.UUID, component: str) -> frozenset[str]:
        """The parameters ``component`` of this dataset needs (by its stored formatter)."""
        formatter = load_formatter(self.stored_file(ref).formatter)
        return formatter.component_parameters.get(component, frozenset())

    def find_and_get(
        self,
        dataset_type: str,
        data_id: Mapping[str, Any],
        collections: Sequence[str],
        timespan: Timespan | None = None,
        as_of: int | None = None,
    ) -> tuple[CalibrationMatch, Any]:
        """Find ``TYPE`` or ``TYPE.COMPONENT`` and read it.

        A component's parameters come from the data ID, so a key beyond the parent's
        dimensions addresses the part: ``find_and_get("camera.detector", {"instrument":
        "SimCam", "detector": 94}, ["SimCam/calib"], Timespan.at("2024-03-01"))`` is detector
        94's description in the camera version valid then.
        """
        match = self.find(dataset_type, data_id, collections, timespan, as_of)
        _, component = DatasetType.split_component(dataset_type)
        if component is None:
            return match, self.get(match.ref)
        wanted = self.component_parameters(match.ref, component)
        typed = self.typed_data_id(data_id)
        parameters = {name: typed[name] for name in wanted if name in typed}
        return match, self.get(match.ref, component, parameters=parameters)

    def uri(self, ref: DatasetRef | uuid.UUID) -> str:
        return self.datastore.uri(self.stored_file(ref))
