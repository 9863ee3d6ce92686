"""``obsbus ingest-raws``: raw files from telescopes into a repository."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..datastore.transaction import TRANSFER_MODES
from ..ingest.headers import configure_offline_translation
from ..ingest.raws import RawIngester, find_raw_files
from .opening import open_butler, require_no_registry_service
from .output import emit

Sub = Any


def add_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ingest-raws", parents=[common], help="ingest raw FITS files (files or directories)"
    )
    p.add_argument("repo", type=Path)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--transfer", default="copy", choices=TRANSFER_MODES)
    p.add_argument("--run", help="RUN collection (default: <instrument>/raw/all)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    p.add_argument("--json", action="store_true", help="list every outcome as JSON")
    p.set_defaults(func=cmd_ingest_raws)


def cmd_ingest_raws(args: argparse.Namespace) -> int:
    configure_offline_translation()
    files = find_raw_files(args.paths)
    counts = {"ingested": 0, "already-present": 0, "failed": 0}
    rows = []
    with open_butler(args.repo, args.actor) as butler:
        # Raw ingest writes the registry directly: not while a registry service owns it.
        require_no_registry_service(
            butler.root, "ingest-raws", "drop the files into the watched landing folder instead"
        )
        ingester = RawIngester(butler, transfer=args.transfer, run=args.run)
        for outcome in ingester.ingest(files, fail_fast=args.fail_fast):
            counts[outcome.status] += 1
            if args.json:
                rows.append(outcome.to_value())
            elif outcome.status == "failed":
                print(f"failed [{outcome.reason}] {outcome.message}", file=sys.stderr)
    if args.json:
        json.dump(rows, sys.stdout)
        print()
    else:
        emit([counts], False)
    return 1 if counts["failed"] else 0
