"""Build real-looking raw FITS files from the real header dumps in tests/data/real-headers.

The dumps are what telescopes wrote; tests turn them into FITS files at test time (tiny pixel
arrays, full headers) and compare what obsbus registers with what astro_metadata_translator
says of the same header.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astro_metadata_translator import ObservationInfo
from astro_metadata_translator.tests import read_test_file
from astropy.io import fits

# Shipped with the repository (BSD-3, see its LICENSE), so a clone anywhere has them.
HEADER_DIR = Path(__file__).resolve().parents[1] / "data" / "real-headers"
_STRUCTURAL = {
    "SIMPLE",
    "EXTEND",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "XTENSION",
    "PCOUNT",
    "GCOUNT",
    "BZERO",
    "BSCALE",
    "NEXTEND",
    "CHECKSUM",
    "DATASUM",
    "ZIMAGE",
}


def header_dir() -> Path:
    return HEADER_DIR


def dump(name: str) -> dict[str, Any]:
    values: dict[str, Any] = read_test_file(name, dir=str(header_dir()))
    return values


def to_header(values: Mapping[str, Any], **changes: Any) -> fits.Header:
    header = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long keywords become HIERARCH cards, as on the summit
        for key, value in {**values, **changes}.items():
            if key in _STRUCTURAL or value is None:
                continue
            if isinstance(value, str):
                value = value.encode("ascii", "replace").decode()[:68]
            header[key] = value
    return header


def pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, size=(8, 6), dtype=np.int16)


def write_single(name: str, path: Path, **changes: Any) -> Path:
    """A one-detector raw (HSC-style): the whole header on a primary HDU with pixels."""
    fits.PrimaryHDU(data=pixels(), header=to_header(dump(name), **changes)).writeto(path)
    return path


def write_mef(name: str, path: Path, ccds: Sequence[Mapping[str, Any]], **changes: Any) -> Path:
    """A multi-extension raw (DECam-style): primary without pixels, one HDU per CCD.

    Each entry of ``ccds`` holds the cards that differ per CCD (e.g. CCDNUM, DETPOS, ...).
    """
    values = dump(name)
    primary = fits.PrimaryHDU(header=to_header(values, **changes))
    extensions = [
        fits.ImageHDU(data=pixels(i), header=to_header(values, **{**changes, **ccd}))
        for i, ccd in enumerate(ccds)
    ]
    fits.HDUList([primary, *extensions]).writeto(path)
    return path


def translate_dump(name: str, **changes: Any) -> ObservationInfo:
    """What astro_metadata_translator says of a header dump (the reference for tests)."""
    return ObservationInfo(dict(to_header(dump(name), **changes)), pedantic=False)
