"""Message schemas (schemas/*.avsc) and the single-object codec (services/bus/codec.py).

Every schema file is checked for form (names, docs, versions, fingerprints) and every pair of
versions of a record for compatibility in both directions, by writing generated example values
with one version and reading them with the other through the codec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import random
import re
import subprocess
import sys
import typing
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer

from services import messages
from services.bus.topics import ALL_TOPICS
from services.core.errors import (
    SchemaFileError,
    UndecodableMessageError,
    UnencodableMessageError,
    UnknownSchemaError,
)
from services.messages import codec
from services.messages.codec import Message, Schema, SchemaRegistry

REGISTRY = codec.default_registry()
SCHEMA_FILES = sorted(
    p.name for p in resources.files("schemas").iterdir() if p.name.endswith(".avsc")
)
NS_2024 = 1_714_564_800_000_000_000  # 2024-05-01T12:00:00 TAI, roughly


# --- the reference CRC-64-AVRO of the Avro specification ------------------------------------

_EMPTY64 = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _table()


def reference_fingerprint(data: bytes) -> int:
    """The specification's ``fingerprint64`` (Schema Fingerprints), transcribed."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


# From apache/avro share/test/data/schema-tests.txt (signed 64-bit, as published).
SPEC_VECTORS = [
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('"long"', -3434872931120570953),
    ('"string"', -8142146995180207161),
    ("[]", -1241056759729112623),
    ('{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
]


@pytest.mark.parametrize(("text", "signed"), SPEC_VECTORS)
def test_fingerprint_matches_the_spec_vectors(text: str, signed: int) -> None:
    expected = signed & 0xFFFF_FFFF_FFFF_FFFF
    assert reference_fingerprint(text.encode()) == expected
    assert codec.crc64_avro(text) == expected
    assert codec.schema_fingerprint(text) == expected


def test_int_fingerprint_and_header() -> None:
    assert codec.schema_fingerprint('"int"') == 0x7275D51A3F395C8F
    # The specification's single-object header of "int" (also in Avro's own tests).
    assert codec.single_object_header(0x7275D51A3F395C8F) == bytes.fromhex("c3018f5c393f1ad57572")
    # The canonical form drops docs, defaults and namespaces (names become full names).
    assert codec.schema_fingerprint('{"type": "int", "doc": "x"}') == 0x7275D51A3F395C8F


def test_every_schema_fingerprint_matches_the_reference() -> None:
    for schema in REGISTRY.schemas():
        assert schema.fingerprint == reference_fingerprint(schema.canonical.encode())


# --- schema files -----------------------------------------------------------------------------


def _walk_records(node: Any) -> Iterator[dict[str, Any]]:
    """Every record definition in a raw (as written) schema."""
    if isinstance(node, list):
        for branch in node:
            yield from _walk_records(branch)
    elif isinstance(node, dict):
        if node.get("type") == "record":
            yield node
            for f in node["fields"]:
                yield from _walk_records(f["type"])
        elif node.get("type") == "array":
            yield from _walk_records(node["items"])
        elif node.get("type") == "map":
            yield from _walk_records(node["values"])


def _types(node: Any) -> set[str]:
    if isinstance(node, list):
        return {t for branch in node for t in _types(branch)}
    if isinstance(node, dict):
        return {str(node["type"])}
    return {str(node)}


@pytest.mark.parametrize("file_name", SCHEMA_FILES)
def test_schema_file_form(file_name: str) -> None:
    raw = json.loads((resources.files("schemas") / file_name).read_text(encoding="utf-8"))
    match = re.fullmatch(r"([A-Z][A-Za-z0-9]*)\.v([1-9][0-9]*)\.avsc", file_name)
    assert match, f"{file_name}: name files <Record>.v<N>.avsc"
    assert raw["type"] == "record" and raw["name"] == match[1]
    assert raw["namespace"] == "obsbus"
    schema = REGISTRY.get(match[1], int(match[2]))
    assert schema.full_name == f"obsbus.{match[1]}" and schema.source == file_name
    for record in _walk_records(raw):
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", record["name"]), record["name"]
        assert "namespace" not in record or record is raw, "nested records inherit obsbus"
        assert record.get("doc", "").strip(), f"record {record['name']} has no doc"
        for f in record["fields"]:
            where = f"{record['name']}.{f['name']}"
            assert re.fullmatch(r"[a-z][a-z0-9_]*", f["name"]), f"{where}: use snake_case"
            assert f.get("doc", "").strip(), f"{where} has no doc"
            if f["name"].endswith("_ns"):
                assert _types(f["type"]) <= {"null", "long"}, f"{where}: times are long ns"
                assert "nanoseconds since 1970-01-01" in f["doc"], f"{where}: say the epoch"
            if isinstance(f["type"], list) and f["type"][0] == "null":
                assert f.get("default", "missing") is None, f"{where}: nullable -> default null"


def test_every_topic_has_a_schema_and_every_schema_a_topic() -> None:
    assert REGISTRY.record_names() == sorted({t.record for t in ALL_TOPICS})


def test_versions_are_contiguous_and_fingerprints_distinct() -> None:
    seen: dict[int, str] = {}
    for name in REGISTRY.record_names():
        versions = REGISTRY.versions(name)
        assert [s.version for s in versions] == list(range(1, len(versions) + 1)), name
        assert REGISTRY.latest(name) is versions[-1]
        for s in versions:
            assert s.fingerprint not in seen, (
                f"{s.label} has the fingerprint of {seen.get(s.fingerprint)}"
            )
            seen[s.fingerprint] = s.label
            assert REGISTRY.by_fingerprint(s.fingerprint) is s


# --- example values generated from a schema ---------------------------------------------------

_LONGS = [NS_2024, 0, -(2**63), 2**63 - 1]


def _widest_union(node: Any, named: dict[str, Any], seen: set[str]) -> int:
    if isinstance(node, str):
        if node in named and node not in seen:
            seen.add(node)
            return _widest_union(named[node], named, seen)
        return 1
    if isinstance(node, list):
        return max([len(node), *(_widest_union(b, named, seen) for b in node)])
    kind = node["type"]
    if kind == "record":
        seen.add(node["name"])
        return max([1, *(_widest_union(f["type"], named, seen) for f in node["fields"])])
    if kind == "array":
        return _widest_union(node["items"], named, seen)
    if kind == "map":
        return _widest_union(node["values"], named, seen)
    return 1


def _example(node: Any, named: dict[str, Any], k: int, empty: bool, depth: int = 0) -> Any:
    """Variant ``k`` of a value of a (fastavro-parsed) schema.

    Union ``i`` takes branch ``k % len(branches)``, so variants 0..widest-1 cover every
    branch of every union; ``empty`` makes every array and map empty.
    """
    if isinstance(node, str):
        simple = {
            "null": None,
            "boolean": k % 2 == 0,
            "int": k * 7 - 3,
            "long": _LONGS[k % len(_LONGS)],
            "float": 0.5 + k,
            "double": 0.25 + k,
            "string": f"s{k}-é",
            "bytes": bytes([k % 256, 0xFF, 0]),
        }
        if node in simple:
            return simple[node]
        return _example(named[node], named, k, empty, depth)
    if isinstance(node, list):
        if depth > 8 and "null" in node:
            return None
        branch = node[k % len(node)]
        value = _example(branch, named, k, empty, depth + 1)
        records = [b for b in node if isinstance(b, dict) and b["type"] == "record"]
        if len(records) > 1 and isinstance(branch, dict) and branch["type"] == "record":
            return (branch["name"], value)
        return value
    kind = node["type"]
    if kind == "record":
        return {f["name"]: _example(f["type"], named, k, empty, depth + 1) for f in node["fields"]}
    n = 0 if empty or depth > 8 else 1 + k % 2
    if kind == "array":
        return [_example(node["items"], named, k + i, empty, depth + 1) for i in range(n)]
    if kind == "map":
        return {
            f"key{i}": _example(node["values"], named, k + i, empty, depth + 1) for i in range(n)
        }
    if kind == "enum":
        return node["symbols"][k % len(node["symbols"])]
    if kind == "fixed":
        return bytes(node["size"])
    return _example(kind, named, k, empty, depth)


def example_values(schema: Schema) -> list[Any]:
    named: dict[str, Any] = schema.parsed["__named_schemas"]
    widest = max(2, _widest_union(schema.parsed, named, set()))
    values = [_example(schema.parsed, named, k, empty=False) for k in range(widest)]
    values.append(_example(schema.parsed, named, 0, empty=True))
    return values


# --- compatibility ----------------------------------------------------------------------------


def _branches(value: Any) -> set[str]:
    """Names of the union branches (named records) a value uses, at any depth."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return {value[0]} | _branches(value[1])
    if isinstance(value, dict):
        return set().union(*(_branches(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_branches(v) for v in value))
    return set()


def _new_branches(value: Any, reader: Schema) -> set[str]:
    return _branches(value) - set(reader.parsed["__named_schemas"])


def incompatibilities(registry: SchemaRegistry, writer: Schema, reader: Schema) -> list[str]:
    """Why data written with ``writer`` cannot be read as ``reader`` (empty: it can).

    The one allowed exception: a value of a union branch the reader does not have (a new
    command type) must *fail* to decode, so an old service dead-letters it instead of
    applying part of it.
    """
    problems = []
    for value in example_values(writer):
        data = registry.encode_with(writer, value)
        if _new_branches(value, reader):
            with contextlib.suppress(UndecodableMessageError):
                registry.decode(data, reader=f"{reader.name}.v{reader.version}")
                problems.append(f"{writer.label} read as v{reader.version}: a new branch read")
            continue
        try:
            message = registry.decode(data, reader=f"{reader.name}.v{reader.version}")
        except UndecodableMessageError as err:
            problems.append(f"{writer.label} read as v{reader.version}: {err}")
            continue
        assert (message.record_name, message.version) == (writer.name, writer.version)
    return problems


def check_compatibility(registry: SchemaRegistry) -> list[str]:
    """Every pair of versions i < j: i's data read by j (backward), j's by i (forward)."""
    problems = []
    for name in registry.record_names():
        versions = registry.versions(name)
        for i, old in enumerate(versions):
            for new in versions[i + 1 :]:
                problems += [f"backward: {p}" for p in incompatibilities(registry, old, new)]
                problems += [f"forward: {p}" for p in incompatibilities(registry, new, old)]
    return problems


def test_all_versions_are_compatible_both_ways() -> None:
    assert check_compatibility(REGISTRY) == []


def _package_schema(record: str, version: int = 1) -> dict[str, Any]:
    path = resources.files("schemas") / f"{record}.v{version}.avsc"
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


def _folder(tmp_path: Path, *schemas: tuple[str, dict[str, Any]]) -> SchemaRegistry:
    for file_name, schema in schemas:
        (tmp_path / file_name).write_text(json.dumps(schema), encoding="utf-8")
    return SchemaRegistry(tmp_path)


def _with_field(schema: dict[str, Any], new_field: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "fields": [*schema["fields"], new_field]}


def test_a_compatible_v2_passes_and_resolves(tmp_path: Path) -> None:
    v1 = _package_schema("RawArrival")
    v2 = _with_field(
        v1, {"name": "host", "type": ["null", "string"], "default": None, "doc": "Host."}
    )
    registry = _folder(tmp_path, ("RawArrival.v1.avsc", v1), ("RawArrival.v2.avsc", v2))
    assert check_compatibility(registry) == []
    old = registry.get("RawArrival", 1)
    value = example_values(old)[0]
    data = registry.encode_with(old, value)
    # Read as the latest (v2) by default: the new field takes its default.
    assert registry.decode(data) == Message("RawArrival", 1, {**value, "host": None})
    new_data = registry.encode("RawArrival", {**value, "host": "obs1"})
    assert registry.decode(new_data, reader="RawArrival.v1") == Message("RawArrival", 2, value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # A new field without a default: v2 cannot read v1 data.
        (lambda s: _with_field(s, {"name": "host", "type": "string", "doc": "Host."}), "backward"),
        # A changed type: neither can read the other.
        (
            lambda s: {
                **s,
                "fields": [
                    {**f, "type": "string"} if f["name"] == "size" else f for f in s["fields"]
                ],
            },
            "backward forward",
        ),
        # A removed field that v1 has without a default: v1 cannot read v2 data.
        (
            lambda s: {**s, "fields": [f for f in s["fields"] if f["name"] != "watcher"]},
            "forward",
        ),
    ],
)
def test_the_check_catches_incompatible_versions(
    tmp_path: Path, change: Any, expected: str
) -> None:
    v1 = _package_schema("RawArrival")
    registry = _folder(tmp_path, ("RawArrival.v1.avsc", v1), ("RawArrival.v2.avsc", change(v1)))
    problems = check_compatibility(registry)
    assert problems
    assert {p.split(":")[0] for p in problems} == set(expected.split())
    assert all("\n" not in p for p in problems)


def test_a_new_command_type_is_refused_whole_by_older_readers(tmp_path: Path) -> None:
    v1 = _package_schema("RegistryCommand")
    body = next(f for f in v1["fields"] if f["name"] == "body")
    noop = {
        "type": "record",
        "name": "Noop",
        "doc": "Does nothing.",
        "fields": [{"name": "note", "type": "string", "doc": "Why."}],
    }
    v2 = {
        **v1,
        "fields": [{**f, "type": [*body["type"], noop]} if f is body else f for f in v1["fields"]],
    }
    registry = _folder(tmp_path, ("RegistryCommand.v1.avsc", v1), ("RegistryCommand.v2.avsc", v2))
    # Allowed: v1 reads every v2 command but the new type, which it refuses to decode.
    assert check_compatibility(registry) == []
    value = {
        "command_id": "c",
        "issued_at_ns": 0,
        "issued_by": "t",
        "body": ("obsbus.Noop", {"note": "x"}),
    }
    data = registry.encode("RegistryCommand", value)
    assert registry.decode(data).value["body"] == ("obsbus.Noop", {"note": "x"})
    with pytest.raises(UndecodableMessageError):
        registry.decode(data, reader="RegistryCommand.v1")


# --- round trips ------------------------------------------------------------------------------


def _id() -> str:
    return str(uuid.uuid4())


ARRIVAL = _id()
DATASET = _id()

# RegistryEvent v2's swap fields, null for every kind but "detector-swapped".
NO_SWAP = dict.fromkeys(
    ("instrument", "detector", "old_serial", "new_serial", "exposure", "since_ns")
)
REALISTIC: list[tuple[str, dict[str, Any]]] = [
    (
        "RawArrival",
        {
            "arrival_id": ARRIVAL,
            "path": "/data/landing/2024-05-01/HSC-0904010-050.fits",
            "folder": "/data/landing/2024-05-01",
            "size": 18_144_000,
            "mtime_ns": 1_714_564_763_123_456_789,
            "detected_at_ns": NS_2024,
            "watcher": "watcher-1",
        },
    ),
    (
        "IngestOutcome",
        {
            "file": "/data/landing/2024-05-01/HSC-0904010-050.fits",
            "status": "ingested",
            "reason": None,
            "message": "ingested raw for HSC exposure 904010 detector 50",
            "instrument": "HSC",
            "exposure": 904010,
            "detectors": [50],
            "dataset_ids": [DATASET],
            "swaps": [{"detector": 50, "old_serial": "S-0049", "new_serial": "S-0112"}],
            "arrival_id": ARRIVAL,
            "detected_at_ns": NS_2024,
            "finished_at_ns": NS_2024 + 850_000_000,
        },
    ),
    (
        "IngestOutcome",
        {
            "file": "/data/landing/2024-05-01/notes.txt",
            "status": "failed",
            "reason": "not_fits",
            "message": "notes.txt is not a FITS file: move it out of the landing folder",
            "instrument": None,
            "exposure": None,
            "detectors": [],
            "dataset_ids": [],
            "swaps": [],
            "arrival_id": None,
            "detected_at_ns": None,
            "finished_at_ns": NS_2024,
        },
    ),
    (
        "RegistryCommand",
        {
            "command_id": _id(),
            "issued_at_ns": NS_2024,
            "issued_by": "ingest-1",
            "body": (
                "obsbus.IngestRaw",
                {
                    "run": "HSC/raw/all",
                    "file": "/data/landing/2024-05-01/HSC-0904010-050.fits",
                    "arrival_id": ARRIVAL,
                    "detected_at_ns": NS_2024,
                    "records": [
                        {
                            "element": "exposure",
                            "values": {
                                "instrument": "HSC",
                                "id": 904010,
                                "physical_filter": "HSC-R",
                                "exposure_time": 30.0,
                                "dark_time": None,
                                "can_see_sky": True,
                            },
                            "timespan": {"begin_ns": NS_2024, "end_ns": NS_2024 + 30 * 10**9},
                        },
                        {"element": "day_obs", "values": {"id": 20240501}, "timespan": None},
                    ],
                    "installations": [
                        {
                            "instrument": "HSC",
                            "detector": 50,
                            "serial": "S-0112",
                            "since_ns": -(2**63),
                        }
                    ],
                    "datasets": [
                        {
                            "dataset_id": DATASET,
                            "dataset_type": "raw",
                            "dimensions": ["instrument", "exposure", "detector"],
                            "storage_class": "Exposure",
                            "is_calibration": False,
                            "data_id": {"instrument": "HSC", "exposure": 904010, "detector": 50},
                            "run": "HSC/raw/all",
                            "path": "HSC/raw/all/raw/904010/raw_HSC_904010_50.fits",
                            "formatter": "services.datastore.formatters.FitsExposureFormatter",
                            "file_size": 18_144_000,
                            "checksum": "blake2b:" + "ab" * 32,
                            "locator": None,
                        }
                    ],
                },
            ),
        },
    ),
    (
        "RegistryCommand",
        {
            "command_id": _id(),
            "issued_at_ns": NS_2024,
            "issued_by": "calib-1",
            "body": (
                "obsbus.Certify",
                {
                    "collection": "HSC/calib",
                    "dataset_ids": [DATASET],
                    "begin_ns": NS_2024,
                    "end_ns": None,
                    "request_id": _id(),
                    "adjustments": [
                        {
                            "dataset_type": "flat",
                            "data_id": {"instrument": "HSC", "detector": 50},
                            "action": "end",
                            "begin_ns": None,
                            "end_ns": NS_2024,
                        }
                    ],
                    "further": [{"dataset_ids": [_id()], "begin_ns": NS_2024, "end_ns": None}],
                },
            ),
        },
    ),
    (
        "RegistryCommand",
        {
            "command_id": _id(),
            "issued_at_ns": NS_2024,
            "issued_by": "alice",
            "body": (
                "obsbus.Decertify",
                {
                    "collection": "HSC/calib",
                    "dataset_type": "bias",
                    "begin_ns": None,
                    "end_ns": NS_2024,
                    "data_ids": [{"instrument": "HSC", "detector": 50}],
                    "request_id": None,
                },
            ),
        },
    ),
    (
        "RegistryCommand",
        {
            "command_id": _id(),
            "issued_at_ns": NS_2024,
            "issued_by": "alice",
            "body": ("obsbus.SetChain", {"parent": "HSC/defaults", "children": ["HSC/calib"]}),
        },
    ),
    (
        "RegistryEvent",
        {
            "command_id": _id(),
            "kind": "datasets-registered",
            "reason": None,
            "message": "registered 1 raw for HSC exposure 904010",
            "dataset_ids": [DATASET],
            "records_inserted": 2,
            "at_ns": NS_2024,
            "file": "/data/landing/2024-05-01/HSC-0904010-050.fits",
            **NO_SWAP,
        },
    ),
    (
        "RegistryEvent",
        {
            "command_id": _id(),
            "kind": "detector-swapped",
            "reason": None,
            "message": "HSC detector 50: 120 replaced by 999 from exposure 904010",
            "dataset_ids": [],
            "records_inserted": 0,
            "at_ns": NS_2024,
            "file": "/data/landing/2024-05-01/HSC-0904010-050.fits",
            "instrument": "HSC",
            "detector": 50,
            "old_serial": "120",
            "new_serial": "999",
            "exposure": 904010,
            "since_ns": NS_2024,
        },
    ),
    (
        "BlessingRequest",
        {
            "request_id": _id(),
            "collection": "HSC/calib",
            "dataset_type": "bias",
            "run": "HSC/calib/bias/20240501",
            "data_ids": [],
            "begin_ns": NS_2024,
            "end_ns": None,
            "requested_by": "alice",
            "reason": "new biases after the May warm-up",
            "adjustments": [
                {
                    "dataset_type": "bias",
                    "data_id": {"instrument": "HSC", "detector": 50},
                    "begin_ns": None,
                    "end_ns": NS_2024,
                    "action": "end",
                }
            ],
            "calibrations": [
                {
                    "dataset_type": "flat",
                    "run": "HSC/calib/flat/20240501",
                    "data_ids": [{"instrument": "HSC", "detector": 50}],
                    "begin_ns": NS_2024,
                    "end_ns": None,
                }
            ],
            "requested_at_ns": NS_2024,
        },
    ),
    (
        "CalibrationOutcome",
        {
            "request_id": _id(),
            "collection": "HSC/calib",
            "status": "rejected",
            "reason": "validity_overlap",
            "message": "cannot certify bias into HSC/calib: overlaps ...",
            "certified": 0,
            "at_ns": NS_2024,
        },
    ),
    (
        "DeadLetter",
        {
            "topic": "obsbus.raw.arrivals",
            "partition": 3,
            "offset": 12345,
            "key": b"/data/landing/2024-05-01",
            "value": b"\x00\x01garbage",
            "error": "not single-object encoded (starts with 0x0001, expected 0xc301)",
            "error_code": "undecodable",
            "service": "ingest-1",
            "failed_at_ns": NS_2024,
        },
    ),
]


@pytest.mark.parametrize(("record", "value"), REALISTIC, ids=[r for r, _ in REALISTIC])
def test_realistic_round_trip(record: str, value: dict[str, Any]) -> None:
    data = codec.encode(record, value)
    latest = REGISTRY.latest(record).version
    assert codec.decode(data) == Message(record, latest, value)
    assert codec.decode(data, reader=record) == Message(record, latest, value)


def test_every_record_is_covered_by_a_realistic_value() -> None:
    assert {r for r, _ in REALISTIC} == set(REGISTRY.record_names())


@pytest.mark.parametrize("schema", REGISTRY.schemas(), ids=lambda s: s.label)
def test_generated_values_round_trip(schema: Schema) -> None:
    for value in example_values(schema):
        data = REGISTRY.encode_with(schema, value)
        assert REGISTRY.decode(data, reader=f"{schema.name}.v{schema.version}").value == value


def test_defaults_fill_omitted_fields() -> None:
    value = dict(REALISTIC[7][1])
    del value["records_inserted"], value["file"], value["reason"], value["detector"]
    decoded = codec.decode(codec.encode("RegistryEvent", value)).value
    omitted = {"records_inserted": 0, "file": None, "reason": None, "detector": None}
    assert decoded == {**value, **omitted}


def test_single_object_framing() -> None:
    record, value = REALISTIC[1]
    schema = REGISTRY.latest(record)
    data = codec.encode(record, value)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == schema.fingerprint.to_bytes(8, "little")
    assert int.from_bytes(data[2:10], "little") == reference_fingerprint(schema.canonical.encode())
    body = io.BytesIO()
    schemaless_writer(body, schema.parsed, value)
    assert data[10:] == body.getvalue()
    assert REGISTRY.writer_of(data) is schema


# --- errors -----------------------------------------------------------------------------------


def _message(record: str = "RawArrival") -> bytes:
    return codec.encode(record, next(v for r, v in REALISTIC if r == record))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "not single-object encoded (empty message, expected 0xc301)"),
        (b'{"a": 1}', "not single-object encoded (starts with 0x7b22, expected 0xc301)"),
        (b"\xc3", "not single-object encoded (starts with 0xc3, expected 0xc301)"),
        (b"\xc3\x01\x01", "not single-object encoded (only 3 bytes: the header alone is 10)"),
        (
            b"\xc3\x01" + bytes.fromhex("efcdab8967452301") + b"\x02",
            "unknown schema fingerprint 0x0123456789abcdef (written with a schema this program "
            "does not have: update obsbus)",
        ),
        (_message()[:-1], "body does not match schema RawArrival v1: it ends early"),
        (_message() + b"\x00", "body does not match schema RawArrival v1: 1 bytes left over"),
    ],
)
def test_undecodable_inputs(data: bytes, expected: str) -> None:
    with pytest.raises(UndecodableMessageError) as info:
        codec.decode(data)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value) and info.value.code == "undecodable"


def test_every_truncation_is_undecodable() -> None:
    data = _message("RegistryCommand")
    for cut in range(len(data)):
        with pytest.raises(UndecodableMessageError):
            codec.decode(data[:cut])


def test_garbage_bodies_never_escape_as_other_errors() -> None:
    rng = random.Random(20240501)
    for schema in REGISTRY.schemas():
        for _ in range(300):
            body = rng.randbytes(rng.randrange(0, 64))
            try:
                codec.decode(schema.header + body)
            except UndecodableMessageError as err:
                assert "\n" not in str(err)


def test_reading_as_another_record_is_undecodable() -> None:
    with pytest.raises(UndecodableMessageError, match=r"^message is RawArrival v1, not DeadLetter"):
        codec.decode(_message(), reader="DeadLetter")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"size": 3.7}, "size is float 3.7, expected long"),
        ({"size": True}, "size is bool True, expected long"),
        ({"size": 2**63}, "size is 9223372036854775808, outside the range of an Avro long"),
        ({"path": None}, "path is NoneType None, expected string"),
        ({"wacher": "w"}, "the value has unknown field(s) wacher (not in obsbus.RawArrival)"),
    ],
)
def test_unencodable_values_name_the_field(change: dict[str, Any], expected: str) -> None:
    value = {**REALISTIC[0][1], **change}
    with pytest.raises(UnencodableMessageError) as info:
        codec.encode("RawArrival", value)
    assert str(info.value) == f"cannot encode RawArrival v1: {expected}"
    assert info.value.code == "unencodable"


def test_unencodable_nested_values() -> None:
    outcome = REALISTIC[1][1]
    with pytest.raises(
        UnencodableMessageError, match=r": swaps\[0\].new_serial is int 5, expected string$"
    ):
        codec.encode("IngestOutcome", {**outcome, "swaps": [{"detector": 5, "new_serial": 5}]})
    with pytest.raises(UnencodableMessageError, match=r": message is missing \(it has no default"):
        codec.encode("IngestOutcome", {k: v for k, v in outcome.items() if k != "message"})
    command = REALISTIC[3][1]
    raw = command["body"][1]
    bad_record = {**raw["records"][0], "values": {"ratio": [1]}}
    with pytest.raises(
        UnencodableMessageError,
        match=r"body<obsbus.IngestRaw>.records\[0\].values\['ratio'\] is list \[1\], expected",
    ):
        codec.encode(
            "RegistryCommand",
            {**command, "body": ("obsbus.IngestRaw", {**raw, "records": [bad_record]})},
        )
    with pytest.raises(UnencodableMessageError, match=r"body is dict .* expected a \(record name"):
        codec.encode("RegistryCommand", {**command, "body": raw})
    with pytest.raises(UnencodableMessageError, match=r"body names 'IngestRaw', expected one of"):
        codec.encode("RegistryCommand", {**command, "body": ("IngestRaw", raw)})
    span = {**raw["records"][0], "timespan": {"begin": 1}}
    with pytest.raises(UnencodableMessageError, match=r"timespan has unknown field\(s\) begin"):
        codec.encode(
            "RegistryCommand", {**command, "body": ("obsbus.IngestRaw", {**raw, "records": [span]})}
        )


def test_unknown_records_and_readers() -> None:
    with pytest.raises(UnknownSchemaError, match="no schema for record 'RawArival'; records: "):
        codec.encode("RawArival", {})
    with pytest.raises(UnknownSchemaError, match=r"no schema RawArrival v9 \(there is v1\)"):
        codec.decode(_message(), reader="RawArrival.v9")
    with pytest.raises(UnknownSchemaError, match="bad reader schema"):
        codec.decode(_message(), reader="raw arrival")
    with pytest.raises(UnknownSchemaError, match="no schema has fingerprint 0x0000000000000001"):
        REGISTRY.by_fingerprint(1)


# --- loading ----------------------------------------------------------------------------------


def test_loading_is_lazy(tmp_path: Path) -> None:
    registry = SchemaRegistry(tmp_path / "missing")  # nothing is read yet
    with pytest.raises(SchemaFileError, match=r"cannot read the schema folder .*missing"):
        registry.latest("RawArrival")
    script = "import services.messages.codec as c; print(c.default_registry.cache_info().currsize)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_bad_schema_folders(tmp_path: Path) -> None:
    v1 = _package_schema("RawArrival")
    docs_only = {**v1, "doc": "Only the doc changed."}
    with pytest.raises(SchemaFileError, match="have the same fingerprint"):
        _folder(tmp_path, ("RawArrival.v1.avsc", v1), ("RawArrival.v2.avsc", docs_only)).schemas()
    for p in tmp_path.iterdir():
        p.unlink()
    with pytest.raises(SchemaFileError, match=r"defines record obsbus\.RawArrival, not Arrival"):
        _folder(tmp_path, ("Arrival.v1.avsc", v1)).schemas()
    (tmp_path / "Arrival.v1.avsc").unlink()
    with pytest.raises(SchemaFileError, match=r"name it <Record>.v<N>.avsc"):
        _folder(tmp_path, ("RawArrival.avsc", v1)).schemas()
    (tmp_path / "RawArrival.avsc").unlink()
    with pytest.raises(SchemaFileError, match="is not a valid Avro schema"):
        _folder(tmp_path, ("RawArrival.v1.avsc", {**v1, "fields": [{"name": "x"}]})).schemas()


# --- helpers ----------------------------------------------------------------------------------


def test_nullable_fields_explain_their_inner_problem() -> None:
    command = REALISTIC[5][1]
    body = {**command["body"][1], "data_ids": [{"detector": 1.5}]}
    with pytest.raises(UnencodableMessageError) as info:
        codec.encode("RegistryCommand", {**command, "body": ("obsbus.Decertify", body)})
    assert str(info.value) == (
        f"cannot encode {REGISTRY.latest('RegistryCommand').label}: "
        "body<obsbus.Decertify>.data_ids[0]['detector'] is float 1.5, expected long or string"
    )


# --- the typed classes (services/messages/) match their schema files ----------------------------


def _nested(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every named record inside a schema, by short name."""
    found: dict[str, dict[str, Any]] = {}

    def walk(t: Any) -> None:
        if isinstance(t, list):
            for x in t:
                walk(x)
        elif isinstance(t, dict):
            if t.get("type") == "record":
                found[t["name"].rpartition(".")[2]] = t
                for f in t["fields"]:
                    walk(f["type"])
            else:
                walk(t.get("items"))
                walk(t.get("values"))

    walk(schema)
    return found


def _check_fields(cls: type, record: dict[str, Any]) -> None:
    hints = typing.get_type_hints(cls)
    ours = {f.name: f for f in dataclasses.fields(cls)}
    theirs = {f["name"]: f for f in record["fields"]}
    assert set(ours) == set(theirs), f"{cls.__name__} vs {record['name']}"
    for name, f in theirs.items():
        nullable = isinstance(f["type"], list) and "null" in f["type"]
        optional = type(None) in typing.get_args(hints[name])
        assert nullable == optional, f"{cls.__name__}.{name}: nullable in the schema iff optional"


@pytest.mark.parametrize("cls", list(messages.RECORDS.values()), ids=lambda c: c.RECORD)
def test_each_record_class_has_the_fields_of_its_latest_schema(cls: type[messages.Record]) -> None:
    schema = dict(codec.default_registry().latest(cls.RECORD).raw)
    if cls is messages.RegistryCommand:  # its body: the table of command types
        assert {f.name for f in dataclasses.fields(cls)} == {f["name"] for f in schema["fields"]}
        return
    _check_fields(cls, schema)
    nested = _nested(schema)
    for hint in typing.get_type_hints(cls).values():
        for arg in (hint, *typing.get_args(hint)):
            if isinstance(arg, type) and issubclass(arg, messages.record.Part):
                _check_fields(arg, nested[arg.__name__])


def test_the_command_table_has_every_branch_of_the_command_union() -> None:
    from services.registry.command_types import COMMAND_TYPES

    schema = dict(codec.default_registry().latest("RegistryCommand").raw)
    (body,) = [f for f in schema["fields"] if f["name"] == "body"]
    branches = {f"obsbus.{b['name']}" if "." not in b["name"] else b["name"] for b in body["type"]}
    assert branches == {t.branch for t in COMMAND_TYPES}
