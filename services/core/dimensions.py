"""The dimension universe (declared in dimensions.yaml) and data IDs.

A *data ID* maps dimension names to key values, e.g. ``{"instrument": "HSC", "detector": 50}``.
Its canonical text form (``DataId.key``) is the dimension values in universe order; the
registry uses it for exact matching and uniqueness.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml

from .errors import DataIdError, DimensionRecordError, UnknownDimensionError
from .timespan import Timespan

FieldType = Literal["int", "float", "string", "bool"]
KeyValue = int | str
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "string": (str,),
    "bool": (bool,),
}


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType
    length: int | None = None
    doc: str = ""

    def coerce(self, value: Any, where: str) -> Any:
        """Check (and gently convert, e.g. CLI text to int) one value of this field."""
        if value is None:
            return None
        if self.type == "int" and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise DataIdError(f"{where} must be an integer, got {value!r}") from None
        if self.type == "float" and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise DataIdError(f"{where} must be a number, got {value!r}") from None
        if self.type == "int" and hasattr(value, "__index__") and not isinstance(value, bool):
            return int(value)  # numpy integers
        if self.type == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, _PY_TYPES[self.type]) or (
            self.type == "int" and isinstance(value, bool)
        ):
            raise DataIdError(f"{where} must be of type {self.type}, got {value!r}")
        if isinstance(value, str) and self.length is not None and len(value) > self.length:
            raise DataIdError(f"{where} is longer than {self.length} characters: {value!r}")
        return value


@dataclass(frozen=True)
class Element:
    """A dimension (has its own key) or a join between dimensions (has none)."""

    name: str
    doc: str
    requires: tuple[str, ...]
    implies: tuple[str, ...]
    key: Field | None
    fields: tuple[Field, ...]
    unique: tuple[str, ...]
    has_timespan: bool

    @property
    def is_dimension(self) -> bool:
        return self.key is not None

    @property
    def identity(self) -> tuple[str, ...]:
        """Dimension names whose values identify one record of this element."""
        return (*self.requires, self.name) if self.is_dimension else self.requires

    @property
    def key_columns(self) -> tuple[str, ...]:
        """Record fields that identify a record (required dimensions, then the own key)."""
        own = (self.key.name,) if self.key is not None else ()
        return (*self.requires, *own)

    @property
    def value_columns(self) -> tuple[str, ...]:
        """Record fields that are facts about the key (implied dimensions and metadata)."""
        ts = ("timespan",) if self.has_timespan else ()
        return (*self.implies, *(f.name for f in self.fields), *ts)

    def field(self, name: str) -> Field | None:
        if self.key is not None and name == self.key.name:
            return self.key
        for f in self.fields:
            if f.name == name:
                return f
        return None


class DimensionUniverse:
    """All dimension elements, in declaration order (which is also data ID order)."""

    def __init__(self, namespace: str, version: int, elements: Iterable[Element]) -> None:
        self.namespace = namespace
        self.version = version
        self.elements: dict[str, Element] = {e.name: e for e in elements}
        self._order = {name: i for i, name in enumerate(self.elements)}
        self._closures: dict[frozenset[str], tuple[str, ...]] = {}
        for e in self.elements.values():
            for dep in (*e.requires, *e.implies):
                if dep not in self.elements or not self.elements[dep].is_dimension:
                    raise UnknownDimensionError(f"{e.name} refers to unknown dimension {dep!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DimensionUniverse:
        elements: list[Element] = []
        for section, is_dim in (("dimensions", True), ("joins", False)):
            for name, spec in (config.get(section) or {}).items():
                key = spec.get("key")
                elements.append(
                    Element(
                        name=name,
                        doc=spec.get("doc", ""),
                        requires=tuple(spec.get("requires", ())),
                        implies=tuple(spec.get("implies", ())),
                        key=Field(**key) if is_dim else None,
                        fields=tuple(Field(**f) for f in spec.get("fields", ())),
                        unique=tuple(spec.get("unique", ())),
                        has_timespan=bool(spec.get("timespan", False)),
                    )
                )
        return cls(config["namespace"], int(config["version"]), elements)

    def __getitem__(self, name: str) -> Element:
        try:
            return self.elements[name]
        except KeyError:
            raise UnknownDimensionError(
                f"no dimension element {name!r}; known: {', '.join(self.elements)}"
            ) from None

    def __iter__(self) -> Iterator[Element]:
        return iter(self.elements.values())

    @property
    def dimensions(self) -> list[Element]:
        return [e for e in self.elements.values() if e.is_dimension]

    def sorted(self, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(set(names), key=self._order.__getitem__))

    def closure(self, names: Iterable[str]) -> tuple[str, ...]:
        """The given dimensions plus everything they require, in universe order."""
        key = frozenset(names)
        cached = self._closures.get(key)
        if cached is None:  # the universe never changes: remember (bulk lookups ask a lot)
            cached = self._closures[key] = self._compute_closure(key)
        return cached

    def _compute_closure(self, names: Iterable[str]) -> tuple[str, ...]:
        todo, seen = list(names), set[str]()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            element = self[name]
            if not element.is_dimension:
                raise UnknownDimensionError(f"{name!r} is a join, not a dimension")
            seen.add(name)
            todo.extend(element.requires)
        return self.sorted(seen)

    def data_id(self, dimensions: Iterable[str], values: Mapping[str, Any]) -> DataId:
        """Validate ``values`` as a data ID for exactly ``dimensions`` (extra keys ignored)."""
        dims = self.closure(dimensions)
        missing = [d for d in dims if values.get(d) is None]
        if missing:
            raise DataIdError(
                f"data ID {dict(values)} lacks {', '.join(missing)} "
                f"(needed for dimensions {', '.join(dims)})"
            )
        out: dict[str, KeyValue] = {}
        for d in dims:
            key = self[d].key
            assert key is not None
            out[d] = key.coerce(values[d], f"data ID value {d}")
        return DataId(out)

    def check_record(self, element_name: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a record: every key present and typed, nothing unknown; returns a copy."""
        element = self[element_name]
        known = {*element.key_columns, *element.value_columns}
        unknown = set(record) - known
        if unknown:
            raise DimensionRecordError(
                f"{element.name} record has unknown fields {sorted(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        for name in element.key_columns:
            if record.get(name) is None:
                raise DimensionRecordError(f"{element.name} record lacks its key field {name!r}")
        out: dict[str, Any] = {}
        for name in (*element.requires, *element.implies):
            key = self[name].key
            assert key is not None
            out[name] = key.coerce(record.get(name), f"{element.name}.{name}")
        for f in (*((element.key,) if element.key else ()), *element.fields):
            out[f.name] = f.coerce(record.get(f.name), f"{element.name}.{f.name}")
        if element.has_timespan:
            ts = record.get("timespan")
            if ts is not None and not isinstance(ts, Timespan):
                raise DimensionRecordError(f"{element.name}.timespan must be a Timespan")
            out["timespan"] = ts
        return out


class DataId(Mapping[str, KeyValue]):
    """An immutable, validated data ID in universe order."""

    __slots__ = ("_key", "_values")

    def __init__(self, values: dict[str, KeyValue]) -> None:
        self._values = values
        self._key = ",".join(f"{k}={v}" for k, v in values.items())

    @property
    def key(self) -> str:
        """Canonical text used for exact matching in the registry."""
        return self._key

    def __getitem__(self, name: str) -> KeyValue:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DataId):
            return self._key == other._key
        return isinstance(other, Mapping) and dict(self._values) == dict(other)

    def __repr__(self) -> str:
        return f"DataId({self._key})"

    def __str__(self) -> str:
        return self._key


def parse_data_id_args(items: Iterable[str]) -> dict[str, str]:
    """``["instrument=HSC", "detector=50"]`` → dict (values stay text; the universe types them)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise DataIdError(f"data ID item {item!r} is not of the form key=value")
        out[name.strip()] = value.strip()
    return out


@functools.cache
def default_universe() -> DimensionUniverse:
    """The universe shipped with obsbus (loaded on first use, not at import)."""
    text = resources.files("services.core").joinpath("dimensions.yaml").read_text()
    return DimensionUniverse.from_config(yaml.safe_load(text))
