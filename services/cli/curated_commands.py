"""``obsbus write-curated-calibrations``: an instrument's signature data into a new collection."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..calib.curated import write_curated_calibrations
from ..instruments import load_instrument
from .opening import open_butler
from .output import emit

Sub = Any  # argparse's subparsers action has no public type


def add_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "write-curated-calibrations",
        parents=[common],
        help="write an instrument's curated calibrations into a new run and collection",
        description=(
            "Write the curated calibration tree <SOURCE>/<INSTRUMENT>/<dataset type>/"
            "<detector|filter|.>/<ISO TAI start>.<ecsv|yaml|json> into new runs, one per "
            "start time, chained as <I>/calib/<LABEL>/curated/<UTC timestamp>; certify each "
            "file from its start to the next file's start into the new CALIBRATION collection "
            "<I>/calib/<LABEL>, and put that collection first in the chain <I>/calib. All or "
            "nothing; a label already used is refused."
        ),
    )
    p.add_argument("repo", type=Path)
    p.add_argument("instrument", help="instrument name or import path of its class")
    p.add_argument("--label", required=True, help="names the collection <I>/calib/<LABEL>")
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder holding <INSTRUMENT>/... (default: the tree the instrument ships)",
    )
    p.add_argument("--json", action="store_true", help="print the certified datasets as JSON")
    p.set_defaults(func=cmd_write_curated)


def cmd_write_curated(args: argparse.Namespace) -> int:
    instrument = load_instrument(args.instrument)
    with open_butler(args.repo, args.actor) as butler:
        result = write_curated_calibrations(butler, instrument, args.label, args.source)
    rows = []
    for ref, timespan, source in result.certified:
        begin, end = timespan.to_iso()
        rows.append(
            {
                "dataset_type": ref.dataset_type.name,
                **{k: v for k, v in ref.data_id.items() if k != "instrument"},
                "begin": begin,
                "end": end,
                "source": str(source),
                "dataset_id": str(ref.id),
            }
        )
    if args.json:
        emit(rows, True)
        return 0
    emit(rows, False)
    print(
        f"wrote {len(rows)} curated calibrations of {instrument.name} into "
        f"{len(result.runs)} runs (chained as {result.run}), "
        f"certified into {result.collection}; {result.chain}: {', '.join(result.chain_children)}"
    )
    return 0
