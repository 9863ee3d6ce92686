"""The Instrument plugin interface.

An instrument is a small declarative class: its name, its filters and its detectors, the
astro_metadata_translator class that reads its headers, and the raw formatter for each data
ID. Other
packages add instruments through the entry-point group ``obsbus.instruments`` (see
``loader.py``). ``register`` writes the instrument's static dimension records in one
transaction with sync semantics: running it twice changes nothing, and a changed definition
is a conflict error unless ``update`` is asked for with a reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..core.errors import InstrumentError, RecordConflictError
from ..core.timespan import BEGIN_UNBOUNDED
from ..datastore.formatters import FitsImageFormatter, Formatter
from ..fits.cards import FitsHeader
from ..fits.hdus import Hdu
from ..registry.datasets import DatasetType
from ..registry.registry import Registry

Purpose = Literal["science", "wavefront", "guider", "focus"]

# Every instrument's raws: one dataset per (exposure, detector).
RAW = DatasetType("raw", ("instrument", "exposure", "detector"), "Image")


@dataclass(frozen=True)
class FilterDef:
    physical_filter: str
    band: str


@dataclass(frozen=True)
class DetectorDef:
    id: int
    full_name: str
    serial: str | None  # None: not known in advance; the first raw's header records it
    purpose: Purpose = "science"


class RegisterCounts(dict[str, int]):
    """What ``Instrument.register`` wrote: new records per element (the mapping itself, so
    ``sum(counts.values())`` is how many are new), and changed ones per element in
    ``updated`` (only ``update=True`` changes records)."""

    def __init__(self) -> None:
        super().__init__()
        self.updated: dict[str, int] = {}


class Instrument:
    """Subclass and fill in the class attributes; everything else is derived from them."""

    name: ClassVar[str]
    filters: ClassVar[Sequence[FilterDef]] = ()
    detectors: ClassVar[Sequence[DetectorDef]] = ()
    exposure_max: ClassVar[int] = 2**40
    visit_max: ClassVar[int] = 2**40
    # How consecutive exposure ids advance (the dashboard flags a gap between two seen).
    exposure_step: ClassVar[int] = 1
    # The astro_metadata_translator MetadataTranslator subclass for this camera's headers.
    translator: ClassVar[type[Any] | None] = None
    # Package resource folder of curated calibrations ("package:folder"), if any.
    curated_calibrations: ClassVar[str | None] = None
    # Derived from the declarations above (asked once per raw file).
    _detectors_by_id: ClassVar[Mapping[int, DetectorDef]] = {}
    _physical_filters: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._detectors_by_id = {d.id: d for d in cls.detectors}
        cls._physical_filters = frozenset(f.physical_filter for f in cls.filters)

    # --- raw files ------------------------------------------------------------------------------

    @classmethod
    def raw_formatter(cls, data_id: Mapping[str, Any]) -> type[Formatter]:
        """The formatter that reads this instrument's raw for ``data_id``."""
        return FitsImageFormatter

    @classmethod
    def raw_headers(cls, path: Path, hdus: Sequence[Hdu]) -> list[tuple[str | None, FitsHeader]]:
        """The headers to translate in a raw file (read for this call only), with locators.

        Default: one detector per file; the primary header, merged with the first image
        extension's when the primary holds no data (compressed or MEF-style raws).
        """
        primary = hdus[0].header
        if primary.get("NAXIS", 0) == 0 and len(hdus) > 1:
            primary = primary.merged(hdus[1].header)
        return [(None, primary)]

    @classmethod
    def class_path(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def detector(cls, detector_id: int) -> DetectorDef:
        try:
            return cls._detectors_by_id[detector_id]
        except KeyError:
            raise InstrumentError(f"{cls.name} has no detector {detector_id}") from None

    @classmethod
    def has_detector(cls, detector_id: int) -> bool:
        return detector_id in cls._detectors_by_id

    @classmethod
    def physical_filters(cls) -> frozenset[str]:
        return cls._physical_filters

    # --- collection names (one place for the naming convention) ---------------------------------

    @classmethod
    def raw_run(cls) -> str:
        return f"{cls.name}/raw/all"

    @classmethod
    def calib_collection(cls, label: str | None = None) -> str:
        return f"{cls.name}/calib" if label is None else f"{cls.name}/calib/{label}"

    # --- registration ---------------------------------------------------------------------------

    @classmethod
    def records(cls) -> dict[str, list[dict[str, Any]]]:
        """The static dimension records this instrument defines, by element."""
        max_detector = max((d.id for d in cls.detectors), default=-1) + 1
        return {
            "instrument": [
                {
                    "name": cls.name,
                    "class_name": cls.class_path(),
                    "detector_max": max_detector,
                    "exposure_max": cls.exposure_max,
                    "visit_max": cls.visit_max,
                }
            ],
            "band": [{"name": b} for b in sorted({f.band for f in cls.filters})],
            "physical_filter": [
                {"instrument": cls.name, "name": f.physical_filter, "band": f.band}
                for f in cls.filters
            ],
            "detector": [
                {"instrument": cls.name, "id": d.id, "full_name": d.full_name, "purpose": d.purpose}
                for d in cls.detectors
            ],
            "physical_detector": [
                {"instrument": cls.name, "serial": d.serial, "purpose": d.purpose}
                for d in cls.detectors
                if d.serial is not None
            ],
        }

    @classmethod
    def register(
        cls, registry: Registry, *, update: bool = False, reason: str | None = None
    ) -> RegisterCounts:
        """Write the records; returns how many were new and changed per element (all zero
        on a repeat)."""
        if update and not reason:
            raise InstrumentError(f"updating instrument {cls.name} needs a reason")
        counts = RegisterCounts()
        with registry.transaction():
            for element, records in cls.records().items():
                if update:
                    counts[element], counts.updated[element] = cls._sync_or_update(
                        registry, element, records, reason
                    )
                    continue
                results = registry.sync_dimension_records(element, records)
                counts[element], counts.updated[element] = results.count("inserted"), 0
            for det in cls.detectors:
                if det.serial is not None:
                    cls._install_initial(registry, det.id, det.serial)
        return counts

    @classmethod
    def _install_initial(cls, registry: Registry, detector: int, serial: str) -> None:
        """The device a slot held from the start; later swaps are recorded with their time."""
        installed = registry.installed_detector(cls.name, detector, BEGIN_UNBOUNDED)
        if installed is not None and installed != serial:
            raise RecordConflictError(
                "detector_installation",
                {"instrument": cls.name, "detector": detector},
                {"physical_detector": (installed, serial)},
            )
        registry.record_installation(cls.name, detector, serial, BEGIN_UNBOUNDED)

    @staticmethod
    def _sync_or_update(
        registry: Registry, element: str, records: list[dict[str, Any]], reason: str | None
    ) -> tuple[int, int]:
        """(inserted, updated) records."""
        inserted = updated = 0
        for record in records:
            try:
                inserted += registry.sync_dimension_record(element, record) == "inserted"
            except RecordConflictError:
                diffs = registry.update_dimension_record(element, record, reason=reason or "")
                updated += bool(diffs)
        return inserted, updated
