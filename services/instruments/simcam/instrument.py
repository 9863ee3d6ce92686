"""SimCam: a simulated LSSTCam-like camera, and the worked example of adding an instrument.

Focal plane (as LSSTCam): a 5×5 grid of rafts ``Rxy`` (x = row 0-4, y = column 0-4).

* 21 science rafts (all but the corners) × 9 sensors ``S00``…``S22`` = 189 science detectors,
  ids 0-188 in raft-major order (R01_S00 = 0, R01_S01 = 1, …, R22_S11 = 94, …, R43_S22 = 188).
* 4 corner rafts R00, R04, R40, R44, each with two guiders ``SG0``/``SG1`` and two wavefront
  sensors ``SW0``/``SW1`` (extra-/intra-focal), ids 189-204 in the order SG0, SG1, SW0, SW1
  per raft (R00_SG0 = 189, R00_SW0 = 191, …, R44_SW1 = 204).

Devices: science rafts R01-R03, R10, R20, R41-R43 and all corner sensors are ITL
(``ITL-3800C-NNN``), the other 13 science rafts are e2v (``E2V-CCD250-NNN``). The three-digit
NNN = 100 + (id × 47) mod 900 is stable and unique (47 is prime to 900).

Filters (physical filter → band, LSSTCam names): u_24 → u, g_6 → g, r_57 → r, i_39 → i,
z_20 → z, y_10 → y, and ``empty`` → ``white`` (no filter in the beam, used for biases and
darks).
"""

from __future__ import annotations

from typing import ClassVar

from ..base import DetectorDef, FilterDef, Instrument, Purpose
from .translator import INSTRUMENT_NAME, SimCamTranslator

__all__ = [
    "CORNER_RAFTS",
    "DETECTORS",
    "FILTERS",
    "ITL_RAFTS",
    "SCIENCE_RAFTS",
    "SimCam",
    "detector_by_name",
]

RAFTS = tuple(f"R{row}{col}" for row in range(5) for col in range(5))
CORNER_RAFTS = ("R00", "R04", "R40", "R44")
SCIENCE_RAFTS = tuple(r for r in RAFTS if r not in CORNER_RAFTS)
SCIENCE_SLOTS = tuple(f"S{row}{col}" for row in range(3) for col in range(3))
# Corner slots in id order, with their purpose.
CORNER_SLOTS: tuple[tuple[str, Purpose], ...] = (
    ("SG0", "guider"),
    ("SG1", "guider"),
    ("SW0", "wavefront"),
    ("SW1", "wavefront"),
)
ITL_RAFTS = frozenset({"R01", "R02", "R03", "R10", "R20", "R41", "R42", "R43", *CORNER_RAFTS})


def _serial(detector_id: int, raft: str) -> str:
    number = 100 + (detector_id * 47) % 900
    return f"ITL-3800C-{number:03d}" if raft in ITL_RAFTS else f"E2V-CCD250-{number:03d}"


def _detectors() -> tuple[DetectorDef, ...]:
    slots: list[tuple[str, str, Purpose]] = [
        (raft, slot, "science") for raft in SCIENCE_RAFTS for slot in SCIENCE_SLOTS
    ]
    slots += [(raft, slot, purpose) for raft in CORNER_RAFTS for slot, purpose in CORNER_SLOTS]
    return tuple(
        DetectorDef(i, f"{raft}_{slot}", _serial(i, raft), purpose)
        for i, (raft, slot, purpose) in enumerate(slots)
    )


DETECTORS = _detectors()
FILTERS = (
    FilterDef("u_24", "u"),
    FilterDef("g_6", "g"),
    FilterDef("r_57", "r"),
    FilterDef("i_39", "i"),
    FilterDef("z_20", "z"),
    FilterDef("y_10", "y"),
    FilterDef("empty", "white"),
)
_BY_NAME = {d.full_name: d for d in DETECTORS}


def detector_by_name(full_name: str) -> DetectorDef:
    """The detector called ``full_name`` (e.g. ``R22_S11``)."""
    try:
        return _BY_NAME[full_name]
    except KeyError:
        raise KeyError(f"SimCam has no detector {full_name!r}") from None


class SimCam(Instrument):
    """The simulated LSSTCam-like camera: 205 detectors, filters ugrizy + empty."""

    name = INSTRUMENT_NAME
    filters = FILTERS
    detectors = DETECTORS
    # exposure ids are YYYYMMDDnnnnn (see the translator): below 10**13 until year 9999.
    exposure_max: ClassVar[int] = 10**13
    visit_max: ClassVar[int] = 10**13
    translator = SimCamTranslator
    curated_calibrations = "services.instruments.simcam:curated"
