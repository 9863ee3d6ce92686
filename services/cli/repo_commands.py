"""Commands that set a repository up and bring files in."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..butler import Butler, FileToIngest
from ..core.dimensions import parse_data_id_args
from ..core.errors import InputError, ObsbusError, UnregisteredDataIdError
from ..datastore.transaction import TRANSFER_MODES
from ..instruments import load_instrument
from ..registry.datasets import DatasetType, IdGenerationMode
from .opening import open_butler, require_no_registry_service
from .output import emit

Sub = Any  # argparse's subparsers action has no public type


def add_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("create", parents=[common], help="create a repository")
    p.add_argument("repo", type=Path)
    p.add_argument("--db", help="SQLAlchemy URL (default: SQLite file in the repo)")
    p.add_argument("--db-namespace", help="PostgreSQL schema holding this repository")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("migrate", parents=[common], help="upgrade a repository's schema")
    p.add_argument("repo", type=Path)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "register-instrument", parents=[common], help="register instruments' static records"
    )
    p.add_argument("repo", type=Path)
    p.add_argument("names", nargs="+", metavar="NAME", help="instrument name or class path")
    p.add_argument("--update", action="store_true", help="accept changed definitions")
    p.add_argument("--reason", help="why the definition changed (needed with --update)")
    p.set_defaults(func=cmd_register_instrument)

    p = sub.add_parser("register-dataset-type", parents=[common], help="define a dataset type")
    p.add_argument("repo", type=Path)
    p.add_argument("name")
    p.add_argument("storage_class")
    p.add_argument("dimensions", nargs="*", metavar="DIMENSION")
    p.add_argument("--is-calibration", action="store_true")
    p.set_defaults(func=cmd_register_dataset_type)

    p = sub.add_parser(
        "ingest-files", parents=[common], help="ingest files listed in a CSV/ECSV table"
    )
    p.add_argument("repo", type=Path)
    p.add_argument("dataset_type")
    p.add_argument("run")
    p.add_argument("table", type=Path, help="CSV or ECSV: a 'file' column + data ID columns")
    p.add_argument("--transfer", default="copy", choices=TRANSFER_MODES)
    p.add_argument(
        "--data-id",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="data ID values shared by every row",
    )
    p.add_argument(
        "--id-generation",
        default=IdGenerationMode.UNIQUE.value,
        choices=[m.value for m in IdGenerationMode],
        help="dataid_type_run: same file twice = same dataset (a no-op)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ingest_files)


def cmd_create(args: argparse.Namespace) -> int:
    with Butler.create(args.repo, db=args.db, db_namespace=args.db_namespace, actor=args.actor):
        print(f"created repository {args.repo}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    require_no_registry_service(args.repo, "migrate")
    from ..core.config import read_config
    from ..registry.registry import Registry

    root = args.repo.resolve()
    config = read_config(root)
    registry = Registry.create(config.db_url(root), config.namespace(), args.actor)
    registry.close()
    print(f"repository {args.repo} is at the current schema")
    return 0


def cmd_register_instrument(args: argparse.Namespace) -> int:
    require_no_registry_service(args.repo, "register-instrument")
    instruments = [load_instrument(name) for name in args.names]
    with open_butler(args.repo, args.actor) as butler:
        for instrument in instruments:
            counts = instrument.register(butler.registry, update=args.update, reason=args.reason)
            new, updated = sum(counts.values()), sum(counts.updated.values())
            changes = [f"{new} new records"] if new else []
            if updated:
                changes.append(f"{updated} updated records")
            print(f"{instrument.name}: {', '.join(changes) or 'already registered, unchanged'}")
    return 0


def cmd_register_dataset_type(args: argparse.Namespace) -> int:
    dataset_type = DatasetType(
        args.name, tuple(args.dimensions), args.storage_class, args.is_calibration
    )
    with open_butler(args.repo, args.actor) as butler:
        new = butler.register_dataset_type(dataset_type)
    print(f"dataset type {args.name}: {'registered' if new else 'already registered, unchanged'}")
    return 0


def read_table_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV or ECSV table as plain dicts."""
    from astropy.table import Table

    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: the table must be .csv or .ecsv")
    try:
        table = Table.read(path, format=fmt)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as err:  # astropy raises many types for malformed tables
        raise InputError(f"{path}: cannot read the table ({type(err).__name__}: {err})") from err
    return [
        {
            name: (v.item() if hasattr(v, "item") else v)
            for name, v in zip(table.colnames, row, strict=True)
        }
        for row in table
    ]


def read_ingest_table(path: Path, shared: dict[str, str]) -> list[tuple[Path, dict[str, Any]]]:
    """(file, data ID values) per row; relative files are relative to the table's folder."""
    rows = read_table_rows(path)
    if rows and "file" not in rows[0]:
        raise InputError(f"{path}: no 'file' column (columns: {', '.join(rows[0])})")
    out = []
    for row in rows:
        file = Path(str(row.pop("file")))
        out.append((file if file.is_absolute() else path.parent / file, {**shared, **row}))
    return out


def cmd_ingest_files(args: argparse.Namespace) -> int:
    rows = read_ingest_table(args.table, parse_data_id_args(args.data_id))
    mode = IdGenerationMode(args.id_generation)
    with open_butler(args.repo, args.actor) as butler:
        dataset_type = butler.registry.get_dataset_type(args.dataset_type)
        files = []
        for n, (file, values) in enumerate(rows, start=1):
            try:
                ref = butler.registry.make_ref(dataset_type, values, args.run, mode)
            except ObsbusError as err:
                raise InputError(f"{args.table} row {n}: {err}") from err
            files.append(FileToIngest(file, ref))
        try:
            outcomes = butler.ingest(files, transfer=args.transfer)
        except UnregisteredDataIdError as err:
            if err.index is None:
                raise
            raise InputError(f"{args.table} row {err.index + 1}: {err}") from err
        emit(
            [
                {
                    "file": str(f.path),
                    "dataset_type": f.ref.dataset_type.name,
                    **dict(f.ref.data_id),
                    "run": f.ref.run,
                    "dataset_id": str(f.ref.id),
                    "outcome": outcome,
                }
                for f, outcome in zip(files, outcomes, strict=True)
            ],
            args.json,
        )
    return 0
