"""Reading raw files' headers and translating them, without touching the repository.

A file is checked to be complete FITS before anything is trusted, the translator is chosen
from the primary header by astro_metadata_translator, and the Instrument of that name says
which headers (one per detector) to translate.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astro_metadata_translator import MetadataTranslator, ObservationInfo
from astropy.io import fits
from astropy.utils import iers

from ..core.errors import (
    IncompleteHeaderError,
    NotFitsError,
    NoTranslatorError,
    TruncatedFileError,
)
from ..instruments import Instrument, available, load_instrument

# What ingest cannot do without: a translation missing any of these is "incomplete_header".
REQUIRED_PROPERTIES = (
    "instrument",
    "exposure_id",
    "observation_id",
    "datetime_begin",
    "datetime_end",
    "physical_filter",
    "detector_num",
    "observation_type",
    "exposure_time",
)
# Everything else ingest reads from a translation (exposure and visit records, installations).
USED_PROPERTIES = frozenset(
    {
        *REQUIRED_PROPERTIES,
        "observing_day",
        "observing_day_offset",
        "exposure_group",
        "dark_time",
        "observation_reason",
        "observation_counter",
        "science_program",
        "object",
        "tracking_radec",
        "altaz_begin",
        "boresight_rotation_angle",
        "detector_serial",
    }
)
_FITS_SIGNATURE = b"SIMPLE  ="


def configure_offline_translation() -> None:
    """Translate headers without the network and without per-property log noise.

    astropy would otherwise try to download IERS tables for alt/az conversions; the bundled
    astropy-iers-data tables are used instead. Missing properties are reported by ingest as
    one "incomplete_header" reason, so the translator's own warnings are silenced.
    """
    iers.conf.auto_download = False
    iers.conf.iers_degraded_accuracy = "warn"
    logging.getLogger("astro_metadata_translator").setLevel(logging.ERROR)
    for name in available():  # importing an instrument registers its translator
        load_instrument(name)


@dataclass(frozen=True)
class TranslatedHeader:
    """One detector's translated header, and where in the file its pixels are."""

    locator: str | None
    info: ObservationInfo


def open_fits(path: Path) -> Any:
    """Open a FITS file with every header read, refusing non-FITS and truncated files."""
    try:
        with path.open("rb") as f:
            signature = f.read(len(_FITS_SIGNATURE))
    except OSError as err:
        raise NotFitsError(f"{path}: cannot read the file ({err.strerror})") from None
    if signature != _FITS_SIGNATURE:
        raise NotFitsError(f"{path}: not a FITS file (it does not start with SIMPLE)")
    size = os.path.getsize(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdus = fits.open(path, memmap=False, lazy_load_hdus=False)
    except (OSError, ValueError, IndexError) as err:
        raise TruncatedFileError(f"{path}: truncated or damaged FITS ({err})") from None
    for index, hdu in enumerate(hdus):
        needed = _data_end(hdus, index, hdu)
        if needed is not None and needed > size:
            hdus.close()
            raise TruncatedFileError(
                f"{path}: truncated: HDU {index} needs {needed} bytes, the file has {size}"
            )
    return hdus


def _data_end(hdus: Any, index: int, hdu: Any) -> int | None:
    """Where an HDU's data ends in the file, by its header."""
    # astropy's HDUList.fileinfo re-serialises every header to answer this; the HDU already
    # knows its data offset and size (the same numbers fileinfo reports), so ask it first.
    offset, length = getattr(hdu, "_data_offset", None), getattr(hdu, "_data_size", None)
    if isinstance(offset, int) and isinstance(length, int):
        return offset + length
    info = hdus.fileinfo(index)
    return None if info is None else int(info["datLoc"] + info["datSpan"])


def choose_translator(path: Path, primary: fits.Header) -> type[MetadataTranslator]:
    try:
        translator: type[MetadataTranslator] = MetadataTranslator.determine_translator(
            primary, filename=str(path)
        )
    except ValueError:
        raise NoTranslatorError(
            f"{path}: no header translator recognises this file (instrument "
            f"{primary.get('INSTRUME', 'unknown')!r})"
        ) from None
    return translator


def translate(
    path: Path, hdus: Any, instrument: type[Instrument], translator: type[MetadataTranslator]
) -> list[TranslatedHeader]:
    out = []
    for locator, header in instrument.raw_headers(path, hdus):
        # Translating only what ingest uses is a third cheaper than every property.
        info = ObservationInfo(
            header,
            translator_class=translator,
            pedantic=False,
            filename=str(path),
            subset=set(USED_PROPERTIES),
        )
        missing = [p for p in REQUIRED_PROPERTIES if getattr(info, p) is None]
        if missing:
            raise IncompleteHeaderError(
                f"{path}: the {translator.name} header does not give {', '.join(missing)}"
            )
        out.append(TranslatedHeader(locator, info))
    return out
