"""The base of every wire record: a frozen dataclass whose fields are its schema's fields.

A record class names its Avro record (``RECORD``, a ``schemas/<RECORD>.v<N>.avsc``) and
declares the fields of the latest version, with the same names and types. ``to_value`` gives
the value fastavro writes (nested records as dicts, tuples as lists) and ``from_value`` reads
a decoded value back; ``encode`` and ``decode`` add the single-object framing (codec.py).
tests/test_schemas.py checks every class against its schema file.

Nested records (``Part``) are frozen dataclasses too; a field typed ``tuple[Part, ...]``,
``Part`` or ``Part | None`` is converted both ways, a ``Mapping`` is kept as a dict (its
order is the order on the wire), anything else is taken as it is.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

from ..core.errors import UndecodableMessageError
from . import codec

Reader = Callable[[Any], Any]


class Part:
    """A record nested in another (e.g. a DetectorSwap in an IngestOutcome)."""

    def to_value(self) -> dict[str, Any]:
        return {f.name: _out(getattr(self, f.name)) for f in _fields(type(self))}

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> Self:
        return cls(**{name: read(value[name]) for name, read in _readers(cls)})


class Record(Part):
    """A top-level record: what one Kafka message carries."""

    RECORD: ClassVar[str]

    def encode(self) -> bytes:
        """This record, single-object encoded with the latest version of its schema."""
        return codec.encode(self.RECORD, self.to_value())

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """A message of this record (any version of its schema); raises
        UndecodableMessageError for anything else."""
        return cls.from_message(codec.decode(data, cls.RECORD))

    @classmethod
    def from_message(cls, message: codec.Message) -> Self:
        try:
            return cls.from_value(message.value)
        except (KeyError, TypeError, ValueError) as err:  # a value its schema allows, we don't
            raise UndecodableMessageError(
                f"{message.record_name} v{message.version} does not make a {cls.__name__}: "
                f"{type(err).__name__}: {err}"
            ) from err


def _out(value: Any) -> Any:
    if isinstance(value, Part):
        return value.to_value()
    if isinstance(value, tuple | list):
        return [_out(v) for v in value]
    return value


# Per class, worked out on first use (type hints are resolved lazily: no import-time work).
_FIELDS: dict[type, tuple[dataclasses.Field[Any], ...]] = {}
_READERS: dict[type, tuple[tuple[str, Reader], ...]] = {}


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = dataclasses.fields(cls)
    return found


def _readers(cls: type) -> tuple[tuple[str, Reader], ...]:
    found = _READERS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = tuple((f.name, _reader(hints[f.name])) for f in _fields(cls) if f.init)
        _READERS[cls] = found
    return found


def _reader(hint: Any) -> Reader:
    """How to turn a decoded value into a field of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, Part):
        return hint.from_value
    if origin is tuple:
        item = _reader(args[0])
        return lambda v: tuple(item(x) for x in v)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        read = _reader(inner)
        return lambda v: None if v is None else read(v)
    if origin is Mapping or hint is Mapping:
        return dict
    return _same


def _same(value: Any) -> Any:
    return value
