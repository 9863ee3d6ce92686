"""The ``obsbus`` command: argument parsing, error reporting, dispatch.

Every failure a user can cause is an ObsbusError, printed as one line on stderr with exit
status 1; ``--debug`` adds the traceback. Commands live in the sibling modules, each adding
its subcommands with ``add_commands``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from collections.abc import Sequence

from ..core.errors import ObsbusError
from . import (
    bus_commands,
    calib_commands,
    curated_commands,
    ingest_commands,
    query_commands,
    repo_commands,
    suite_commands,
)
from . import simcam_commands as simcam_cli

PROG = "obsbus"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Observatory data management: registry, datastore and calibrations.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    # Every (leaf) subcommand takes --debug too, so it may come before or after the command.
    # Its default is SUPPRESS: a subcommand's parser copies every attribute it has onto the
    # result, so any real default there would reset a top-level `obsbus --debug COMMAND`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        repo_commands,
        ingest_commands,
        query_commands,
        calib_commands,
        curated_commands,
        bus_commands,
        suite_commands,
        simcam_cli,
    ):
        module.add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    # Stamped on history rows (certify, chains, updates) as "which command did this".
    args.actor = f"{PROG} {shlex.join(args_list)}"[:1000]
    try:
        result: int = args.func(args)
        return result
    except ObsbusError as err:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: still one line, with a way to see more
        if args.debug:
            traceback.print_exc()
        print(
            f"{PROG}: internal error: {type(err).__name__}: {err} "
            "(run again with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
