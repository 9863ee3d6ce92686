"""Storage classes: which Python type a dataset is, and how it is stored by default.

A dataset type names a storage class; the storage class picks the formatter used when none
is given explicitly. ``formatters`` lists further formatters that can read the same type, so
an ingested file is read according to its extension (e.g. a ``.json`` StructuredDataDict).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from services.core.errors import StorageClassError
from services.datastore.camera import CameraJsonFormatter, CameraYamlFormatter
from services.datastore.formatters import (
    EcsvFormatter,
    FitsImageFormatter,
    Formatter,
    JsonFormatter,
    YamlFormatter,
)


@dataclass(frozen=True)
class StorageClass:
    name: str
    pytype: str  # human-readable Python type, for messages and docs only
    default_formatter: type[Formatter]
    components: tuple[str, ...] = ()
    formatters: tuple[type[Formatter], ...] = ()  # alternatives, chosen by file extension


STORAGE_CLASSES: Mapping[str, StorageClass] = MappingProxyType(
    {
        sc.name: sc
        for sc in (
            StorageClass("Image", "numpy.ndarray", FitsImageFormatter, ("header", "metadata")),
            StorageClass("StructuredDataDict", "dict | list", YamlFormatter, (), (JsonFormatter,)),
            StorageClass("Json", "dict | list", JsonFormatter),
            StorageClass("AstropyTable", "astropy.table.Table", EcsvFormatter, ("columns",)),
            # A dict checked as a camera.Camera; component "detector" takes parameter "detector".
            StorageClass(
                "Camera",
                "dict (a camera description)",
                CameraYamlFormatter,
                ("detector",),
                (CameraJsonFormatter,),
            ),
        )
    }
)


def get_storage_class(name: str) -> StorageClass:
    try:
        return STORAGE_CLASSES[name]
    except KeyError:
        known = ", ".join(sorted(STORAGE_CLASSES))
        raise StorageClassError(f"unknown storage class {name!r} (known: {known})") from None


def formatter_for_file(storage_class: StorageClass, path: Path) -> type[Formatter]:
    """The storage class's formatter whose extension ``path`` has, else its default.

    Compression suffixes are ignored, so ``raw.fits.fz`` counts as ``.fits``.
    """
    name = _strip_compression(path.name.lower())
    for cls in (storage_class.default_formatter, *storage_class.formatters):
        if name.endswith(cls.extension.lower()):
            return cls
    return storage_class.default_formatter


COMPRESSION_SUFFIXES = (".gz", ".fz", ".bz2", ".xz")


def compression_suffix(name: str) -> str:
    """The compression suffix ``name`` ends with (kept on ingested files), or ""."""
    lowered = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lowered.endswith(suffix):
            return suffix
    return ""


def _strip_compression(name: str) -> str:
    suffix = compression_suffix(name)
    return name[: len(name) - len(suffix)]
