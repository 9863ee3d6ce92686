"""Commands that read: queries, dataset retrieval and calibration lookups."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..butler import Butler
from ..core.dimensions import parse_data_id_args
from ..core.errors import DataIdError, InputError
from ..core.timespan import Timespan, ns_to_iso
from ..registry.calib_lookup import (
    as_of_moment,
    find_all_calibrations,
    lookup_queries,
    lookup_timespan,
)
from ..registry.collections import CollectionType
from ..registry.records import flat_record
from ..registry.registry import CalibrationMatch
from .output import emit, ref_row

Sub = Any


def _lookup_args(p: argparse.ArgumentParser, *, pairs: bool) -> None:
    p.add_argument("--collections", nargs="+", required=True, metavar="COLLECTION")
    p.add_argument("--data-id", nargs="+", default=[], metavar="KEY=VALUE")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--time", help="ISO time (TAI) the calibration must be valid at")
    when.add_argument("--exposure", type=int, help="use this exposure's timespan and filter")
    if pairs:
        when.add_argument(
            "--pairs", type=Path, help="CSV/ECSV of many lookups (exposure or time + data ID)"
        )
    p.add_argument("--as-of", help="answer as the registry would have at this moment (TAI)")


def add_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("query-collections", parents=[common], help="list collections")
    p.add_argument("repo", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_query_collections)

    p = sub.add_parser("query-dataset-types", parents=[common], help="list dataset types")
    p.add_argument("repo", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_query_dataset_types)

    p = sub.add_parser("query-datasets", parents=[common], help="list datasets of a type")
    p.add_argument("repo", type=Path)
    p.add_argument("dataset_type")
    p.add_argument("--collections", nargs="+", required=True, metavar="COLLECTION")
    p.add_argument(
        "--where", help="e.g. \"detector IN (1..4) AND exposure.observation_type = 'bias'\""
    )
    p.add_argument(
        "--find-first",
        action="store_true",
        help="one dataset per data ID: the first along the collections",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_query_datasets)

    p = sub.add_parser("query-dimension-records", parents=[common], help="list dimension records")
    p.add_argument("repo", type=Path)
    p.add_argument("element")
    p.add_argument("--where")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_query_dimension_records)

    p = sub.add_parser("get", parents=[common], help="read a dataset (or its URI)")
    p.add_argument("repo", type=Path)
    p.add_argument("dataset_type", help="dataset type, or TYPE.COMPONENT")
    _lookup_args(p, pairs=False)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--uri", action="store_true", help="print the file's URI only")
    out.add_argument("--output", type=Path, help="copy the stored file here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser(
        "find-calibration", parents=[common], help="which calibration applies (one or many)"
    )
    p.add_argument("repo", type=Path)
    p.add_argument("dataset_type")
    _lookup_args(p, pairs=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_find_calibration)

    p = sub.add_parser(
        "find-calibrations",
        parents=[common],
        help="every calibration that applies to an exposure and detector (one or many)",
    )
    p.add_argument("repo", type=Path)
    _lookup_args(p, pairs=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_find_calibrations)


def cmd_query_collections(args: argparse.Namespace) -> int:
    with Butler.open(args.repo) as butler:
        registry = butler.registry
        rows = []
        for c in registry.query_collections():
            row: dict[str, Any] = {"name": c.name, "type": c.type.value}
            if c.type is CollectionType.CHAINED:
                row["children"] = ",".join(registry.get_chain(c.name))
            row["frozen_at"] = ns_to_iso(c.frozen_at)
            row["doc"] = c.doc
            rows.append(row)
    emit(rows, args.json, "no collections")
    return 0


def cmd_query_dataset_types(args: argparse.Namespace) -> int:
    with Butler.open(args.repo) as butler:
        rows = [
            {
                "name": t.name,
                "dimensions": " ".join(t.dimensions),
                "storage_class": t.storage_class,
                "is_calibration": t.is_calibration,
            }
            for t in butler.registry.query_dataset_types()
        ]
    emit(rows, args.json, "no dataset types")
    return 0


def cmd_query_datasets(args: argparse.Namespace) -> int:
    with Butler.open(args.repo) as butler:
        found = butler.registry.query_datasets(
            args.dataset_type, args.collections, args.where, find_first=args.find_first
        )
        rows = [ref_row(butler, ref, collection=name) for ref, name in found]
    emit(rows, args.json, "no datasets")
    return 0


def cmd_query_dimension_records(args: argparse.Namespace) -> int:
    with Butler.open(args.repo) as butler:
        records = butler.registry.query_dimension_records(args.element, args.where)
    emit([flat_record(r) for r in records], args.json, f"no {args.element} records")
    return 0


def _when(butler: Butler, args: argparse.Namespace, values: dict[str, Any]) -> Timespan | None:
    """The timespan a lookup is for, expanding ``values`` with the exposure's if given."""
    if args.exposure is not None and "instrument" not in values:
        raise DataIdError("--exposure needs --data-id instrument=NAME")
    return lookup_timespan(butler.registry, values, time=args.time, exposure=args.exposure)


def cmd_get(args: argparse.Namespace) -> int:
    with Butler.open(args.repo) as butler:
        values: dict[str, Any] = parse_data_id_args(args.data_id)
        ts = _when(butler, args, values)
        if args.uri or args.output:
            match = butler.find(
                args.dataset_type, values, args.collections, ts, as_of_moment(args.as_of)
            )
            if args.uri:
                print(butler.uri(match.ref))
            else:
                _copy_out(butler.datastore.local_path(butler.stored_file(match.ref)), args.output)
                print(f"wrote {args.output}")
        else:
            found = butler.find_and_get(
                args.dataset_type, values, args.collections, ts, as_of_moment(args.as_of)
            )
            _print_object(found[1], args.json)
    return 0


def _copy_out(source: Path, target: Path) -> None:
    """Copy a stored file to ``--output``; the folder must exist (like ``cp``, so a mistyped
    path is an error rather than a new tree of folders)."""
    if target.is_dir():
        raise InputError(f"--output {target} is a folder; give the path of the file to write")
    if not target.parent.is_dir():
        raise InputError(
            f"cannot write {target}: the folder {target.parent} does not exist; create it first"
        )
    try:
        shutil.copyfile(source, target)
    except OSError as err:
        raise InputError(f"cannot copy {source} to {target}: {err.strerror or err}") from err


def _print_object(obj: Any, as_json: bool) -> None:
    if hasattr(obj, "pformat_all"):  # astropy Table
        if as_json:
            json.dump(
                [dict(zip(obj.colnames, r, strict=True)) for r in obj.as_array().tolist()],
                sys.stdout,
                default=str,
            )
            print()
        else:
            print("\n".join(obj.pformat(max_lines=-1, max_width=-1)))
    elif hasattr(obj, "shape") and hasattr(obj, "dtype"):  # image array
        summary = {"shape": list(obj.shape), "dtype": str(obj.dtype)}
        print(json.dumps(summary) if as_json else f"array shape={obj.shape} dtype={obj.dtype}")
    elif as_json:
        json.dump(obj, sys.stdout, default=str)
        print()
    else:
        sys.stdout.write(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def cmd_find_calibration(args: argparse.Namespace) -> int:
    as_of = as_of_moment(args.as_of)
    with Butler.open(args.repo) as butler:
        shared: dict[str, Any] = parse_data_id_args(args.data_id)
        if args.pairs is not None:
            rows = _find_many(butler, args, shared, as_of)
        else:
            ts = _when(butler, args, shared)
            if ts is None:
                raise InputError("give --time, --exposure or --pairs")
            match = butler.find(args.dataset_type, shared, args.collections, ts, as_of)
            rows = [
                ref_row(butler, match.ref, collection=match.collection, timespan=match.timespan)
                | {"as_of": ns_to_iso(as_of)}
            ]
    emit(rows, args.json)
    return 0


def _find_many(
    butler: Butler, args: argparse.Namespace, shared: dict[str, Any], as_of: int
) -> list[dict[str, Any]]:
    queries = _pair_queries(butler, args, shared)
    matches = butler.registry.find_calibrations_bulk(
        args.dataset_type, args.collections, queries, as_of
    )
    rows = []
    for (values, _), match in zip(queries, matches, strict=True):
        if match is None:
            rows.append({**values, "dataset_id": None})
            continue
        row = ref_row(
            butler, match.ref, collection=match.collection, timespan=match.timespan, with_file=False
        )
        rows.append({**values, **row})
    return rows


def _pair_queries(
    butler: Butler, args: argparse.Namespace, shared: dict[str, Any]
) -> list[tuple[Mapping[str, Any], Timespan]]:
    """The (data ID, timespan) lookups of a ``--pairs`` table, exposures expanded."""
    from .repo_commands import read_table_rows

    return lookup_queries(
        butler.registry,
        [{**shared, **row} for row in read_table_rows(args.pairs)],
        str(args.pairs),
        "add an instrument column or --data-id instrument=NAME",
    )


def cmd_find_calibrations(args: argparse.Namespace) -> int:
    """Every calibration type's dataset that applies, per lookup; "none" where none does."""
    as_of = as_of_moment(args.as_of)
    with Butler.open(args.repo) as butler:
        shared: dict[str, Any] = parse_data_id_args(args.data_id)
        if args.pairs is not None:
            queries = _pair_queries(butler, args, shared)
        else:
            ts = _when(butler, args, shared)
            if ts is None:
                raise InputError("give --time, --exposure or --pairs")
            queries = [(shared, ts)]
        found = find_all_calibrations(butler.registry, args.collections, queries, as_of)
        rows = [
            _calibration_row(butler, lookup.data_id, name, match)
            for lookup in found
            for name, match in lookup.found.items()
        ]
    emit(rows, args.json, "no calibration dataset types apply to that data ID")
    return 0


def _calibration_row(
    butler: Butler, data_id: Mapping[str, Any], dataset_type: str, match: CalibrationMatch | None
) -> dict[str, Any]:
    row: dict[str, Any] = {**data_id, "dataset_type": dataset_type, "found": "none"}
    if match is not None:
        row["found"] = "yes"
        row |= ref_row(
            butler, match.ref, collection=match.collection, timespan=match.timespan, with_file=False
        )
        del row["dataset_type"]  # ref_row repeats it first; keep the lookup's column order
        row = {"dataset_type": dataset_type, **row}
    return row
