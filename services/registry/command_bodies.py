"""Registry commands ⇄ the plain values of their RegistryCommand body branches.

One ``*_body`` / ``*_from`` pair per command type, named in the table of command types
(command_types.py). Values follow fastavro's conventions (dicts, lists); the shapes are the
branches of schemas/RegistryCommand.v<N>.avsc. RegistryCommand v2 carried suites in the
``Certify`` branch (``adjustments`` and ``further`` items): such bodies still read back as
a ``CertifySuite``, which v3 writes as its own branch.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.dimensions import DataId
from ..core.timespan import Timespan
from ..datastore.stored import StoredFile
from .changes import Certification, ChainChange, ChangeSet, NewCollection, check_files
from .collections import CollectionType
from .commands import Certify, Decertify, IngestRaw, Installation, SetChain
from .datasets import DatasetRef, DatasetType
from .suites import CertifyItem, CertifySuite, ValidityAdjustment

Body = dict[str, Any]


def _ts(ts: Timespan | None) -> dict[str, int | None] | None:
    return None if ts is None else {"begin_ns": ts.begin, "end_ns": ts.end}


def ingest_body(cmd: IngestRaw) -> Body:
    return {
        "run": cmd.run,
        "file": cmd.file,
        "arrival_id": cmd.arrival_id,
        "detected_at_ns": cmd.detected_at_ns,
        "records": [
            {
                "element": element,
                "values": {k: v for k, v in record.items() if k != "timespan"},
                "timespan": _ts(record.get("timespan")),
            }
            for element, record in cmd.records
        ],
        "installations": [vars(i) for i in cmd.installations],
        "datasets": [
            _stored_dataset(ref, stored)
            for ref, stored in zip(cmd.datasets, cmd.stored, strict=True)
        ],
    }


def ingest_from(fields: Mapping[str, Any]) -> IngestRaw:
    datasets, stored = _stored_datasets_from(fields["datasets"])
    records = []
    for r in fields["records"]:
        record = dict(r["values"])
        if r["timespan"] is not None:
            record["timespan"] = Timespan(r["timespan"]["begin_ns"], r["timespan"]["end_ns"])
        records.append((r["element"], record))
    return IngestRaw(
        run=fields["run"],
        file=fields["file"],
        records=tuple(records),
        installations=tuple(Installation(**i) for i in fields["installations"]),
        datasets=tuple(datasets),
        stored=tuple(stored),
        arrival_id=fields["arrival_id"],
        detected_at_ns=fields["detected_at_ns"],
    )


def certify_body(cmd: Certify) -> Body:
    return {
        "collection": cmd.collection,
        "dataset_ids": list(cmd.dataset_ids),
        "begin_ns": cmd.timespan.begin,
        "end_ns": cmd.timespan.end,
        "request_id": cmd.request_id,
        "adjustments": [],
        "further": [],
    }


def certify_from(fields: Mapping[str, Any]) -> Certify | CertifySuite:
    if fields.get("adjustments") or fields.get("further"):  # a v2 suite
        return _suite_from(fields["collection"], [fields, *fields["further"]], fields)
    return Certify(
        fields["collection"],
        tuple(fields["dataset_ids"]),
        Timespan(fields["begin_ns"], fields["end_ns"]),
        fields["request_id"],
    )


def suite_body(cmd: CertifySuite) -> Body:
    return {
        "collection": cmd.collection,
        "items": [
            {
                "dataset_ids": list(item.dataset_ids),
                "begin_ns": item.timespan.begin,
                "end_ns": item.timespan.end,
            }
            for item in cmd.items
        ],
        "adjustments": [_adjustment(a) for a in cmd.adjustments],
        "request_id": cmd.request_id,
    }


def suite_from(fields: Mapping[str, Any]) -> CertifySuite:
    return _suite_from(fields["collection"], fields["items"], fields)


def _suite_from(
    collection: str, items: Sequence[Mapping[str, Any]], fields: Mapping[str, Any]
) -> CertifySuite:
    return CertifySuite(
        collection,
        tuple(
            CertifyItem(tuple(i["dataset_ids"]), Timespan(i["begin_ns"], i["end_ns"]))
            for i in items
        ),
        tuple(
            ValidityAdjustment(
                a["dataset_type"], dict(a["data_id"]), a["action"], a["begin_ns"], a["end_ns"]
            )
            for a in fields["adjustments"]
        ),
        fields["request_id"],
    )


def _adjustment(adjustment: ValidityAdjustment) -> Body:
    return {
        "dataset_type": adjustment.dataset_type,
        "data_id": dict(adjustment.data_id),
        "action": adjustment.action,
        "begin_ns": adjustment.begin,
        "end_ns": adjustment.end,
    }


def decertify_body(cmd: Decertify) -> Body:
    return {
        "collection": cmd.collection,
        "dataset_type": cmd.dataset_type,
        "begin_ns": cmd.timespan.begin,
        "end_ns": cmd.timespan.end,
        "data_ids": None if cmd.data_ids is None else [dict(d) for d in cmd.data_ids],
        "request_id": cmd.request_id,
    }


def decertify_from(fields: Mapping[str, Any]) -> Decertify:
    data_ids = fields["data_ids"]
    return Decertify(
        fields["collection"],
        fields["dataset_type"],
        Timespan(fields["begin_ns"], fields["end_ns"]),
        None if data_ids is None else tuple(data_ids),
        fields["request_id"],
    )


def chain_body(cmd: SetChain) -> Body:
    return {"parent": cmd.parent, "children": list(cmd.children)}


def chain_from(fields: Mapping[str, Any]) -> SetChain:
    return SetChain(fields["parent"], tuple(fields["children"]))


def change_set_body(cmd: ChangeSet) -> Body:
    check_files(cmd)  # each dataset travels with its one file
    files = {s.dataset_id: s for s in cmd.stored}
    return {
        "what": cmd.what,
        "dataset_types": [
            {
                "name": t.name,
                "dimensions": list(t.dimensions),
                "storage_class": t.storage_class,
                "is_calibration": t.is_calibration,
            }
            for t in cmd.dataset_types
        ],
        "collections": [
            {"name": c.name, "type": c.type.value, "doc": c.doc, "must_be_new": c.must_be_new}
            for c in cmd.collections
        ],
        "datasets": [_stored_dataset(ref, files[ref.id]) for ref in cmd.datasets],
        "certifications": [
            {
                "collection": c.collection,
                "dataset_ids": list(c.dataset_ids),
                "begin_ns": c.timespan.begin,
                "end_ns": c.timespan.end,
            }
            for c in cmd.certifications
        ],
        "chains": [
            {"parent": c.parent, "children": list(c.children), "mode": c.mode} for c in cmd.chains
        ],
    }


def change_set_from(fields: Mapping[str, Any]) -> ChangeSet:
    datasets, stored = _stored_datasets_from(fields["datasets"])
    return ChangeSet(
        what=fields["what"],
        dataset_types=tuple(
            DatasetType(t["name"], tuple(t["dimensions"]), t["storage_class"], t["is_calibration"])
            for t in fields["dataset_types"]
        ),
        collections=tuple(
            NewCollection(c["name"], CollectionType(c["type"]), c["doc"], c["must_be_new"])
            for c in fields["collections"]
        ),
        datasets=tuple(datasets),
        stored=tuple(stored),
        certifications=tuple(
            Certification(
                c["collection"], tuple(c["dataset_ids"]), Timespan(c["begin_ns"], c["end_ns"])
            )
            for c in fields["certifications"]
        ),
        chains=tuple(
            ChainChange(c["parent"], tuple(c["children"]), c["mode"]) for c in fields["chains"]
        ),
    )


def _stored_dataset(ref: DatasetRef, stored: StoredFile) -> Body:
    """A StoredDataset value: the dataset, its type's definition and its file."""
    return {
        "dataset_id": str(ref.id),
        "dataset_type": ref.dataset_type.name,
        "dimensions": list(ref.dataset_type.dimensions),
        "storage_class": ref.dataset_type.storage_class,
        "is_calibration": ref.dataset_type.is_calibration,
        "data_id": dict(ref.data_id),
        "run": ref.run,
        "path": stored.path,
        "formatter": stored.formatter,
        "file_size": stored.file_size,
        "checksum": stored.checksum,
        "locator": stored.locator,
    }


def _stored_datasets_from(
    values: Sequence[Mapping[str, Any]],
) -> tuple[list[DatasetRef], list[StoredFile]]:
    datasets, stored = [], []
    for d in values:
        dt = DatasetType(
            d["dataset_type"], tuple(d["dimensions"]), d["storage_class"], d["is_calibration"]
        )
        ref = DatasetRef(uuid.UUID(d["dataset_id"]), dt, DataId(dict(d["data_id"])), d["run"])
        datasets.append(ref)
        stored.append(
            StoredFile(
                ref.id,
                d["path"],
                d["formatter"],
                d["storage_class"],
                d["file_size"],
                d["checksum"],
                d["locator"],
            )
        )
    return datasets, stored
