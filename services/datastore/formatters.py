"""Formatters: read and write one in-memory Python type as one file format.

A stored file records its formatter as an import path ("module.Class"), so reading a dataset
needs nothing but that string; an instrument package adds a format by defining a ``Formatter``
subclass anywhere importable.
"""

from __future__ import annotations

import importlib
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import yaml
from astropy.io import fits
from astropy.table import Table

from services.core.errors import ComponentParameterError, FormatterError


class Formatter(ABC):
    """Reads and writes one Python type as files ending in ``extension``.

    ``components`` names the parts ``read`` can return on their own (e.g. a FITS header
    without the pixels); asking for any other component raises ``FormatterError``.
    ``component_parameters`` names, per component, the parameters it needs to pick its part
    out of the dataset: a camera's ``detector`` component needs ``detector`` (an id), which
    is not one of the camera's own dimensions.
    """

    extension: ClassVar[str]
    components: ClassVar[frozenset[str]] = frozenset()
    component_parameters: ClassVar[Mapping[str, frozenset[str]]] = MappingProxyType({})

    def __init__(
        self, locator: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> None:
        # Which part of the file to read when it holds several datasets (see StoredFile).
        self.locator = locator
        self.parameters = dict(parameters or {})

    @abstractmethod
    def read(self, path: Path, component: str | None = None) -> Any:
        """Return the object stored at ``path``, or only the named component of it."""

    @abstractmethod
    def write(self, obj: Any, path: Path) -> None:
        """Write ``obj`` to ``path`` (which does not exist yet)."""

    def check_component(self, component: str | None) -> None:
        """Raise ``FormatterError`` unless ``component`` is None or one this formatter has."""
        if component is None or component in self.components:
            return
        supported = ", ".join(sorted(self.components)) or "none"
        raise FormatterError(
            f"{type(self).__name__} has no component {component!r} (supported: {supported})"
        )

    def check_parameters(self, component: str | None) -> None:
        """Raise unless ``parameters`` are exactly those ``component`` needs.

        A missing one is a ``ComponentParameterError`` (the caller left out a key); one the
        component does not take is a ``FormatterError``.
        """
        wanted = self.component_parameters.get(component or "", frozenset())
        what = f"component {component!r}" if component else "the whole dataset"
        extra = sorted(set(self.parameters) - wanted)
        if extra:
            raise FormatterError(
                f"{type(self).__name__}: {what} takes no parameter {', '.join(extra)}"
            )
        missing = sorted(wanted - set(self.parameters))
        if missing:
            raise ComponentParameterError(
                f"{what} needs {', '.join(missing)} to pick its part out of the dataset; "
                f"give it (e.g. --data-id {missing[0]}=VALUE)"
            )

    def _require(self, obj: Any, types: tuple[type, ...], what: str) -> None:
        if not isinstance(obj, types):
            raise FormatterError(f"{type(self).__name__} writes {what}, not {type(obj).__name__}")


class FitsImageFormatter(Formatter):
    """A 2-D (or n-D) image as the data of a FITS HDU.

    Reading takes the HDU named by the locator (``hdu=N``, for one CCD of a multi-extension
    raw), else the primary HDU if it has data, else the first image extension (raw camera
    files often keep an empty primary HDU). Subclasses may ``transform`` the pixels (e.g. a
    rotated detector). Components: ``header`` is that HDU's
    header; ``metadata`` is the primary header plus the image HDU's non-structural cards,
    so observation metadata kept in the primary HDU is not lost.
    """

    extension = ".fits"
    components = frozenset({"header", "metadata"})

    def read(self, path: Path, component: str | None = None) -> Any:
        self.check_component(component)
        # memmap=False: the file must be closed when we return (it may be moved or removed).
        with fits.open(path, memmap=False) as hdus:
            index = self._hdu_index(hdus)
            if index is None:
                raise FormatterError(f"{path} has no image HDU with data")
            hdu = hdus[index]
            if component == "header":
                return hdu.header.copy()
            if component == "metadata":
                merged = hdus[0].header.copy()
                if index != 0:
                    merged.extend(hdu.header, strip=True, unique=True, update=True)
                return merged
            return self.transform(np.array(hdu.data))

    def transform(self, pixels: Any) -> Any:
        """Hook for instrument-specific pixel handling; the plain formatter changes nothing."""
        return pixels

    def _hdu_index(self, hdus: Any) -> int | None:
        if self.locator is None:
            return _first_image_hdu(hdus)
        key, _, value = self.locator.partition("=")
        if key != "hdu" or not value.isdigit() or int(value) >= len(hdus):
            raise FormatterError(f"{type(self).__name__}: bad locator {self.locator!r}")
        return int(value)

    def write(self, obj: Any, path: Path) -> None:
        self._require(obj, (np.ndarray,), "a numpy array")
        fits.PrimaryHDU(data=obj).writeto(path)


def _first_image_hdu(hdus: Any) -> int | None:
    image_types = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
    for index, hdu in enumerate(hdus):
        if isinstance(hdu, image_types) and hdu.data is not None:
            return index
    return None


class YamlFormatter(Formatter):
    """A dict or list as YAML (safe loader and dumper only: no arbitrary objects)."""

    extension = ".yaml"

    def read(self, path: Path, component: str | None = None) -> Any:
        self.check_component(component)
        with path.open(encoding="utf-8") as stream:
            return yaml.safe_load(stream)

    def write(self, obj: Any, path: Path) -> None:
        self._require(obj, (dict, list), "a dict or list")
        with path.open("w", encoding="utf-8") as stream:
            yaml.safe_dump(obj, stream, sort_keys=False, allow_unicode=True)


class JsonFormatter(Formatter):
    """A dict or list as JSON."""

    extension = ".json"

    def read(self, path: Path, component: str | None = None) -> Any:
        self.check_component(component)
        with path.open(encoding="utf-8") as stream:
            return json.load(stream)

    def write(self, obj: Any, path: Path) -> None:
        self._require(obj, (dict, list), "a dict or list")
        with path.open("w", encoding="utf-8") as stream:
            json.dump(obj, stream, indent=2, ensure_ascii=False)
            stream.write("\n")


class EcsvFormatter(Formatter):
    """An astropy Table as ECSV (keeps units, dtypes and metadata).

    Component ``columns`` is the list of column names.
    """

    extension = ".ecsv"
    components = frozenset({"columns"})

    def read(self, path: Path, component: str | None = None) -> Any:
        self.check_component(component)
        table = Table.read(path, format="ascii.ecsv")
        if component == "columns":
            return list(table.colnames)
        return table

    def write(self, obj: Any, path: Path) -> None:
        self._require(obj, (Table,), "an astropy Table")
        obj.write(path, format="ascii.ecsv")


def formatter_import_path(cls: type[Formatter]) -> str:
    """Return the "module.Class" path that ``load_formatter`` turns back into ``cls``."""
    if "." in cls.__qualname__:
        # Nested or function-local classes cannot be found again from a stored path.
        raise FormatterError(
            f"formatter {cls.__qualname__} must be defined at module level to be stored"
        )
    return f"{cls.__module__}.{cls.__qualname__}"


def load_formatter(path: str) -> type[Formatter]:
    """Import the ``Formatter`` subclass named by ``path`` ("package.module.Class")."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name or not class_name:
        raise FormatterError(f"formatter {path!r} is not an import path like 'module.Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "the module itself is missing" gets this message; a missing dependency
        # *inside* the module is reported as such below.
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise FormatterError(
                f"cannot load formatter {path!r}: no module named {module_name!r}"
            ) from exc
        raise FormatterError(f"cannot load formatter {path!r}: {exc}") from exc
    except Exception as exc:
        raise FormatterError(
            f"cannot load formatter {path!r}: importing {module_name!r} failed: {exc}"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise FormatterError(
            f"cannot load formatter {path!r}: module {module_name!r} has no {class_name!r}"
        )
    if not (inspect.isclass(cls) and issubclass(cls, Formatter)) or inspect.isabstract(cls):
        raise FormatterError(
            f"cannot load formatter {path!r}: it is not a concrete Formatter subclass"
        )
    extension = getattr(cls, "extension", None)
    if not (isinstance(extension, str) and extension.startswith(".")):
        raise FormatterError(
            f"cannot load formatter {path!r}: its 'extension' must be a string like '.fits'"
        )
    return cls
