"""``obsbus simcam generate OUTDIR --exposures N [--start ISO] [--interval S] [--seed N] [--json]``.

Writes a simulated night of SimCam raws (see ``generator.generate_night``) and lists the
exposures written, one row each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..instruments.simcam.generator import DEFAULT_START, generate_night, to_tai
from ..instruments.simcam.translator import SimCamTranslator
from .output import emit

Sub = Any  # argparse's subparsers action has no public type


def add_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    # --debug (``common``) goes on the leaf command only: a nested parser's defaults would
    # overwrite a value given at an outer level.
    p = sub.add_parser("simcam", help="the simulated SimCam camera")
    simcam = p.add_subparsers(dest="simcam_command", required=True, metavar="COMMAND")
    g = simcam.add_parser(
        "generate", parents=[common], help="write a simulated night of SimCam raw files"
    )
    g.add_argument("outdir", type=Path, metavar="OUTDIR")
    g.add_argument("--exposures", type=int, required=True, metavar="N", help="how many")
    g.add_argument(
        "--start",
        default=DEFAULT_START,
        metavar="ISO",
        help=f"first exposure's start: TAI unless it has a UTC offset (default {DEFAULT_START})",
    )
    g.add_argument(
        "--interval", type=float, default=40.0, metavar="S", help="seconds between exposures"
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    g.add_argument("--json", action="store_true", help="print a JSON array")
    g.set_defaults(func=cmd_generate)


def _exposure_row(path: Path) -> dict[str, Any]:
    """What one exposure is, from the header of its first file."""
    from astropy.io import fits

    header = fits.getheader(path)
    return {
        "obs_id": header["OBSID"],
        "exposure_id": SimCamTranslator.compute_exposure_id(header["DAYOBS"], header["SEQNUM"]),
        "img_type": header["IMGTYPE"],
        "physical_filter": header["FILTER"],
        "exposure_time": header["EXPTIME"],
        "begin": header["DATE-BEG"],
        "dir": str(path.parent),
        "files": 0,
    }


def cmd_generate(args: argparse.Namespace) -> int:
    if not 1 <= args.exposures <= 99_999:
        raise InputError("--exposures must be between 1 and 99999 (SEQNUM has 5 digits)")
    if args.interval <= 0:
        raise InputError("--interval must be more than 0 seconds")
    try:
        start = to_tai(args.start)
    except ValueError:
        raise InputError(f"--start {args.start!r} is not an ISO date-time") from None
    t0 = time.perf_counter()
    paths = generate_night(args.outdir, args.exposures, start, args.interval, seed=args.seed)
    elapsed = time.perf_counter() - t0
    rows: dict[Path, dict[str, Any]] = {}
    for path in paths:
        if path.parent not in rows:
            rows[path.parent] = _exposure_row(path)
        rows[path.parent]["files"] += 1
    emit(list(rows.values()), args.json)
    if not args.json:
        print(f"wrote {len(paths)} files in {elapsed:.2f} s")
    return 0
