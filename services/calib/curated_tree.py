"""Instrument signature data ("curated calibrations"): the human-curated tree, read and checked.

The tree, under a source root::

    <root>/<instrument>/<dataset type>/<detector name | physical filter | .>/<ISO TAI start>.<ext>

Per-detector types (``defects``) have one folder per detector, named by its full name;
per-filter types (``transmission_filter``) one folder per physical filter; per-instrument types
(``crosstalk``, ``camera``) keep their files directly in the dataset type's folder (the ``.``
folder). Each file is valid from the start its name gives until the start of the next file in
the same folder; the last one has no end. The extension must be one the dataset type's storage
class reads: ``.ecsv`` for tables, ``.yaml`` or ``.json`` for structured data.

Every file also says what it is: its metadata (top-level keys of a YAML/JSON mapping, the table
``meta`` of an ECSV file; keys are matched case-insensitively) names the instrument
(``instrument`` or ``INSTRUME``), the calibration type (``calibration_type`` or ``OBSTYPE``),
and for per-detector types the detector (``detector``: name or id; ``detector_name``;
``detector_id``), for per-filter types the filter (``physical_filter`` or ``filter``). If any
of that disagrees with where the file is, the whole write is refused, naming the file: a file
in the wrong folder would otherwise silently calibrate the wrong detector.

Reading is side-effect free: ``read_tree`` checks every file and returns what would be
written; ``services/calib/curated.py`` writes it.
"""

from __future__ import annotations

import importlib.resources
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from astropy.table import Table
from astropy.time import Time

from ..core.errors import InputError
from ..core.timespan import Timespan, time_to_ns
from ..datastore.storage_classes import formatter_for_file, get_storage_class
from ..datastore.stored import file_checksum
from ..instruments.base import Instrument
from ..registry.datasets import DatasetType

__all__ = [
    "CURATED_TYPES",
    "CuratedFile",
    "CuratedTree",
    "CuratedType",
    "default_source",
    "read_tree",
]

Key = Literal["detector", "physical_filter"]


@dataclass(frozen=True)
class CuratedType:
    """A dataset type curated calibrations may have, and what its folders are named by."""

    name: str
    key: Key | None  # None: one per instrument, files in the '.' folder
    storage_class: str
    doc: str

    @property
    def dimensions(self) -> tuple[str, ...]:
        return ("instrument",) if self.key is None else ("instrument", self.key)

    @property
    def dataset_type(self) -> DatasetType:
        return DatasetType(self.name, self.dimensions, self.storage_class, is_calibration=True)

    @property
    def extensions(self) -> tuple[str, ...]:
        sc = get_storage_class(self.storage_class)
        return tuple(f.extension for f in (sc.default_formatter, *sc.formatters))


CURATED_TYPES: Mapping[str, CuratedType] = {
    t.name: t
    for t in (
        CuratedType(
            "defects",
            "detector",
            "AstropyTable",
            "bad pixel regions of a detector (x0, y0, width, height)",
        ),
        CuratedType(
            "transmission_filter",
            "physical_filter",
            "AstropyTable",
            "filter throughput against wavelength",
        ),
        CuratedType("crosstalk", None, "StructuredDataDict", "amplifier crosstalk coefficients"),
        CuratedType(
            "camera",
            None,
            "Camera",
            "the camera description: detectors (id, name, serial) and their amplifiers",
        ),
    )
}

# Metadata keys (lower case) that say what a file is, by what they must agree with.
_INSTRUMENT_KEYS = ("instrument", "instrume")
_TYPE_KEYS = ("calibration_type", "obstype")
_DETECTOR_KEYS = ("detector", "detector_name", "detector_id")
_FILTER_KEYS = ("physical_filter", "filter")


@dataclass(frozen=True)
class CuratedFile:
    """One file of a tree, checked, with the data ID and validity range it is written with."""

    path: Path
    curated_type: CuratedType
    folder: str  # detector name, physical filter, or "." (per instrument)
    data_id: Mapping[str, Any]
    timespan: Timespan
    checksum: str  # of the content that was checked; the write refuses a file changed since


@dataclass(frozen=True)
class CuratedTree:
    instrument: str
    root: Path  # <source>/<instrument>
    files: tuple[CuratedFile, ...]

    @property
    def types(self) -> list[CuratedType]:
        names = sorted({f.curated_type.name for f in self.files})
        return [CURATED_TYPES[n] for n in names]


def default_source(instrument: type[Instrument]) -> Path:
    """The curated tree shipped with ``instrument`` (its ``curated_calibrations`` resource)."""
    spec = instrument.curated_calibrations
    if not spec:
        raise InputError(
            f"instrument {instrument.name} ships no curated calibrations; give --source DIR "
            f"(a folder holding {instrument.name}/<dataset type>/...)"
        )
    package, _, folder = spec.partition(":")
    try:
        resource = importlib.resources.files(package)
    except ModuleNotFoundError as err:
        raise InputError(
            f"instrument {instrument.name}: curated calibrations {spec!r}: no package {package!r}"
        ) from err
    path = Path(str(resource.joinpath(folder) if folder else resource))
    if not path.is_dir():
        raise InputError(
            f"instrument {instrument.name}: curated calibrations {spec!r}: no folder {path}"
        )
    return path


def read_tree(instrument: type[Instrument], source: Path) -> CuratedTree:
    """Read and check the whole tree for ``instrument`` under ``source``.

    Raises ``InputError`` naming the first offending file or folder: an unknown dataset type,
    detector or filter, a file name that is not an ISO time, an extension the type cannot be
    stored as, unreadable content, or metadata that disagrees with the file's place.
    """
    source = Path(source)
    root = source / instrument.name
    if not root.is_dir():
        raise InputError(
            f"no curated calibrations for {instrument.name} in {source}: expected a folder "
            f"{root} holding <dataset type>/<detector|filter|.>/<ISO start>.<ecsv|yaml|json>"
        )
    detectors = {d.full_name: d.id for d in instrument.detectors}
    filters = {f.physical_filter for f in instrument.filters}
    files: list[CuratedFile] = []
    for type_dir in _entries(root):
        curated = CURATED_TYPES.get(type_dir.name)
        if curated is None or not type_dir.is_dir():
            raise InputError(
                f"{type_dir}: not a curated calibration type folder (known types: "
                f"{', '.join(sorted(CURATED_TYPES))})"
            )
        if curated.key is None:
            for entry in _entries(type_dir):
                if entry.is_dir():
                    raise InputError(
                        f"{entry}: {curated.name} is one per instrument; its files go directly "
                        f"in {type_dir} (the '.' folder), not in a subfolder"
                    )
            files.extend(_read_folder(instrument, curated, type_dir, ".", {}))
            continue
        for key_dir in _entries(type_dir):
            if not key_dir.is_dir():
                what = "detector name" if curated.key == "detector" else "physical filter"
                raise InputError(
                    f"{key_dir}: {curated.name} files go in one folder per {what} "
                    f"({type_dir}/<{what}>/<ISO start>.<ext>)"
                )
            value: Any
            if curated.key == "detector":
                if key_dir.name not in detectors:
                    raise InputError(
                        f"{key_dir}: {instrument.name} has no detector named {key_dir.name!r}"
                    )
                value = detectors[key_dir.name]
            else:
                if key_dir.name not in filters:
                    raise InputError(
                        f"{key_dir}: {instrument.name} has no physical filter {key_dir.name!r}"
                    )
                value = key_dir.name
            files.extend(
                _read_folder(instrument, curated, key_dir, key_dir.name, {curated.key: value})
            )
    if not files:
        raise InputError(f"{root}: no curated calibration files found")
    return CuratedTree(instrument.name, root, tuple(files))


def _entries(folder: Path) -> list[Path]:
    """A folder's entries in name order, without hidden ones (``.DS_Store``, editor files)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _read_folder(
    instrument: type[Instrument],
    curated: CuratedType,
    folder: Path,
    folder_name: str,
    key: Mapping[str, Any],
) -> list[CuratedFile]:
    """The files of one (dataset type, detector|filter|.) folder, each valid until the next."""
    starts: list[tuple[int, Path]] = []
    for path in _entries(folder):
        if not path.is_file():
            raise InputError(f"{path}: expected a file named <ISO TAI start>.<ext>, not a folder")
        stem, ext = _split_extension(path.name)
        if ext not in curated.extensions:
            raise InputError(
                f"{path}: {curated.name} is stored as {curated.storage_class}; its files must "
                f"end in {' or '.join(curated.extensions)}"
            )
        starts.append((_start_ns(path, stem), path))
    starts.sort()
    for (a, first), (b, second) in itertools.pairwise(starts):
        if a == b:
            raise InputError(f"{first} and {second} start at the same time: keep only one")
    out: list[CuratedFile] = []
    for i, (begin, path) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else None
        _, checksum = file_checksum(path)
        metadata = _metadata(path, curated)
        _check_metadata(path, metadata, instrument, curated, folder_name, key)
        data_id = {"instrument": instrument.name, **key}
        out.append(CuratedFile(path, curated, folder_name, data_id, Timespan(begin, end), checksum))
    return out


def _split_extension(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext.lower()) if dot and stem else (name, "")


def _start_ns(path: Path, stem: str) -> int:
    try:
        return time_to_ns(Time(stem, format="isot", scale="tai"))
    except ValueError:
        raise InputError(
            f"{path}: the file name must be the ISO TAI time the file is valid from, e.g. "
            "2024-01-01T00:00:00.ecsv"
        ) from None


def _metadata(path: Path, curated: CuratedType) -> dict[str, Any]:
    """The file's own description of itself, with lower-case keys."""
    formatter = formatter_for_file(get_storage_class(curated.storage_class), path)
    try:
        content = formatter().read(path)
    except Exception as err:  # any parse error (YAML, JSON, ECSV) is the file's fault
        raise InputError(f"{path}: cannot be read as {curated.storage_class}: {err}") from err
    meta = content.meta if isinstance(content, Table) else content
    if not isinstance(meta, Mapping):
        raise InputError(
            f"{path}: must hold a mapping whose top-level keys describe it (instrument, "
            "calibration_type, ...)"
        )
    return {str(k).lower(): v for k, v in meta.items()}


def _check_metadata(
    path: Path,
    metadata: Mapping[str, Any],
    instrument: type[Instrument],
    curated: CuratedType,
    folder_name: str,
    key: Mapping[str, Any],
) -> None:
    def refuse(what: str) -> InputError:
        return InputError(f"{path}: {what}; the file's metadata must agree with its place")

    def present(names: Sequence[str]) -> dict[str, Any]:
        return {n: metadata[n] for n in names if metadata.get(n) is not None}

    for names, expected, what in (
        (_INSTRUMENT_KEYS, instrument.name, "instrument"),
        (_TYPE_KEYS, curated.name, "calibration type"),
    ):
        found = present(names)
        if not found:
            raise refuse(f"its metadata does not name the {what} (key {names[0]!r})")
        for name, value in found.items():
            if str(value) != expected:
                raise refuse(f"its {name} is {value!r} but its path says {expected!r}")

    detector = present(_DETECTOR_KEYS)
    filter_ = present(_FILTER_KEYS)
    if curated.key == "detector":
        if not detector:
            raise refuse("its metadata does not name the detector (key 'detector')")
        for name, value in detector.items():
            if not _same_detector(value, folder_name, key["detector"], name):
                raise refuse(f"its {name} is {value!r} but its path says {folder_name!r}")
    elif detector:
        raise refuse(
            f"it names detector {next(iter(detector.values()))!r}, but {curated.name} "
            "is not per detector"
        )
    if curated.key == "physical_filter":
        if not filter_:
            raise refuse("its metadata does not name the filter (key 'physical_filter')")
        for name, value in filter_.items():
            if str(value) != folder_name:
                raise refuse(f"its {name} is {value!r} but its path says {folder_name!r}")
    elif filter_:
        raise refuse(
            f"it names filter {next(iter(filter_.values()))!r}, but {curated.name} "
            "is not per filter"
        )


def _same_detector(value: Any, name: str, detector_id: int, meta_key: str) -> bool:
    """``detector`` may be the name or the id, ``detector_name`` the name, ``detector_id``
    the id."""
    if isinstance(value, bool):
        return False
    if meta_key != "detector_id" and str(value) == name:
        return True
    if meta_key == "detector_name":
        return False
    if isinstance(value, int):
        return value == detector_id
    return isinstance(value, str) and value.strip().isdigit() and int(value) == detector_id
