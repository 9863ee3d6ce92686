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
import numbers
import os
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from ..core.errors import (
    SchemaFileError,
    UndecodableMessageError,
    UnencodableMessageError,
    UnknownSchemaError,
)

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
    check: _Check = field(repr=False)

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
                    f"cannot read the schema folder {root}: {_exception_text(exc)}"
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
        problem = check_value(schema, value)
        if problem is not None:
            raise UnencodableMessageError(f"cannot encode {schema.label}: {problem}")
        out = io.BytesIO()
        out.write(schema.header)
        try:
            schemaless_writer(out, schema.parsed, value)
        except Exception as exc:  # the check above should have caught it; say what fastavro said
            raise UnencodableMessageError(
                f"cannot encode {schema.label}: {_exception_text(exc)}"
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
                f"body does not match schema {writer.label}: it ends early ({_exception_text(exc)})"
            ) from exc
        except Exception as exc:  # any failure to read untrusted bytes means a bad body
            raise UndecodableMessageError(
                f"body does not match schema {writer.label}"
                + ("" if target is writer else f" read as v{target.version}")
                + f": {_exception_text(exc)}"
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
            f"schema file {file_name} is not a valid Avro schema: {_exception_text(exc)}"
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
        check=_Compiler(named).compile(parsed),
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


# --- value helpers ----------------------------------------------------------------------------


def new_id() -> str:
    """A fresh random UUID as text (ids of arrivals, commands, requests, datasets)."""
    return str(uuid.uuid4())


def uuid_text(value: uuid.UUID | str) -> str:
    """A UUID in its canonical lower-case text form; refuses anything that is not a UUID."""
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise UnencodableMessageError(f"{value!r} is not a UUID") from None


class _Span(Protocol):
    @property
    def begin(self) -> int | None: ...
    @property
    def end(self) -> int | None: ...


def timespan_value(span: _Span | tuple[int | None, int | None] | None) -> dict[str, Any] | None:
    """A ``{begin_ns, end_ns}`` record value from an object with ``begin``/``end`` nanosecond
    attributes (or a ``(begin, end)`` pair); ``None`` stays ``None`` (no timespan)."""
    if span is None:
        return None
    if isinstance(span, tuple):
        begin, end = span
    else:
        begin, end = span.begin, span.end
    return {"begin_ns": begin, "end_ns": end}


def timespan_bounds(value: Mapping[str, Any] | None) -> tuple[int | None, int | None] | None:
    """``(begin_ns, end_ns)`` from a decoded timespan record value; ``None`` stays ``None``."""
    if value is None:
        return None
    return value.get("begin_ns"), value.get("end_ns")


# --- strict value checks, compiled once per schema --------------------------------------------

# A check returns None when the value fits, else (path, problem): path like ".swaps[0].detector"
# and problem like "is str 'a', expected int". Built for speed on the happy path.
_Problem = tuple[str, str]
_Check = Callable[[Any], _Problem | None]

_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _describe(schema: Any) -> str:
    if isinstance(schema, list):
        return " or ".join(_describe(s) for s in schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed", "error"):
            return f"{kind} {schema.get('name')}"
        return _describe(kind) if isinstance(kind, str) and kind in _PRIMITIVES else str(kind)
    return str(schema)


def _exception_text(exc: BaseException) -> str:
    """An exception as one short line (fastavro's messages can embed whole schemas)."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_integer(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# Common types that are never numbers to Avro (spares slow ABC checks on the happy path).
_NOT_NUMBERS = frozenset({bool, str, bytes, type(None), dict, list, tuple})


def _int_ok(kind: str) -> Callable[[Any], bool]:
    low, high = _INT_RANGE[kind]

    def ok(v: Any) -> bool:
        t = type(v)
        if t is int:
            return bool(low <= v <= high)
        return t not in _NOT_NUMBERS and _is_integer(v) and low <= v <= high

    return ok


def _float_ok(v: Any) -> bool:
    t = type(v)
    if t is float or t is int:
        return True
    return t not in _NOT_NUMBERS and isinstance(v, numbers.Real)


# Cheap yes/no tests of primitive values (used alone to probe union branches).
_PRIMITIVE_OK: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: v is True or v is False,
    "int": _int_ok("int"),
    "long": _int_ok("long"),
    "float": _float_ok,
    "string": lambda v: isinstance(v, str),
    "bytes": lambda v: isinstance(v, bytes | bytearray),
}
_PRIMITIVE_OK["double"] = _PRIMITIVE_OK["float"]


def _primitive_check(kind: str) -> _Check:
    ok = _PRIMITIVE_OK[kind]

    def check(v: Any) -> _Problem | None:
        if ok(v):
            return None
        if kind in _INT_RANGE and _is_integer(v):
            return "", f"is {v}, outside the range of an Avro {kind}"
        return "", f"is {_show(v)}, expected {kind}"

    return check


_PRIMITIVES: dict[str, _Check] = {kind: _primitive_check(kind) for kind in _PRIMITIVE_OK}


def _accept(v: Any) -> _Problem | None:
    return None


def _passes(check: _Check) -> Callable[[Any], bool]:
    return lambda v: check(v) is None


class _Compiler:
    """Turns a fastavro-parsed schema into a strict value check (closures, compiled once)."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named
        self._done: dict[str, _Check] = {}

    def compile(self, schema: Any) -> _Check:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVES[schema]
            return self._named_check(schema)
        if isinstance(schema, list):
            return self._union(schema)
        if "logicalType" in schema:
            return _accept  # fastavro converts logical types itself; it checks them
        kind = schema["type"]
        if kind in ("record", "error"):
            return self._named_check(schema["name"], schema)
        if kind == "array":
            return self._array(self.compile(schema["items"]))
        if kind == "map":
            return self._map(self.compile(schema["values"]))
        if kind == "enum":
            return self._enum(schema)
        if kind == "fixed":
            return self._fixed(schema)
        return self.compile(kind)

    def _named_check(self, name: str, schema: Any = None) -> _Check:
        if name in self._done:
            return self._done[name]
        schema = self._named[name] if schema is None else schema
        if schema.get("type") not in ("record", "error"):
            check = self.compile(schema)
            self._done[name] = check
            return check
        cell: list[_Check] = []

        def late(v: Any) -> _Problem | None:  # for recursive types
            return cell[0](v)

        self._done[name] = late
        check = self._record(schema)
        cell.append(check)
        self._done[name] = check
        return check

    def _record(self, schema: Mapping[str, Any]) -> _Check:
        full_name = schema["name"]
        fields = [(f["name"], self.compile(f["type"]), "default" in f) for f in schema["fields"]]
        names = frozenset(f[0] for f in fields)

        def check(v: Any) -> _Problem | None:
            if type(v) is not dict and not isinstance(v, Mapping):
                return "", f"is {_show(v)}, expected record {full_name} (a dict)"
            if not names.issuperset(v):
                unknown = sorted(str(k) for k in v if k not in names)
                return "", f"has unknown field(s) {', '.join(unknown)} (not in {full_name})"
            for name, field_check, has_default in fields:
                if name in v:
                    problem = field_check(v[name])
                    if problem is not None:
                        return f".{name}{problem[0]}", problem[1]
                elif not has_default:
                    return f".{name}", "is missing (it has no default)"
            return None

        return check

    def _array(self, item: _Check) -> _Check:
        def check(v: Any) -> _Problem | None:
            if not isinstance(v, list):  # not tuples: in a union they mean (branch, value)
                return "", f"is {_show(v)}, expected array (a list)"
            for i, x in enumerate(v):
                problem = item(x)
                if problem is not None:
                    return f"[{i}]{problem[0]}", problem[1]
            return None

        return check

    def _map(self, value: _Check) -> _Check:
        def check(v: Any) -> _Problem | None:
            if type(v) is not dict and not isinstance(v, Mapping):
                return "", f"is {_show(v)}, expected map (a dict)"
            for k, x in v.items():
                if not isinstance(k, str):
                    return "", f"has key {_show(k)}, expected string keys"
                problem = value(x)
                if problem is not None:
                    return f"[{k!r}]{problem[0]}", problem[1]
            return None

        return check

    def _enum(self, schema: Mapping[str, Any]) -> _Check:
        symbols = frozenset(schema["symbols"])
        expected = f"one of {', '.join(schema['symbols'])}"

        def check(v: Any) -> _Problem | None:
            return None if v in symbols else ("", f"is {_show(v)}, expected {expected}")

        return check

    def _fixed(self, schema: Mapping[str, Any]) -> _Check:
        size = schema["size"]

        def check(v: Any) -> _Problem | None:
            if isinstance(v, bytes | bytearray) and len(v) == size:
                return None
            return "", f"is {_show(v)}, expected {size} bytes"

        return check

    def _union(self, branches: list[Any]) -> _Check:
        checks = [self.compile(b) for b in branches]
        expected = _describe(branches)
        named = {
            b["name"]: c
            for b, c in zip(branches, checks, strict=True)
            if isinstance(b, dict) and b.get("type") in ("record", "error")
        }
        if len(named) > 1:
            return self._record_union(named)
        nullable = "null" in branches
        others = [c for b, c in zip(branches, checks, strict=True) if b != "null"]
        probes = [
            _PRIMITIVE_OK[b] if isinstance(b, str) and b in _PRIMITIVE_OK else _passes(c)
            for b, c in zip(branches, checks, strict=True)
            if b != "null"
        ]
        # A value failing the only non-null branch (e.g. of ["null", record]) is best explained
        # by that branch when the problem lies inside it (a field, an item, a map value).
        explain = others[0] if len(others) == 1 else None
        non_null = [b for b in branches if b != "null"]
        kind = self._kind(non_null[0]) if len(non_null) == 1 else None
        explains_mappings = kind in ("record", "error", "map")

        def check(v: Any) -> _Problem | None:
            if v is None and nullable:
                return None
            for probe in probes:
                if probe(v):
                    return None
            if explain is not None:
                problem = explain(v)
                if problem is not None and (
                    problem[0] or (explains_mappings and isinstance(v, Mapping))
                ):
                    return problem
            return "", f"is {_show(v)}, expected {expected}"

        return check

    def _kind(self, schema: Any) -> str | None:
        if isinstance(schema, str):
            return self._kind(self._named[schema]) if schema in self._named else schema
        if isinstance(schema, dict):
            kind = schema.get("type")
            return kind if isinstance(kind, str) else None
        return "union"

    @staticmethod
    def _record_union(named: Mapping[str, _Check]) -> _Check:
        choices = ", ".join(named)

        def check(v: Any) -> _Problem | None:
            if not (isinstance(v, tuple) and len(v) == 2):
                return "", f"is {_show(v)}, expected a (record name, value) pair, one of {choices}"
            branch = named.get(v[0])
            if branch is None:
                return "", f"names {v[0]!r}, expected one of {choices}"
            problem = branch(v[1])
            return None if problem is None else (f"<{v[0]}>{problem[0]}", problem[1])

        return check


def check_value(schema: Schema, value: Any) -> str | None:
    """Why ``value`` does not fit ``schema`` (one line), or None if it does."""
    problem = schema.check(value)
    if problem is None:
        return None
    return f"{problem[0].lstrip('.') or 'the value'} {problem[1]}"
