"""Domain objects ⇄ Avro values, for every message obsbus sends (schemas/ has the shapes).

Each registry command type is its own branch of the command union. A new command type is a
new branch: a registry service too old to know it cannot read it and dead-letters it, rather
than apply part of it (tests/test_schemas.py checks that rule). RegistryCommand v2 carried
suites in the ``Certify`` branch (``adjustments`` and ``further`` items); such values still
read back as a ``CertifySuite``, which v3 writes as its own branch.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.dimensions import DataId
from ..core.errors import InputError
from ..core.timespan import Timespan, now_ns
from ..datastore.datastore import StoredFile
from ..registry.changes import (
    Certification,
    ChainChange,
    ChangeSet,
    NewCollection,
    check_files,
)
from ..registry.collections import CollectionType
from ..registry.commands import (
    Certify,
    Command,
    Decertify,
    IngestRaw,
    Installation,
    SetChain,
)
from ..registry.datasets import DatasetRef, DatasetType
from ..registry.suites import CertifyItem, CertifySuite, ValidityAdjustment

_BRANCHES = {
    IngestRaw: "obsbus.IngestRaw",
    Certify: "obsbus.Certify",
    CertifySuite: "obsbus.CertifySuite",
    Decertify: "obsbus.Decertify",
    SetChain: "obsbus.SetChain",
    ChangeSet: "obsbus.ChangeSet",
}


def _ts(ts: Timespan | None) -> dict[str, int | None] | None:
    return None if ts is None else {"begin_ns": ts.begin, "end_ns": ts.end}


def _from_ts(value: Mapping[str, Any] | None) -> Timespan | None:
    return None if value is None else Timespan(value["begin_ns"], value["end_ns"])


def registry_command(
    cmd: Command,
    issued_by: str,
    *,
    arrival: Mapping[str, Any] | None = None,
    command_id: str | None = None,
) -> dict[str, Any]:
    """A RegistryCommand value (``arrival``: the RawArrival an IngestRaw answers)."""
    if isinstance(cmd, IngestRaw):
        body: dict[str, Any] = {
            "run": cmd.run,
            "file": cmd.file,
            "arrival_id": None if arrival is None else arrival["arrival_id"],
            "detected_at_ns": None if arrival is None else arrival["detected_at_ns"],
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
    elif isinstance(cmd, Certify):
        body = {
            "collection": cmd.collection,
            "dataset_ids": list(cmd.dataset_ids),
            "begin_ns": cmd.timespan.begin,
            "end_ns": cmd.timespan.end,
            "request_id": cmd.request_id,
            "adjustments": [],
            "further": [],
        }
    elif isinstance(cmd, CertifySuite):
        body = _suite_body(cmd)
    elif isinstance(cmd, ChangeSet):
        body = _change_set_body(cmd)
    elif isinstance(cmd, Decertify):
        body = {
            "collection": cmd.collection,
            "dataset_type": cmd.dataset_type,
            "begin_ns": cmd.timespan.begin,
            "end_ns": cmd.timespan.end,
            "data_ids": None if cmd.data_ids is None else [dict(d) for d in cmd.data_ids],
            "request_id": cmd.request_id,
        }
    else:
        body = {"parent": cmd.parent, "children": list(cmd.children)}
    return {
        "command_id": command_id or str(uuid.uuid4()),
        "issued_at_ns": now_ns(),
        "issued_by": issued_by,
        "body": (_BRANCHES[type(cmd)], body),
    }


def command_from(value: Mapping[str, Any]) -> Command:
    """The domain command inside a decoded RegistryCommand value."""
    body = value["body"]
    name, fields = body if isinstance(body, tuple) else (_guess_branch(body), body)
    if name == "obsbus.IngestRaw":
        datasets, stored = _stored_datasets_from(fields["datasets"])
        records = []
        for r in fields["records"]:
            record = dict(r["values"])
            if r["timespan"] is not None:
                record["timespan"] = _from_ts(r["timespan"])
            records.append((r["element"], record))
        return IngestRaw(
            run=fields["run"],
            file=fields["file"],
            records=tuple(records),
            installations=tuple(Installation(**i) for i in fields["installations"]),
            datasets=tuple(datasets),
            stored=tuple(stored),
        )
    if name == "obsbus.CertifySuite":
        return _suite_from(fields["collection"], fields["items"], fields)
    if name == "obsbus.Certify" and (fields.get("adjustments") or fields.get("further")):
        # RegistryCommand v2 carried a suite in the Certify branch (v3 has its own branch).
        return _suite_from(fields["collection"], [fields, *fields["further"]], fields)
    if name == "obsbus.Certify":
        return Certify(
            fields["collection"],
            tuple(fields["dataset_ids"]),
            Timespan(fields["begin_ns"], fields["end_ns"]),
            fields["request_id"],
        )
    if name == "obsbus.Decertify":
        data_ids = fields["data_ids"]
        return Decertify(
            fields["collection"],
            fields["dataset_type"],
            Timespan(fields["begin_ns"], fields["end_ns"]),
            None if data_ids is None else tuple(data_ids),
            fields["request_id"],
        )
    if name == "obsbus.SetChain":
        return SetChain(fields["parent"], tuple(fields["children"]))
    if name == "obsbus.ChangeSet":
        return _change_set_from(fields)
    raise InputError(f"unknown registry command {name!r}")


def _stored_dataset(ref: DatasetRef, stored: StoredFile) -> dict[str, Any]:
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


def _change_set_body(cmd: ChangeSet) -> dict[str, Any]:
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


def _change_set_from(fields: Mapping[str, Any]) -> ChangeSet:
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


def _suite_body(cmd: CertifySuite) -> dict[str, Any]:
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
        "adjustments": [adjustment_value(a) for a in cmd.adjustments],
        "request_id": cmd.request_id,
    }


def _suite_from(
    collection: str, items: Sequence[Mapping[str, Any]], fields: Mapping[str, Any]
) -> CertifySuite:
    return CertifySuite(
        collection,
        tuple(
            CertifyItem(tuple(i["dataset_ids"]), Timespan(i["begin_ns"], i["end_ns"]))
            for i in items
        ),
        tuple(adjustment_from(a) for a in fields["adjustments"]),
        fields["request_id"],
    )


def adjustment_value(adjustment: ValidityAdjustment) -> dict[str, Any]:
    """A ValidityAdjustment (RegistryCommand) or ValidityChange (BlessingRequest) value."""
    return {
        "dataset_type": adjustment.dataset_type,
        "data_id": dict(adjustment.data_id),
        "action": adjustment.action,
        "begin_ns": adjustment.begin,
        "end_ns": adjustment.end,
    }


def adjustment_from(value: Mapping[str, Any]) -> ValidityAdjustment:
    return ValidityAdjustment(
        value["dataset_type"],
        dict(value["data_id"]),
        value["action"],
        value["begin_ns"],
        value["end_ns"],
    )


def _guess_branch(body: Mapping[str, Any]) -> str:
    # Only needed if a reader returns union branches without their names.
    if "records" in body:
        return "obsbus.IngestRaw"
    if "items" in body:
        return "obsbus.CertifySuite"
    if "what" in body:
        return "obsbus.ChangeSet"
    if "dataset_ids" in body:
        return "obsbus.Certify"
    if "dataset_type" in body:
        return "obsbus.Decertify"
    return "obsbus.SetChain"
