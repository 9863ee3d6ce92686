"""Domain objects ⇄ Avro values, for every message obsbus sends (schemas/ has the shapes).

A calibration suite (``CertifySuite``) travels as the ``Certify`` branch of the command union
(RegistryCommand v2 gave it ``adjustments`` and ``further`` items, both defaulting to empty, so
every version reads every other): its first item fills the plain Certify fields. A Certify
value with adjustments or further items reads back as a CertifySuite, a plain one as Certify
(a suite of one without adjustments is the same change).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from ..core.dimensions import DataId
from ..core.errors import InputError
from ..core.timespan import Timespan, now_ns
from ..datastore.datastore import StoredFile
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
    CertifySuite: "obsbus.Certify",
    Decertify: "obsbus.Decertify",
    SetChain: "obsbus.SetChain",
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
                {
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
        datasets, stored = [], []
        for d in fields["datasets"]:
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
    if name == "obsbus.Certify" and (fields.get("adjustments") or fields.get("further")):
        return _suite_from(fields)
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
    raise InputError(f"unknown registry command {name!r}")


def _suite_body(cmd: CertifySuite) -> dict[str, Any]:
    first, *further = cmd.items
    return {
        "collection": cmd.collection,
        "dataset_ids": list(first.dataset_ids),
        "begin_ns": first.timespan.begin,
        "end_ns": first.timespan.end,
        "request_id": cmd.request_id,
        "adjustments": [adjustment_value(a) for a in cmd.adjustments],
        "further": [
            {
                "dataset_ids": list(item.dataset_ids),
                "begin_ns": item.timespan.begin,
                "end_ns": item.timespan.end,
            }
            for item in further
        ],
    }


def _suite_from(fields: Mapping[str, Any]) -> CertifySuite:
    items = [fields, *fields["further"]]
    return CertifySuite(
        fields["collection"],
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
    if "dataset_ids" in body:
        return "obsbus.Certify"
    if "dataset_type" in body:
        return "obsbus.Decertify"
    return "obsbus.SetChain"
