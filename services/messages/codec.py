"""Avro single-object encoding of bus messages, with the ``schemas`` package as the registry.

Every Kafka value is framed as the Avro specification's single-object encoding::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema | Avro binary body

The fingerprint is the Rabin fingerprint of the writer schema's Parsing Canonical Form, so
a reader finds the exact writer schema in the registry and resolves it against its own
reader schema (Avro schema resolution): old messages stay readable after a schema changes.

Values are plain Python data in fastavro's conventions: records are dicts, arrays lists,
maps dicts with string keys, ``bytes`` is ``bytes``. A union with more than one record branch
(e.g. a command body) takes and gives a ``(full record name, dict)`` tuple such as
``("obsbus.Certify", {...})``; other unions take the plain value. Encoding is strict: unknown
keys, missing fields without a default, a bool or float where an integer belongs and
out-of-range integers are all refused with a one-line error naming the record and field.

The codec knows nothing about obsbus beyond what the schema files say.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NamedTuple, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from ..core.errors import (
    SchemaFileError,
    UndecodableMessageError,
    UnencodableMessageError,
    UnknownSchemaError,
)
from .checks import Check, Compiler, check_value, exception_text

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_PACKAGE = "schemas"
_FILE_NAME = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")
_READER_NAME = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\.v(?P<version>[1-9][0-9]*))?$")


def crc64_avro(text: str) -> int:
    """CRC-64-AVRO (Rabin) fingerprint of ``text``'s UTF-8 bytes, as an unsigned 64-bit int.

    Computed by fastavro; the test suite checks it against the Avro specification's
    reference algorithm and published test vectors (``"int"`` -> 0x7275d51a3f395c8f).
    """
    # fastavro gives the 8 fingerprint bytes little-endian, as hex text.
    return int.from_bytes(bytes.fromhex(_fastavro_fingerprint(text, "CRC-64-AVRO")), "little")


def canonical_form(schema: Any) -> str:
    """The Parsing Canonical Form of a schema (JSON text, or already-loaded JSON)."""
    return str(to_parsing_canonical_form(json.loads(schema) if isinstance(schema, str) else schema))


def schema_fingerprint(schema: Any) -> int:
    """CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form."""
    return crc64_avro(canonical_form(schema))


def single_object_header(fingerprint: int) -> bytes:
    """``C3 01`` followed by the fingerprint, 8 bytes little-endian."""
    return MAGIC + fingerprint.to_bytes(8, "little")


# --- schemas and the registry -----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Schema:
    """One version of one record schema, parsed and ready to read and write."""

    name: str  # short record name, e.g. "RawArrival"
    version: int
    full_name: str  # e.g. "obsbus.RawArrival"
    fingerprint: int  # CRC-64-AVRO of the Parsing Canonical Form, unsigned
    canonical: str
    source: str  # file name it was loaded from
    raw: Mapping[str, Any] = field(repr=False)  # the schema as written in the file
    parsed: dict[str, Any] = field(repr=False)  # fastavro's parsed form
    header: bytes = field(repr=False)  # single-object header of messages it writes
    check: Check = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


class Message(NamedTuple):
    """A decoded message.

    ``version`` is the version the writer used; ``value`` has the shape of the reader schema
    (fields added since the writer's version hold their defaults, removed ones are gone).
    """

    record_name: str
    version: int
    value: dict[str, Any]


class SchemaRegistry:
    """Every version of every record schema in a folder (by default the ``schemas`` package).

    Files are ``<Record>.v<N>.avsc``; all versions are kept, the highest is written. Loading
    happens once, on first use, and is thread-safe.
    """

    def __init__(self, source: Traversable | os.PathLike[str] | str | None = None) -> None:
        if isinstance(source, str | os.PathLike):
            source = Path(source)
        self._source = source
        self._lock = threading.Lock()
        self._loaded = False
        self._versions: dict[str, list[Schema]] = {}
        self._latest: dict[str, Schema] = {}
        self._by_fingerprint: dict[int, Schema] = {}

    # -- loading

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            root = self._source if self._source is not None else resources.files(SCHEMA_PACKAGE)
            versions: dict[str, list[Schema]] = {}
            by_fp: dict[int, Schema] = {}
            try:
                entries = sorted(
                    (
                        (e.name, e.read_text(encoding="utf-8"))
                        for e in root.iterdir()
                        if e.name.endswith(".avsc")
                    ),
                )
            except OSError as exc:
                raise SchemaFileError(
                    f"cannot read the schema folder {root}: {exception_text(exc)}"
                ) from exc
            for file_name, text in entries:
                schema = _load_schema(file_name, text)
                other = by_fp.get(schema.fingerprint)
                if other is not None:
                    raise SchemaFileError(
                        f"{schema.source} and {other.source} have the same fingerprint "
                        f"0x{schema.fingerprint:016x}: a new version must change the schema's "
                        "canonical form, not only docs or defaults"
                    )
                same_name = versions.setdefault(schema.name, [])
                if same_name and same_name[0].full_name != schema.full_name:
                    raise SchemaFileError(
                        f"{schema.source} names {schema.full_name}, but {same_name[0].source} "
                        f"names {same_name[0].full_name}: all versions of a record keep its name"
                    )
                by_fp[schema.fingerprint] = schema
                same_name.append(schema)
            for same_name in versions.values():
                same_name.sort(key=lambda s: s.version)
            self._versions = versions
            self._latest = {name: vs[-1] for name, vs in versions.items()}
            self._by_fingerprint = by_fp
            self._loaded = True

    # -- lookups

    def record_names(self) -> list[str]:
        self._load()
        return sorted(self._versions)

    def schemas(self) -> list[Schema]:
        """Every loaded schema, by record name and version."""
        self._load()
        return [s for name in sorted(self._versions) for s in self._versions[name]]

    def versions(self, record_name: str) -> list[Schema]:
        self._load()
        try:
            return list(self._versions[record_name])
        except KeyError:
            raise self._unknown(record_name) from None

    def latest(self, record_name: str) -> Schema:
        """The version writers use: the highest."""
        try:
            return self._latest[record_name]
        except KeyError:
            self._load()
            if record_name in self._latest:
                return self._latest[record_name]
            raise self._unknown(record_name) from None

    def get(self, record_name: str, version: int) -> Schema:
        for schema in self.versions(record_name):
            if schema.version == version:
                return schema
        known = ", ".join(f"v{s.version}" for s in self.versions(record_name))
        raise UnknownSchemaError(f"no schema {record_name} v{version} (there is {known})")

    def by_fingerprint(self, fingerprint: int) -> Schema:
        self._load()
        try:
            return self._by_fingerprint[fingerprint]
        except KeyError:
            raise UnknownSchemaError(f"no schema has fingerprint 0x{fingerprint:016x}") from None

    def reader(self, spec: str) -> Schema:
        """A reader schema from ``"Record"`` (its latest version) or ``"Record.vN"``."""
        match = _READER_NAME.match(spec)
        if match is None:
            raise UnknownSchemaError(
                f"bad reader schema {spec!r}: give a record name, optionally with a version "
                "(e.g. 'RawArrival' or 'RawArrival.v1')"
            )
        version = match["version"]
        if version is None:
            return self.latest(match["name"])
        return self.get(match["name"], int(version))

    def _unknown(self, record_name: str) -> UnknownSchemaError:
        return UnknownSchemaError(
            f"no schema for record {record_name!r}; records: {', '.join(self.record_names())}"
        )

    # -- encoding and decoding

    def encode(self, record_name: str, value: Mapping[str, Any]) -> bytes:
        """``value`` as a single-object encoded message, written with the latest schema."""
        return self.encode_with(self.latest(record_name), value)

    def encode_with(self, schema: Schema, value: Mapping[str, Any]) -> bytes:
        """``value`` written with a given schema version (for tests and tools)."""
        problem = check_value(schema.check, value)
        if problem is not None:
            raise UnencodableMessageError(f"cannot encode {schema.label}: {problem}")
        out = io.BytesIO()
        out.write(schema.header)
        try:
            schemaless_writer(out, schema.parsed, value)
        except Exception as exc:  # the check above should have caught it; say what fastavro said
            raise UnencodableMessageError(
                f"cannot encode {schema.label}: {exception_text(exc)}"
            ) from exc
        return out.getvalue()

    def decode(self, data: bytes, reader: str | None = None) -> Message:
        """Decode a single-object encoded message.

        The writer schema is found by the message's fingerprint and resolved against the
        reader schema: ``reader`` (``"Record"`` or ``"Record.vN"``), by default the latest
        version of the writer's record. Raises ``UndecodableMessageError`` for anything that
        is not a readable message.
        """
        writer = self.writer_of(data)
        target = self.latest(writer.name) if reader is None else self.reader(reader)
        if target.name != writer.name:
            raise UndecodableMessageError(
                f"message is {writer.label}, not {target.name} (wrong topic?)"
            )
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            value = schemaless_reader(
                body,
                writer.parsed,
                None if target is writer else target.parsed,
                return_record_name=True,
                return_record_name_override=True,
            )
        except EOFError as exc:
            raise UndecodableMessageError(
                f"body does not match schema {writer.label}: it ends early ({exception_text(exc)})"
            ) from exc
        except Exception as exc:  # any failure to read untrusted bytes means a bad body
            raise UndecodableMessageError(
                f"body does not match schema {writer.label}"
                + ("" if target is writer else f" read as v{target.version}")
                + f": {exception_text(exc)}"
            ) from exc
        left = len(data) - body.tell()
        if left:
            raise UndecodableMessageError(
                f"body does not match schema {writer.label}: {left} bytes left over after "
                "the record"
            )
        return Message(writer.name, writer.version, cast(dict[str, Any], value))

    def writer_of(self, data: bytes) -> Schema:
        """The writer schema named by a message's header (without reading its body)."""
        if not data:  # b"" or a Kafka tombstone's None
            raise UndecodableMessageError(
                "not single-object encoded (empty message, expected 0xc301)"
            )
        if data[:2] != MAGIC:
            raise UndecodableMessageError(
                f"not single-object encoded (starts with 0x{bytes(data[:2]).hex()}, "
                "expected 0xc301)"
            )
        if len(data) < HEADER_SIZE:
            raise UndecodableMessageError(
                f"not single-object encoded (only {len(data)} bytes: the header alone is "
                f"{HEADER_SIZE})"
            )
        fp = int.from_bytes(data[2:HEADER_SIZE], "little")
        self._load()
        writer = self._by_fingerprint.get(fp)
        if writer is None:
            raise UndecodableMessageError(
                f"unknown schema fingerprint 0x{fp:016x} (written with a schema this "
                "program does not have: update obsbus)"
            )
        return writer


def _load_schema(file_name: str, text: str) -> Schema:
    match = _FILE_NAME.match(file_name)
    if match is None:
        raise SchemaFileError(
            f"schema file {file_name}: name it <Record>.v<N>.avsc (e.g. RawArrival.v1.avsc)"
        )
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise SchemaFileError(f"schema file {file_name} is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise SchemaFileError(f"schema file {file_name}: the top level must be a record")
    named: dict[str, Any] = {}
    try:
        parsed = cast(dict[str, Any], parse_schema(raw, named_schemas=named))
        canonical = canonical_form(raw)
    except Exception as exc:
        raise SchemaFileError(
            f"schema file {file_name} is not a valid Avro schema: {exception_text(exc)}"
        ) from exc
    full_name = str(parsed["name"])
    if full_name.rpartition(".")[2] != match["name"]:
        raise SchemaFileError(
            f"schema file {file_name} defines record {full_name}, not {match['name']}"
        )
    fp = crc64_avro(canonical)
    return Schema(
        name=match["name"],
        version=int(match["version"]),
        full_name=full_name,
        fingerprint=fp,
        canonical=canonical,
        source=file_name,
        raw=raw,
        parsed=parsed,
        header=single_object_header(fp),
        check=Compiler(named).compile(parsed),
    )


@cache
def default_registry() -> SchemaRegistry:
    """The registry of the installed ``schemas`` package (loaded on first use)."""
    return SchemaRegistry()


def encode(record_name: str, value: Mapping[str, Any]) -> bytes:
    """Encode with the latest version of ``record_name`` from the ``schemas`` package."""
    return default_registry().encode(record_name, value)


def decode(data: bytes, reader: str | None = None) -> Message:
    """Decode with the ``schemas`` package as the registry; see ``SchemaRegistry.decode``."""
    return default_registry().decode(data, reader)
