"""Hyper Suprime-Cam (Subaru): 104 science CCDs and 8 focus CCDs, one CCD per raw file.

Facts and where they come from:

* Detector ids and names: lsst/obs_subaru ``hsc/camera/camera.py`` (ids 0-111, names like
  "1_53"; detectorType 1, focus, for ids 104-111). The names are also what
  astro_metadata_translator's HscTranslator gives as ``detector_unique_name`` for DET-ID.
* Serials: obs_subaru's camera lists ``serial = str(id)``, which is not the device serial
  raws report (T_CCDSN: "120" for detector 50, "061" for detector 37 in the real headers), so
  it is not used. Only those two real serials are known; every other detector's serial is
  None (unknown): the first raw ingested for it records the device its header names.
* Filters and bands: obs_subaru ``HSC_FILTER_DEFINITIONS`` (hscFilters.py); "empty" (FILTER01
  "NONE": darks/biases) has band "white" and "unknown" (FILTER01 unreadable) band "unknown",
  which is how HscTranslator names those states.
* Corner CCDs 100-103: obs_subaru flips ordinary HSC raws left/right and the corner CCDs
  top/bottom (HscMapper._flipChipsLR, HyperSuprimeCamCornerRawFormatter). Relative to the
  ordinary CCDs that is a half turn (top/bottom flip = half turn after a left/right flip), so
  with the ordinary raws left as they are, corner raws are turned by two quarter turns.
* exposure_max/visit_max: 21474800, as obs_subaru registers HSC.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from astro_metadata_translator import HscTranslator

from ..datastore.formatters import FitsImageFormatter, Formatter
from .base import DetectorDef, FilterDef, Instrument, Purpose

# Detector names in id order (id 0 is "1_53"); ids 104-111 are the focus CCDs.
_NAME_TABLE = """
1_53 1_54 1_55 1_56 1_42 1_43 1_44 1_45 1_46 1_47 1_36 1_37 1_38 1_39 1_40 1_41
0_30 0_29 0_28 1_32 1_33 1_34 0_27 0_26 0_25 0_24 1_00 1_01 1_02 1_03 0_23 0_22
0_21 0_20 1_04 1_05 1_06 1_07 0_19 0_18 0_17 0_16 1_08 1_09 1_10 1_11 0_15 0_14
0_13 0_12 1_12 1_13 1_14 1_15 0_11 0_10 0_09 0_08 1_16 1_17 1_18 1_19 0_07 0_06
0_05 0_04 1_20 1_21 1_22 1_23 0_03 0_02 0_01 0_00 1_24 1_25 1_26 1_27 0_34 0_33
0_32 1_28 1_29 1_30 0_41 0_40 0_39 0_38 0_37 0_36 0_47 0_46 0_45 0_44 0_43 0_42
0_56 0_55 0_54 0_53 0_31 1_35 0_35 1_31 1_48 1_51 1_52 1_57 0_57 0_52 0_51 0_48
"""
_NAMES = _NAME_TABLE.split()
FOCUS_IDS = range(104, 112)
CORNER_IDS = frozenset({100, 101, 102, 103})
# Device serials (T_CCDSN) seen in real raws; the rest are unknown.
_KNOWN_SERIALS = {37: "061", 50: "120"}

# Narrow-band filters NBnnnn (band Nnnn), by central wavelength in nm.
# fmt: off
_NARROW_BANDS = (
    387, 391, 395, 400, 430, 468, 497, 506, 515, 527,
    656, 718, 816, 872, 921, 926, 973, 1010,
)
# fmt: on
# physical_filter -> band (obs_subaru HSC_FILTER_DEFINITIONS).
_FILTERS = {
    "unknown": "unknown",
    "empty": "white",
    "HSC-G": "g",
    "HSC-R": "r",
    "HSC-R2": "r",
    "ENG-R1": "r",
    "HSC-I": "i",
    "HSC-I2": "i",
    "HSC-Z": "z",
    "HSC-Y": "y",
    "EB-GRI": "gri",
    "SH": "SH",
    "PH": "PH",
    "IB0945": "I945",
    **{f"NB{wl:04d}": f"N{wl}" for wl in _NARROW_BANDS},
}


def _detector(detector_id: int, name: str) -> DetectorDef:
    serial = _KNOWN_SERIALS.get(detector_id)  # None: learnt from the first raw
    purpose: Purpose = "focus" if detector_id in FOCUS_IDS else "science"
    return DetectorDef(detector_id, name, serial, purpose)


class HscRawFormatter(FitsImageFormatter):
    """An ordinary HSC raw: the pixels as written."""


class HscCornerRawFormatter(HscRawFormatter):
    """A raw of corner CCD 100-103: turned by a half turn relative to the ordinary CCDs."""

    quarter_turns: ClassVar[int] = 2

    def transform(self, pixels: Any) -> Any:
        return np.ascontiguousarray(np.rot90(pixels, k=self.quarter_turns))


class HyperSuprimeCam(Instrument):
    name = "HSC"
    filters = tuple(FilterDef(physical, band) for physical, band in _FILTERS.items())
    detectors = tuple(_detector(i, name) for i, name in enumerate(_NAMES))
    exposure_max = 21474800
    visit_max = 21474800
    exposure_step = 2  # HSC's visit (= exposure) ids are even
    translator = HscTranslator
    curated_calibrations = "services.instruments:_curated_hsc"

    @classmethod
    def raw_formatter(cls, data_id: Mapping[str, Any]) -> type[Formatter]:
        if int(data_id.get("detector", -1)) in CORNER_IDS:
            return HscCornerRawFormatter
        return HscRawFormatter
