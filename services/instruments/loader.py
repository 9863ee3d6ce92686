"""Finding Instrument classes: by entry-point name (group ``obsbus.instruments``) or by the
import path of the class (``package.module.Class``), as ``butler register-instrument`` does."""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import EntryPoint, entry_points

from ..core.errors import UnknownInstrumentError
from .base import Instrument

ENTRY_POINT_GROUP = "obsbus.instruments"


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    # Scanning installed distributions is slow: once per process (ingest asks per file).
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    return sorted(_entry_points())


@functools.cache
def load_instrument(name: str) -> type[Instrument]:
    """The Instrument class called ``name`` (entry point) or at import path ``name``."""
    ep = _entry_points().get(name)
    if ep is not None:
        return _check(ep.load(), name)
    module_name, _, attr = name.replace(":", ".").rpartition(".")
    if module_name:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        if module is not None and hasattr(module, attr):
            return _check(getattr(module, attr), name)
    known = ", ".join(available()) or "none installed"
    raise UnknownInstrumentError(
        f"no such instrument {name!r} (known: {known}); give an installed instrument's name "
        "or the import path of an Instrument class"
    )


def _check(obj: object, name: str) -> type[Instrument]:
    if isinstance(obj, type) and issubclass(obj, Instrument):
        return obj
    raise UnknownInstrumentError(f"{name!r} is not an obsbus Instrument class")
