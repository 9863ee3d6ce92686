"""Blessing suites over the bus, and calibrations moved in and out with a validity table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..butler import Butler
from ..datastore.transaction import TRANSFER_MODES
from .opening import open_butler, require_no_registry_service

Sub = Any


def add_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bless-suite",
        parents=[common],
        help="bless several calibrations (and changes to certified ranges) atomically, and wait",
    )
    p.add_argument("repo", type=Path)
    p.add_argument("suite", type=Path, help="suite YAML (see examples/suite.yaml)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S")
    p.add_argument("--json", action="store_true", help="print the outcome as a JSON object")
    p.set_defaults(func=cmd_bless_suite)

    p = sub.add_parser(
        "import-calibrations",
        parents=[common],
        help="ingest calibrations listed in an ECSV validity table and bless them, all or nothing",
    )
    p.add_argument("repo", type=Path)
    p.add_argument("table", type=Path, help="ECSV: dataset_type, data ID columns, begin, end, file")
    p.add_argument("--run", help="new RUN (default: <instrument>/calib/import/<UTC timestamp>)")
    p.add_argument(
        "--collection", help="target CALIBRATION collection (default: the table's metadata)"
    )
    p.add_argument("--transfer", default="copy", choices=TRANSFER_MODES)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "export-calibrations",
        parents=[common],
        help="write a CALIBRATION collection's files and its ECSV validity table",
    )
    p.add_argument("repo", type=Path)
    p.add_argument("collection")
    p.add_argument("target", type=Path, metavar="DIR_OR_FILE", help="a folder or a .ecsv path")
    p.set_defaults(func=cmd_export)


def cmd_bless_suite(args: argparse.Namespace) -> int:
    from ..bus.config import KafkaSettings
    from ..calib.suite import load_suite
    from ..clients.blessing import raise_if_rejected, request_blessing

    suite = load_suite(args.suite)
    bus = KafkaSettings().bus("obsbus-bless-suite")
    try:
        outcome = request_blessing(bus, suite, timeout_s=args.timeout)
    finally:
        bus.close()
    if args.json:
        print(json.dumps(vars(outcome)))
    raise_if_rejected(outcome)
    if not args.json:
        print(f"blessed into {outcome.collection}: {outcome.message}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..calib.transfer import import_calibrations, read_validity_table

    table = read_validity_table(args.table)
    with open_butler(args.repo, args.actor) as butler:
        require_no_registry_service(butler.root, "import-calibrations")  # it writes directly
        result = import_calibrations(
            butler, table, run=args.run, collection=args.collection, transfer=args.transfer
        )
    print(
        f"imported {result.datasets} calibration(s) into {result.run}; "
        f"{result.certified} validity range(s) certified in {result.collection}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..calib.transfer import export_calibrations

    with Butler.open(args.repo, actor=args.actor) as butler:
        result = export_calibrations(butler, args.collection, args.target)
    print(f"exported {result.rows} validity range(s), {result.files} file(s) to {result.table}")
    return 0
