"""Calibrations made elsewhere: import with a validity table, export a collection as one.

The table is ECSV, one row per validity range::

    dataset_type  instrument  detector  physical_filter  begin                end   file
    bias          SimCam      94        --               2024-11-01T00:00:00  --    bias/94.fits
    flat          SimCam      94        SimCam-r         2024-11-01T00:00:00  --    flat/94-r.fits

Data ID columns are named after dimensions; a value a dataset type does not use is left
empty (masked). ``begin``/``end`` are ISO TAI, empty = unbounded; ``file`` is relative to the
table's folder. The table's metadata may declare dataset types that the repository does not
have yet (``dataset_types: {flat: {storage_class: Image, dimensions: [instrument, detector,
physical_filter]}}``, always calibrations) and name the collection (``collection:``), which is
the default target on import. ``export`` writes both, so an export imports as it is.

Import is all or nothing: the files go into a NEW run (default ``<I>/calib/import/<UTC
timestamp>``) and are blessed into the target CALIBRATION collection by the same checks as a
blessing suite (``calib.suite.check_suite``); a refusal leaves neither datasets nor files.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..butler import Butler, ingest_file
from ..core.errors import (
    CollectionExistsError,
    InputError,
    MissingDatasetTypeError,
    ObsbusError,
    UnregisteredDataIdError,
)
from ..core.timespan import Timespan
from ..datastore.stored import file_checksum
from ..registry.collections import CollectionType
from ..registry.datasets import DatasetRef, DatasetType, IdGenerationMode
from ..registry.suites import apply_suite
from .suite import NS_CONTEXT, CalibrationSpec, Suite, check_suite, validation_summary

TABLE_NAME = "calibrations.ecsv"
_FIXED_COLUMNS = ("dataset_type", "begin", "end", "file")


class DeclaredType(BaseModel):
    model_config = ConfigDict(extra="forbid")
    storage_class: str = Field(min_length=1)
    dimensions: list[str]


class TableMeta(BaseModel):
    """The ECSV metadata obsbus reads (other keys are left alone)."""

    model_config = ConfigDict(extra="ignore")
    collection: str | None = None
    dataset_types: dict[str, DeclaredType] = Field(default_factory=dict)


@dataclass(frozen=True)
class ValidityRow:
    """One row of a validity table."""

    number: int  # 1-based, for messages
    dataset_type: str
    values: dict[str, Any]  # data ID values present in the row
    timespan: Timespan
    file: Path


@dataclass(frozen=True)
class ValidityTable:
    path: Path
    meta: TableMeta
    rows: list[ValidityRow]


@dataclass(frozen=True)
class ImportResult:
    run: str
    collection: str
    datasets: int
    certified: int


@dataclass(frozen=True)
class ExportResult:
    table: Path
    rows: int
    files: int


# --- reading a table ----------------------------------------------------------------------------


def read_validity_table(path: Path) -> ValidityTable:
    """Read and check the form of a validity table; a problem is one line naming the row."""
    from astropy.table import Table

    if path.suffix.lower() != ".ecsv":
        raise InputError(f"{path}: a validity table is ECSV (.ecsv)")
    try:
        table = Table.read(path, format="ascii.ecsv")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as err:  # astropy raises many types for malformed tables
        message = " ".join(str(err).split())
        raise InputError(
            f"{path}: cannot read the table ({type(err).__name__}: {message})"
        ) from err
    missing = [c for c in _FIXED_COLUMNS if c not in table.colnames]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(table.colnames)})"
        )
    try:
        meta = TableMeta.model_validate(dict(table.meta))
    except ValidationError as err:
        raise InputError(f"{path}: table metadata: {validation_summary(err)}") from err
    dims = [c for c in table.colnames if c not in _FIXED_COLUMNS]
    rows = [_row(path, n, row, dims) for n, row in enumerate(table, start=1)]
    if not rows:
        raise InputError(f"{path}: the table has no rows")
    return ValidityTable(path, meta, rows)


def _cell(row: Any, name: str) -> Any:
    """A cell's plain value; None when it is masked or empty text."""
    import numpy as np

    value = row[name]
    if np.ma.is_masked(value):
        return None
    value = value.item() if hasattr(value, "item") else value
    return None if value == "" else value


def _row(path: Path, number: int, row: Any, dims: Sequence[str]) -> ValidityRow:
    where = f"{path} row {number}"
    dataset_type, file = _cell(row, "dataset_type"), _cell(row, "file")
    if dataset_type is None or file is None:
        raise InputError(f"{where}: dataset_type and file must not be empty")
    begin, end = _cell(row, "begin"), _cell(row, "end")
    try:
        timespan = Timespan.from_times(
            None if begin is None else str(begin), None if end is None else str(end)
        )
    except ObsbusError as err:
        raise InputError(f"{where}: {err}") from err
    values = {d: v for d in dims if (v := _cell(row, d)) is not None}
    file_path = Path(str(file))
    return ValidityRow(
        number,
        str(dataset_type),
        values,
        timespan,
        file_path if file_path.is_absolute() else path.parent / file_path,
    )


# --- import -------------------------------------------------------------------------------------


def default_import_run(rows: Sequence[ValidityRow], when: datetime | None = None) -> str:
    """``<I>/calib/import/<UTC timestamp>`` for the table's one instrument."""
    instruments = sorted({str(r.values["instrument"]) for r in rows if "instrument" in r.values})
    if len(instruments) != 1:
        raise InputError(
            "cannot name the run: the table has "
            + (f"instruments {', '.join(instruments)}" if instruments else "no instrument column")
            + "; give --run"
        )
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{instruments[0]}/calib/import/{stamp}"


def import_calibrations(
    butler: Butler,
    table: ValidityTable,
    *,
    run: str | None = None,
    collection: str | None = None,
    transfer: str = "copy",
) -> ImportResult:
    """Ingest a table's files into a new run and bless them into the collection, all or nothing.

    The target is ``collection``, else the table's ``collection`` metadata. Overlaps with what
    the collection holds (or between rows) refuse the whole import, as a blessing would.
    It writes the registry directly: not while a registry service owns it (``obsbus
    import-calibrations`` refuses then).
    """
    target = collection or table.meta.collection
    if not target:
        raise InputError(f"{table.path}: no collection in the table metadata; give --collection")
    run = run or default_import_run(table.rows)
    registry = butler.registry
    with butler.datastore.transaction() as files_txn, registry.transaction():
        types = _dataset_types(butler, table)
        row_refs = _row_datasets(butler, table, types, run)
        unique = {ref.id: (ref, row) for ref, row in zip(row_refs, table.rows, strict=True)}
        for name in sorted({ref.run for ref in row_refs}):
            if not registry.register_collection(name, CollectionType.RUN, f"from {table.path}"):
                raise CollectionExistsError(
                    f"run {name!r} already exists; an import goes into a new run "
                    "(give another --run)"
                )
        _insert(butler, list(unique.values()), table)
        _check_movable(table, [row for _, row in unique.values()], transfer)
        stored = [ingest_file(files_txn, row.file, ref, transfer) for ref, row in unique.values()]
        registry.store_files(stored)
        suite = Suite(
            collection=target,
            reason=f"imported from {table.path}",
            calibrations=[
                CalibrationSpec.model_validate(
                    {
                        "dataset_type": ref.dataset_type.name,
                        "run": ref.run,
                        "data_ids": [dict(ref.data_id)],
                        "begin": row.timespan.begin,
                        "end": row.timespan.end,
                    },
                    context=NS_CONTEXT,
                )
                for ref, row in zip(row_refs, table.rows, strict=True)
            ],
        )
        result = apply_suite(registry, check_suite(registry, suite, None))
    return ImportResult(run, target, len(unique), result.certified)


def _row_datasets(
    butler: Butler, table: ValidityTable, types: Mapping[str, DatasetType], run: str
) -> list[DatasetRef]:
    """The dataset of each row. Rows naming the same file for one data ID share a dataset (one
    calibration valid for several ranges); the n-th different file of a data ID (n > 1, in
    order of validity) goes into ``<run>/<n>``, as a run holds one dataset per data ID."""
    by_file: dict[tuple[str, str, Path], DatasetRef] = {}
    versions: dict[tuple[str, str], int] = {}
    out: dict[int, DatasetRef] = {}
    for row in sorted(table.rows, key=lambda r: r.timespan.db_begin):
        dt = types[row.dataset_type]
        data_id = _ref(butler, dt, row, run, table.path).data_id
        identity = (dt.name, data_id.key, row.file.resolve())
        if identity not in by_file:
            n = versions[identity[:2]] = versions.get(identity[:2], 0) + 1
            by_file[identity] = _ref(butler, dt, row, run if n == 1 else f"{run}/{n}", table.path)
        out[row.number] = by_file[identity]
    return [out[row.number] for row in table.rows]


def _dataset_types(butler: Butler, table: ValidityTable) -> dict[str, DatasetType]:
    """The table's dataset types: registered ones, or declared in its metadata (then made)."""
    registry = butler.registry
    out: dict[str, DatasetType] = {}
    for name in sorted({r.dataset_type for r in table.rows}):
        declared = table.meta.dataset_types.get(name)
        if declared is not None:
            from ..datastore.storage_classes import get_storage_class

            get_storage_class(declared.storage_class)
            registry.register_dataset_type(
                DatasetType(name, tuple(declared.dimensions), declared.storage_class, True)
            )
        try:
            out[name] = registry.get_dataset_type(name)
        except MissingDatasetTypeError as err:
            raise MissingDatasetTypeError(
                f"{table.path}: dataset type {name!r} is not registered and the table does not "
                "declare it (metadata dataset_types); register it first"
            ) from err
    return out


def _ref(butler: Butler, dt: DatasetType, row: ValidityRow, run: str, path: Path) -> DatasetRef:
    try:
        return butler.registry.make_ref(dt, row.values, run, IdGenerationMode.UNIQUE)
    except ObsbusError as err:
        raise InputError(f"{path} row {row.number}: {err}") from err


def _insert(
    butler: Butler, datasets: Sequence[tuple[DatasetRef, ValidityRow]], table: ValidityTable
) -> None:
    # One insert per dataset type: a bulk insert takes its columns from its first row.
    by_type: dict[str, list[tuple[DatasetRef, ValidityRow]]] = {}
    for ref, row in datasets:
        by_type.setdefault(ref.dataset_type.name, []).append((ref, row))
    for group in by_type.values():
        try:
            butler.registry.insert_datasets([ref for ref, _ in group])
        except UnregisteredDataIdError as err:
            if err.index is None:
                raise
            number = group[err.index][1].number
            raise UnregisteredDataIdError(f"{table.path} row {number}: {err}", number) from err


# --- export -------------------------------------------------------------------------------------


def export_calibrations(butler: Butler, collection: str, target: Path) -> ExportResult:
    """Write a CALIBRATION collection's files and its validity table (``calibrations.ecsv`` in
    a folder, or the ``.ecsv`` path given), ready for ``import_calibrations``."""
    table_path = target if target.suffix.lower() == ".ecsv" else target / TABLE_NAME
    if table_path.exists():
        raise InputError(f"{table_path} already exists; export into a new folder or file")
    certified = butler.registry.query_calibrations(collection)
    if not certified:
        raise InputError(f"collection {collection!r} holds no certified calibrations to export")
    folder = table_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    copied: dict[str, str] = {}
    rows = []
    for ref, timespan in certified:
        if str(ref.id) not in copied:
            copied[str(ref.id)] = _copy_file(butler, ref, folder)
        begin, end = timespan.to_iso()
        rows.append(
            {
                "dataset_type": ref.dataset_type.name,
                **dict(ref.data_id),
                "begin": begin,
                "end": end,
                "file": copied[str(ref.id)],
            }
        )
    types = {ref.dataset_type for ref, _ in certified}
    _write_table(table_path, rows, collection, types)
    return ExportResult(table_path, len(rows), len(copied))


def _copy_file(butler: Butler, ref: DatasetRef, folder: Path) -> str:
    """Copy a dataset's file as ``<dataset type>/<dataset id><extensions>``; the relative name."""
    stored = butler.stored_file(ref)
    source = butler.datastore.local_path(stored)
    relative = Path(ref.dataset_type.name) / (str(ref.id) + "".join(source.suffixes))
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / relative)
    if file_checksum(folder / relative)[1] != stored.checksum:
        raise InputError(f"{source} does not match its recorded checksum; export stopped")
    return relative.as_posix()


def _write_table(
    path: Path, rows: Sequence[Mapping[str, Any]], collection: str, types: set[DatasetType]
) -> None:
    from astropy.table import MaskedColumn, Table

    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    ordered = ["dataset_type", *[n for n in names if n not in _FIXED_COLUMNS], *_FIXED_COLUMNS[1:]]
    columns = []
    for name in ordered:
        values = [row.get(name) for row in rows]
        present = [v for v in values if v is not None]
        numeric = bool(present) and all(isinstance(v, int) for v in present)
        fill: Any = 0 if numeric else ""
        columns.append(
            MaskedColumn(
                [fill if v is None else v for v in values],
                name=name,
                mask=[v is None for v in values],
                dtype="int64" if numeric else str,
            )
        )
    meta = {
        "collection": collection,
        "dataset_types": {
            t.name: {"storage_class": t.storage_class, "dimensions": list(t.dimensions)}
            for t in sorted(types, key=lambda t: t.name)
        },
    }
    Table(columns, meta=meta).write(path, format="ascii.ecsv")


def _check_movable(table: ValidityTable, rows: Sequence[Any], transfer: str) -> None:
    """``move`` takes a file away: one file cannot then serve several datasets."""
    if transfer != "move":
        return
    seen: set[Path] = set()
    for row in rows:
        if row.file in seen:
            raise InputError(
                f"{table.path}: {row.file} is the file of several datasets; it cannot be "
                "moved into each of them: use --transfer copy (or hardlink)"
            )
        seen.add(row.file)
