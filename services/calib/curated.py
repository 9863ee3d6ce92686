"""Instrument signature data ("curated calibrations"): a tree written as a whole.

The tree's layout and checks are in ``services/calib/curated_tree.py``.

``write_curated_calibrations`` writes one tree into NEW runs, one per start time found in the
tree (a run holds one dataset per type and data ID, and a detector's defects have several
versions): ``<I>/calib/<label>/curated/<UTC timestamp>/<compact ISO TAI start>``, chained in
start order as ``<I>/calib/<label>/curated/<UTC timestamp>``. It certifies each file for its
range into a NEW CALIBRATION collection ``<I>/calib/<label>`` and puts that collection first in
the chain ``<I>/calib``, all in one transaction (registry and files). A label already used is
refused; nothing is overwritten, so every earlier write stays as it was for provenance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..butler import Butler, ingest_file
from ..core.errors import CollectionExistsError, InputError, UnregisteredDataIdError
from ..core.timespan import Timespan, ns_to_iso
from ..instruments.base import Instrument
from ..registry.changes import Certification, ChainChange, ChangeSet, NewCollection
from ..registry.collections import CollectionType
from ..registry.datasets import DatasetRef, DatasetType, IdGenerationMode
from ..writes import apply_or_hold
from .curated_tree import CuratedType, default_source, read_tree

__all__ = ["CuratedWrite", "curated_run", "start_run", "write_curated_calibrations"]

# Storage classes a curated type had in repositories made before it got its own, still
# written to there: a dataset type's storage class cannot change under existing datasets.
# (Those repositories' cameras are plain dicts, without the ``detector`` component.)
_EARLIER_STORAGE_CLASSES: Mapping[str, frozenset[str]] = {
    "camera": frozenset({"StructuredDataDict"})
}


@dataclass(frozen=True)
class CuratedWrite:
    """What ``write_curated_calibrations`` wrote."""

    run: str  # <I>/calib/<label>/curated/<UTC timestamp>: CHAINED, the runs below in order
    runs: list[str]  # one RUN per start time: <run>/<compact ISO TAI start>
    collection: str
    chain: str
    chain_children: list[str]  # the chain after the write (the new collection first)
    certified: list[tuple[DatasetRef, Timespan, Path]]  # dataset, validity, source file


def curated_run(instrument: type[Instrument], label: str, when: datetime | None = None) -> str:
    """``<I>/calib/<label>/curated/<UTC timestamp>``, e.g.
    ``SimCam/calib/A/curated/20240501T120000Z``: the CHAINED collection of one write's runs."""
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{instrument.calib_collection(label)}/curated/{stamp}"


def start_run(parent: str, begin: int) -> str:
    """The run under ``parent`` holding the files valid from ``begin`` (compact ISO TAI,
    e.g. ``.../20240315T120000``): a run holds one dataset per type and data ID, so each
    start time of the tree gets its own."""
    return f"{parent}/{(ns_to_iso(begin) or '').replace('-', '').replace(':', '')}"


def _check_label(instrument: type[Instrument], label: str) -> None:
    if not label or label.strip() != label or "/" in label or label in (".", ".."):
        raise InputError(
            f"invalid label {label!r}: one path segment without '/' or surrounding spaces "
            f"(it names the collection {instrument.calib_collection('<label>')})"
        )


def _refuse_used(existing: Mapping[str, CollectionType], names: Sequence[str]) -> None:
    for name in names:
        if name in existing:
            raise CollectionExistsError(
                f"label already used: collection {name!r} exists ({existing[name].value}); "
                "curated calibrations are never overwritten, choose a new label"
            )


def _registered_type(butler: Butler, curated: CuratedType) -> DatasetType:
    """``curated``'s dataset type, or the one an older repository has (registered by the
    write's change set)."""
    wanted = curated.dataset_type
    existing = {t.name: t for t in butler.registry.query_dataset_types()}.get(curated.name)
    earlier = _EARLIER_STORAGE_CLASSES.get(curated.name, frozenset())
    if existing is not None and existing.storage_class in earlier:
        kept = DatasetType(
            wanted.name, wanted.dimensions, existing.storage_class, wanted.is_calibration
        )
        if kept == existing:
            return existing
    return wanted


def write_curated_calibrations(
    butler: Butler,
    instrument: type[Instrument],
    label: str,
    source: Path | None = None,
    *,
    when: datetime | None = None,
) -> CuratedWrite:
    """Write the curated tree of ``instrument`` (default: the one it ships) under ``label``.

    All or nothing: the new runs (one per start time, chained as ``<I>/calib/<label>/curated/
    <UTC timestamp>``) with their files, the new CALIBRATION collection with every file
    certified for its range, and ``<I>/calib`` redefined with the new collection first.
    """
    _check_label(instrument, label)
    registry = butler.registry
    collection = instrument.calib_collection(label)
    chain = instrument.calib_collection()
    parent = curated_run(instrument, label, when)
    _refuse_used({c.name: c.type for c in registry.query_collections()}, [collection, parent])
    if registry.fetch_dimension_record("instrument", {"name": instrument.name}) is None:
        raise UnregisteredDataIdError(
            f"instrument {instrument.name} is not registered in this repository; run "
            f"`obsbus register-instrument REPO {instrument.name}` first"
        )
    tree = read_tree(instrument, default_source(instrument) if source is None else source)
    doc = f"curated calibrations of {instrument.name}, label {label}, from {tree.root}"
    runs = {b: start_run(parent, b) for b in sorted({f.timespan.db_begin for f in tree.files})}
    dataset_types = {c.name: _registered_type(butler, c) for c in tree.types}
    refs = [
        registry.make_ref(
            dataset_types[f.curated_type.name],
            f.data_id,
            runs[f.timespan.db_begin],
            IdGenerationMode.DATAID_TYPE_RUN,
        )
        for f in tree.files
    ]
    with butler.datastore.transaction(batch_sync=True) as files_txn:
        stored = []
        for f, ref in zip(tree.files, refs, strict=True):
            item = ingest_file(files_txn, f.path, ref, "copy")
            if item.checksum != f.checksum:
                raise InputError(
                    f"{f.path} changed while being written (its content is not what was "
                    "checked); nothing was written, run the command again"
                )
            stored.append(item)
        files_txn.make_durable()
        # One change, all or nothing; the collections must be new (a concurrent write may
        # have taken the label since the check above).
        changes = ChangeSet(
            what=f"curated calibrations of {instrument.name} into {collection}",
            dataset_types=tuple(dataset_types.values()),
            collections=tuple(
                NewCollection(name, type_, doc, must_be_new=True)
                for name, type_ in (
                    (collection, CollectionType.CALIBRATION),
                    (parent, CollectionType.CHAINED),
                    *((run, CollectionType.RUN) for run in runs.values()),
                )
            ),
            datasets=tuple(refs),
            stored=tuple(stored),
            certifications=tuple(
                Certification(collection, (str(ref.id),), f.timespan)
                for f, ref in zip(tree.files, refs, strict=True)
            ),
            chains=(
                ChainChange(parent, tuple(runs.values())),
                ChainChange(chain, (collection,), "prepend"),
            ),
        )
        try:
            unanswered = apply_or_hold(butler.writes, changes)
        except UnregisteredDataIdError as err:
            if err.index is None:
                raise
            raise UnregisteredDataIdError(
                f"{tree.files[err.index].path}: {err}", err.index
            ) from err
    if unanswered is not None:
        raise unanswered  # sent, unanswered: its files stay for when it is applied
    certified = [(ref, f.timespan, f.path) for f, ref in zip(tree.files, refs, strict=True)]
    children = registry.get_chain(chain)
    return CuratedWrite(parent, list(runs.values()), collection, chain, children, certified)
