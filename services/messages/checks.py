"""Strict checks of values against Avro schemas, compiled once per schema.

fastavro's writer silently truncates floats into longs and ignores unknown keys, so obsbus
checks every value before encoding it, and says exactly which field is wrong.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

# --- strict value checks, compiled once per schema --------------------------------------------

# A check returns None when the value fits, else (path, problem): path like ".swaps[0].detector"
# and problem like "is str 'a', expected int". Built for speed on the happy path.
_Problem = tuple[str, str]
Check = Callable[[Any], _Problem | None]

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


def exception_text(exc: BaseException) -> str:
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


def _primitive_check(kind: str) -> Check:
    ok = _PRIMITIVE_OK[kind]

    def check(v: Any) -> _Problem | None:
        if ok(v):
            return None
        if kind in _INT_RANGE and _is_integer(v):
            return "", f"is {v}, outside the range of an Avro {kind}"
        return "", f"is {_show(v)}, expected {kind}"

    return check


_PRIMITIVES: dict[str, Check] = {kind: _primitive_check(kind) for kind in _PRIMITIVE_OK}


def _accept(v: Any) -> _Problem | None:
    return None


def _passes(check: Check) -> Callable[[Any], bool]:
    return lambda v: check(v) is None


class Compiler:
    """Turns a fastavro-parsed schema into a strict value check (closures, compiled once)."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named
        self._done: dict[str, Check] = {}

    def compile(self, schema: Any) -> Check:
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

    def _named_check(self, name: str, schema: Any = None) -> Check:
        if name in self._done:
            return self._done[name]
        schema = self._named[name] if schema is None else schema
        if schema.get("type") not in ("record", "error"):
            check = self.compile(schema)
            self._done[name] = check
            return check
        cell: list[Check] = []

        def late(v: Any) -> _Problem | None:  # for recursive types
            return cell[0](v)

        self._done[name] = late
        check = self._record(schema)
        cell.append(check)
        self._done[name] = check
        return check

    def _record(self, schema: Mapping[str, Any]) -> Check:
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

    def _array(self, item: Check) -> Check:
        def check(v: Any) -> _Problem | None:
            if not isinstance(v, list):  # not tuples: in a union they mean (branch, value)
                return "", f"is {_show(v)}, expected array (a list)"
            for i, x in enumerate(v):
                problem = item(x)
                if problem is not None:
                    return f"[{i}]{problem[0]}", problem[1]
            return None

        return check

    def _map(self, value: Check) -> Check:
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

    def _enum(self, schema: Mapping[str, Any]) -> Check:
        symbols = frozenset(schema["symbols"])
        expected = f"one of {', '.join(schema['symbols'])}"

        def check(v: Any) -> _Problem | None:
            return None if v in symbols else ("", f"is {_show(v)}, expected {expected}")

        return check

    def _fixed(self, schema: Mapping[str, Any]) -> Check:
        size = schema["size"]

        def check(v: Any) -> _Problem | None:
            if isinstance(v, bytes | bytearray) and len(v) == size:
                return None
            return "", f"is {_show(v)}, expected {size} bytes"

        return check

    def _union(self, branches: list[Any]) -> Check:
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
    def _record_union(named: Mapping[str, Check]) -> Check:
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


def check_value(check: Check, value: Any) -> str | None:
    """Why ``value`` fails a compiled ``check`` (one line), or None if it fits."""
    problem = check(value)
    if problem is None:
        return None
    return f"{problem[0].lstrip('.') or 'the value'} {problem[1]}"
