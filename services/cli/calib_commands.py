"""Commands that change calibration collections and chains."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..butler import Butler
from ..core.dimensions import parse_data_id_args
from ..core.errors import DatasetNotFoundError
from ..core.timespan import Timespan
from ..registry.changes import Certification, ChainChange, ChangeSet, NewCollection
from ..registry.collections import CollectionType
from ..registry.commands import Decertify
from .opening import open_butler, require_no_registry_service

Sub = Any


def _range_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--begin-date", help="ISO TAI start of validity (default: unbounded)")
    p.add_argument("--end-date", help="ISO TAI end of validity, exclusive (default: unbounded)")


def add_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "certify-calibrations",
        parents=[common],
        help="certify a run's calibrations into a CALIBRATION collection",
    )
    p.add_argument("repo", type=Path)
    p.add_argument("input_run")
    p.add_argument("calib_collection")
    p.add_argument("dataset_type")
    _range_args(p)
    p.set_defaults(func=cmd_certify)

    p = sub.add_parser(
        "decertify-calibrations",
        parents=[common],
        help="cut a time window out of calibrations' validity",
    )
    p.add_argument("repo", type=Path)
    p.add_argument("calib_collection")
    p.add_argument("dataset_type")
    _range_args(p)
    p.add_argument(
        "--data-id",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="only this data ID (default: all)",
    )
    p.set_defaults(func=cmd_decertify)

    p = sub.add_parser("collection-chain", parents=[common], help="define a CHAINED collection")
    p.add_argument("repo", type=Path)
    p.add_argument("parent")
    p.add_argument("children", nargs="*", metavar="CHILD")
    p.add_argument(
        "--mode", default="redefine", choices=["redefine", "extend", "prepend", "remove"]
    )
    p.set_defaults(func=cmd_collection_chain)

    p = sub.add_parser(
        "freeze-collection", parents=[common], help="refuse all further changes to a collection"
    )
    p.add_argument("repo", type=Path)
    p.add_argument("collection")
    p.set_defaults(func=cmd_freeze)


def cmd_certify(args: argparse.Namespace) -> int:
    timespan = Timespan.from_times(args.begin_date, args.end_date)
    with open_butler(args.repo, args.actor) as butler:
        registry = butler.registry
        registry.get_collection(args.input_run)
        refs = [ref for ref, _ in registry.query_datasets(args.dataset_type, [args.input_run])]
        if not refs:
            raise DatasetNotFoundError(
                f"run {args.input_run!r} has no {args.dataset_type} datasets"
            )
        already = {
            ref.id
            for ref, ts in _certified(butler, args.calib_collection, args.dataset_type)
            if ts == timespan
        }
        # One change: a refused certify must not leave the new collection behind.
        butler.writes.apply(
            ChangeSet(
                what=f"certify {args.dataset_type} into {args.calib_collection}",
                collections=(NewCollection(args.calib_collection, CollectionType.CALIBRATION),),
                certifications=(
                    Certification(args.calib_collection, tuple(str(r.id) for r in refs), timespan),
                ),
            )
        )
    count = len([r for r in refs if r.id not in already])
    print(
        f"certified {count} {args.dataset_type} into {args.calib_collection} for {timespan}"
        + (f" ({len(refs) - count} already certified so)" if count < len(refs) else "")
    )
    return 0


def _certified(butler: Butler, collection: str, dataset_type: str) -> list[tuple[Any, Timespan]]:
    known = {c.name: c.type for c in butler.registry.query_collections()}
    if known.get(collection) is not CollectionType.CALIBRATION:
        return []  # new (or not a CALIBRATION collection: the certify will say so)
    return list(butler.registry.query_calibrations(collection, dataset_type))


def cmd_decertify(args: argparse.Namespace) -> int:
    timespan = Timespan.from_times(args.begin_date, args.end_date)
    data_ids = None if args.data_id is None else (parse_data_id_args(args.data_id),)
    with open_butler(args.repo, args.actor) as butler:
        before = _live_ranges(butler, args.calib_collection, args.dataset_type)
        butler.writes.apply(Decertify(args.calib_collection, args.dataset_type, timespan, data_ids))
        after = _live_ranges(butler, args.calib_collection, args.dataset_type)
    count = len(before - after)
    print(f"decertified {timespan} from {count} validity ranges in {args.calib_collection}")
    return 0


def _live_ranges(butler: Butler, collection: str, dataset_type: str) -> set[tuple[str, str]]:
    return {
        (str(ref.id), str(ts))
        for ref, ts in butler.registry.query_calibrations(collection, dataset_type)
    }


def cmd_collection_chain(args: argparse.Namespace) -> int:
    with open_butler(args.repo, args.actor) as butler:
        butler.writes.apply(
            ChangeSet(
                what=f"chain {args.parent} ({args.mode})",
                chains=(ChainChange(args.parent, tuple(args.children), args.mode),),
            )
        )
        children = butler.registry.get_chain(args.parent)
    print(f"{args.parent}: {', '.join(children) or '(empty)'}")
    return 0


def cmd_freeze(args: argparse.Namespace) -> int:
    require_no_registry_service(args.repo, "freeze-collection")
    with open_butler(args.repo, args.actor) as butler:
        butler.registry.freeze_collection(args.collection)
    print(f"collection {args.collection} is frozen")
    return 0
