"""Dark Energy Camera (Blanco 4m): 62 science CCDs, 8 focus and 4 guide CCDs, many CCDs per file.

Facts and where they come from:

* Detector id = the header's CCDNUM, full name = DETPOS, which is what astro_metadata_translator's
  DecamTranslator gives as ``detector_unique_name`` (its ``detector_names`` table agrees for
  the science CCDs; it leaves out 61, N30, which has been dead since 2012).
* Serials (the DETECTOR card) and the CCDNUMs of the focus CCDs: the per-extension headers of
  raw DECam_00200666 (2013-04-22, as listed in a public data-model dump of that file); CCD 25
  (S1) agrees with the real headers in the test data ("S3-111_107419-8-3"). obs_decam's camera
  lists only the science CCDs, with ``serial = str(id)``, so its serials are not used.
* Not found anywhere: the CCDNUMs and serials of the guide CCDs (GS1, GS2, GN1, GN2; raws never
  hold them) and of focus CCD FN4 (absent from that raw). They get placeholder ids 75-79, above
  every CCDNUM known to be in use (1-64, 70-74), and no serial (learnt from the first raw).
* Filters and bands: obs_decam ``DECAM_FILTER_DEFINITIONS`` (decamFilters.py), including the
  "solid plate 0.0 0.0" state zero (bias) raws report, band "opaque".
* exposure_max/visit_max: 33554432, as obs_decam registers DECam.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from astro_metadata_translator import DecamTranslator

from ..core.errors import UnknownDetectorError
from ..datastore.formatters import FitsImageFormatter, Formatter
from ..fits.cards import FitsHeader
from ..fits.hdus import Hdu
from .base import DetectorDef, FilterDef, Instrument, Purpose

# CCDNUM, DETPOS, DETECTOR (serial).
_SCIENCE = """
1  S29 S3-06_123195-15-3     2  S30 S3-138_135959-17-3    3  S31 S3-154_123195-19-4
4  S25 S3-40_124750-19-1     5  S26 S3-144_124750-1-1     6  S27 S3-323_135959-13-1
7  S28 S3-37_107419-21-4     8  S20 S3-234_135959-22-1    9  S21 S3-351_135960-4-1
10 S22 S3-101_107419-17-2    11 S23 S3-164_107419-16-2    12 S24 S3-211_123194-16-2
13 S14 S3-128_135959-6-3     14 S15 S3-181_123194-20-2    15 S16 S3-232_135959-21-2
16 S17 S3-202_123194-12-1    17 S18 S3-331_135960-13-1    18 S19 S3-195_123195-21-2
19 S8  S3-337_135960-10-1    20 S9  S3-358_135960-19-4    21 S10 S3-349_135960-15-4
22 S11 S3-303_135960-8-4     23 S12 S3-121_135959-17-1    24 S13 S3-86_123194-6-1
25 S1  S3-111_107419-8-3     26 S2  S3-318_135959-18-1    27 S3  S3-106_123194-8-1
28 S4  S3-214_124750-21-3    29 S5  S3-150_124750-7-3     30 S6  S3-186_135959-8-3
31 S7  S3-183_123194-18-4    32 N1  S3-113_107419-19-2    33 N2  S3-222_135959-11-1
34 N3  S3-313_135959-19-1    35 N4  S3-187_124750-6-1     36 N5  S3-133_135959-8-1
37 N6  S3-177_107419-14-1    38 N7  S3-194_123195-18-4    39 N8  S3-156_123195-22-1
40 N9  S3-210_123194-16-1    41 N10 S3-301_135960-7-3     42 N11 S3-302_135960-8-3
43 N12 S3-243_135960-2-2     44 N13 S3-310_135959-5-1     45 N14 S3-191_123194-7-1
46 N15 S3-213_124750-22-3    47 N16 S3-117_123194-23-4    48 N17 S3-122_135959-17-2
49 N18 S3-329_135960-17-1    50 N19 S3-235_135959-22-2    51 N20 S3-355_135960-19-1
52 N21 S3-309_135960-17-3    53 N22 S3-305_135959-5-3     54 N23 S3-307_135959-10-2
55 N24 S3-147_112094-18-4    56 N25 S3-208_124750-3-2     57 N26 S3-119_123194-11-3
58 N27 S3-04_107419-13-3     59 N28 S3-178_107419-14-3    60 N29 S3-97_123195-13-4
61 N30 S3-112_107419-10-1    62 N31 S3-344_135960-13-4
"""
_FOCUS = """
63 FS4 A1-70_123195-11-5     64 FS3 A1-04_123195-12-5     70 FN3 A1-03_135959-17-5
71 FS2 A1-02_123194-4-5      72 FS1 A1-05_135959-6-5      73 FN1 A1-12_123195-6-5
74 FN2 A1-67_123195-22-5     75 FN4 -
"""
_GUIDE = """
76 GS1 -    77 GS2 -    78 GN1 -    79 GN2 -
"""

# physical_filter (the FILTER card) -> band (obs_decam DECAM_FILTER_DEFINITIONS).
_FILTERS = {
    "u DECam c0006 3500.0 1000.0": "u",
    "g DECam SDSS c0001 4720.0 1520.0": "g",
    "r DECam SDSS c0002 6415.0 1480.0": "r",
    "i DECam SDSS c0003 7835.0 1470.0": "i",
    "z DECam SDSS c0004 9260.0 1520.0": "z",
    "Y DECam c0005 10095.0 1130.0": "y",
    "VR DECam c0007 6300.0 2600.0": "VR",
    "N964 DECam c0008 9645.0 94.0": "N964",
    "N708 DECam c0012 7080.0 400.0": "N708",
    "N419 DECam c0013 4194.0 75.0": "N419",
    "N540 DECam c0014 5403.2 210.0": "N540",
    "solid plate 0.0 0.0": "opaque",
}


def _parse(table: str, purpose: Purpose) -> list[DetectorDef]:
    """Rows of (CCDNUM, DETPOS, serial); serial "-" means unknown."""
    words = table.split()
    rows = zip(words[0::3], words[1::3], words[2::3], strict=True)
    return [
        DetectorDef(int(num), pos, None if serial == "-" else serial, purpose)
        for num, pos, serial in rows
    ]


class DecamRawFormatter(FitsImageFormatter):
    """One CCD of a multi-extension DECam raw: the HDU its locator ("hdu=N") names."""


def _ccdnum(header: Mapping[str, Any]) -> int | None:
    try:
        return int(header["CCDNUM"])
    except (KeyError, TypeError, ValueError):
        return None


class DarkEnergyCamera(Instrument):
    name = "DECam"
    filters = tuple(FilterDef(physical, band) for physical, band in _FILTERS.items())
    detectors = tuple(
        sorted(
            _parse(_SCIENCE, "science") + _parse(_FOCUS, "focus") + _parse(_GUIDE, "guider"),
            key=lambda d: d.id,
        )
    )
    exposure_max = 33554432
    visit_max = 33554432
    translator = DecamTranslator

    @classmethod
    def raw_formatter(cls, data_id: Mapping[str, Any]) -> type[Formatter]:
        return DecamRawFormatter

    @classmethod
    def raw_headers(cls, path: Path, hdus: Sequence[Hdu]) -> list[tuple[str | None, FitsHeader]]:
        """One header per image HDU holding a known CCD: the primary merged with the HDU's
        own cards (DECam extensions say INHERIT = T), located by "hdu=N"."""
        out: list[tuple[str | None, FitsHeader]] = []
        for hdu in hdus:
            ccd = _ccdnum(hdu.header)
            if not hdu.holds_image or ccd is None or not cls.has_detector(ccd):
                continue
            merged = hdus[0].header if hdu.index == 0 else hdus[0].header.merged(hdu.header)
            out.append((f"hdu={hdu.index}", merged))
        if not out:
            raise UnknownDetectorError(f"{path}: no image HDU holds a known DECam CCD (CCDNUM)")
        return out
