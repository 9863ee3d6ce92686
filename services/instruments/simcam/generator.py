"""Write realistic SimCam raw files: one small FITS file per detector per exposure.

``write_exposure`` writes the 205 files of one exposure; ``generate_night`` writes a night
(biases, darks, flats, then science) with ``write_exposure`` at a fixed cadence, and
``plan_night`` says what that night holds. Everything is deterministic for a given seed.

Files are ``OUTDIR/<DAYOBS>/<SEQNUM:06d>/SC_O_<DAYOBS>_<SEQNUM:06d>_<RXX_SYY>.fits``: a primary
HDU of 16×16 uint16 pixels (bias level + read noise, plus dark current, a flat-field level or
sky and a star by image type) with the full header of ``translator.CARDS``. Each file is written
under a temporary name and renamed, so a watcher never sees half a file.

Times: DATE-BEG/DATE-END are TAI. ``when`` may be a naive datetime or ISO string (taken as TAI)
or a timezone-aware datetime (converted with TAI - UTC = 37 s, valid since 2017). Pointings
are chosen in alt/az (always above 35° elevation) and converted to ICRS RA/Dec with a GMST
formula and first-order precession (no astropy, no IERS tables): good to about an arcminute
(no nutation, aberration or refraction), which is all a simulation needs.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..base import DetectorDef
from .instrument import DETECTORS, FILTERS
from .translator import (
    CARDS,
    DAY_OBS_OFFSET_S,
    INSTRUMENT_NAME,
    KEYWORDS,
    SITE_HEIGHT_M,
    SITE_LAT_DEG,
    SITE_LON_DEG,
    TELESCOPE_NAME,
    SimCamTranslator,
)

__all__ = [
    "DEFAULT_START",
    "IMAGE_TYPES",
    "ExposureSpec",
    "generate_night",
    "obs_id",
    "plan_night",
    "raw_path",
    "to_tai",
    "write_exposure",
]

IMAGE_TYPES = ("BIAS", "DARK", "FLAT", "OBJECT")
DEFAULT_START = "2024-11-26T00:30:00"  # TAI: early evening at Cerro Pachón, day_obs 20241125
PIXELS = (16, 16)
_FITS_BLOCK = 2880
TAI_MINUS_UTC = timedelta(seconds=37)  # leap seconds since 2017-01-01
READOUT_S = 0.3  # shutter-closed time counted in DARKTIME
# Science filters in the order a night uses them (10 exposures each), and the flat filter.
SCIENCE_FILTERS = ("r_57", "i_39", "z_20", "y_10", "g_6", "u_24")
FLAT_FILTER = "r_57"
_SKY_E_PER_S = {"u_24": 2.0, "g_6": 9.0, "r_57": 20.0, "i_39": 30.0, "z_20": 45.0, "y_10": 55.0}
_PHYSICAL_FILTERS = frozenset(f.physical_filter for f in FILTERS)


@dataclass(frozen=True)
class ExposureSpec:
    """What one exposure is. Defaults: a 30 s science exposure in r.

    ``None`` fields take the image type's defaults (see ``resolved``). ``group_id`` defaults
    to the exposure's own DATE-BEG; exposures taken as one sequence share it, with
    ``group_index`` (1-based) and ``group_size``.
    """

    img_type: str = "OBJECT"
    physical_filter: str | None = None
    exposure_time: float | None = None
    object: str | None = None
    reason: str | None = None
    program: str | None = None
    group_id: str | None = None
    group_index: int = 1
    group_size: int = 1

    def resolved(self) -> ExposureSpec:
        """The spec with every default filled in; raises ValueError if it is inconsistent."""
        img_type = self.img_type.upper()
        if img_type not in IMAGE_TYPES:
            raise ValueError(f"image type {self.img_type!r} is not one of {IMAGE_TYPES}")
        defaults: dict[str, tuple[str, float, str, str, str]] = {
            "BIAS": ("empty", 0.0, "bias", "bias", "calib"),
            "DARK": ("empty", 30.0, "dark", "dark", "calib"),
            "FLAT": (FLAT_FILTER, 15.0, "flat", "flat", "calib"),
            "OBJECT": ("r_57", 30.0, "", "survey", "SIMSURVEY"),
        }
        band, exptime, target, reason, program = defaults[img_type]
        spec = replace(
            self,
            img_type=img_type,
            physical_filter=self.physical_filter or band,
            exposure_time=exptime if self.exposure_time is None else float(self.exposure_time),
            object=self.object if self.object is not None else target,
            reason=self.reason or reason,
            program=self.program or program,
        )
        if spec.physical_filter not in _PHYSICAL_FILTERS:
            raise ValueError(f"SimCam has no filter {spec.physical_filter!r}")
        if spec.exposure_time is None or spec.exposure_time < 0:
            raise ValueError("exposure time must be >= 0")
        if not 1 <= spec.group_index <= spec.group_size:
            raise ValueError("need 1 <= group_index <= group_size")
        return spec


def to_tai(when: datetime | str) -> datetime:
    """A naive datetime in TAI: naive input is TAI already, aware input is converted."""
    if isinstance(when, str):
        text = when.strip()
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None) + TAI_MINUS_UTC
    return when


def day_obs_of(when_tai: datetime) -> int:
    """The observing day (YYYYMMDD) of a TAI time: its date 12 h earlier."""
    return int((when_tai - timedelta(seconds=DAY_OBS_OFFSET_S)).strftime("%Y%m%d"))


def obs_id(day_obs: int, seq: int) -> str:
    return f"SC_O_{day_obs}_{seq:06d}"


def raw_path(outdir: Path, day_obs: int, seq: int, detector: DetectorDef) -> Path:
    """Where ``write_exposure`` puts one detector's file."""
    name = f"{obs_id(day_obs, seq)}_{detector.full_name}.fits"
    return Path(outdir) / str(day_obs) / f"{seq:06d}" / name


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


# --- pointing: alt/az <-> RA/Dec without astropy ---------------------------------------------


def _lst_deg(when_tai: datetime) -> float:
    """Local mean sidereal time at the site (degrees), UT1 ~ UTC."""
    utc = when_tai - TAI_MINUS_UTC
    jd = 2440587.5 + (utc - datetime(1970, 1, 1)).total_seconds() / 86400.0
    gmst = 280.46061837 + 360.98564736629 * (jd - 2451545.0)
    return (gmst + SITE_LON_DEG) % 360.0


def _years_since_j2000(when_tai: datetime) -> float:
    return (when_tai - datetime(2000, 1, 1, 12)).total_seconds() / (365.25 * 86400.0)


def _precess(ra: float, dec: float, years: float) -> tuple[float, float]:
    """First-order precession of (ra, dec) in degrees by ``years`` (negative: backwards)."""
    m, n = 46.1 / 3600.0, 20.04 / 3600.0  # degrees per year
    r, d = math.radians(ra), math.radians(dec)
    ra_new = ra + (m + n * math.sin(r) * math.tan(d)) * years
    return ra_new % 360.0, dec + n * math.cos(r) * years


def _radec_from_altaz(az: float, alt: float, when_tai: datetime) -> tuple[float, float]:
    """ICRS (~J2000) RA/Dec seen at (az, alt) from the site at ``when_tai``."""
    lat, a, el = map(math.radians, (SITE_LAT_DEG, az, alt))
    dec = math.asin(math.sin(el) * math.sin(lat) + math.cos(el) * math.cos(lat) * math.cos(a))
    ha = math.atan2(
        -math.sin(a) * math.cos(el),
        math.cos(lat) * math.sin(el) - math.sin(lat) * math.cos(el) * math.cos(a),
    )
    ra = (_lst_deg(when_tai) - math.degrees(ha)) % 360.0
    return _precess(ra, math.degrees(dec), -_years_since_j2000(when_tai))


def _altaz_from_radec(ra: float, dec: float, when_tai: datetime) -> tuple[float, float]:
    """(az, alt) of ICRS (ra, dec) seen from the site at ``when_tai`` (no refraction)."""
    ra, dec = _precess(ra, dec, _years_since_j2000(when_tai))
    lat, d = math.radians(SITE_LAT_DEG), math.radians(dec)
    ha = math.radians(_lst_deg(when_tai) - ra)
    alt = math.asin(math.sin(lat) * math.sin(d) + math.cos(lat) * math.cos(d) * math.cos(ha))
    az = math.atan2(
        -math.cos(d) * math.sin(ha),
        math.cos(lat) * math.sin(d) - math.sin(lat) * math.cos(d) * math.cos(ha),
    )
    return math.degrees(az) % 360.0, math.degrees(alt)


def _airmass(alt_deg: float) -> float:
    """Kasten & Young (1989)."""
    term: float = 0.50572 * math.pow(alt_deg + 6.07995, -1.6364)
    return 1.0 / (math.sin(math.radians(alt_deg)) + term)


# --- headers and pixels ---------------------------------------------------------------------


def _exposure_cards(
    spec: ExposureSpec, day_obs: int, seq: int, begin: datetime, rng: np.random.Generator
) -> dict[str, Any]:
    """The cards every detector of the exposure shares (keyword -> value)."""
    assert spec.exposure_time is not None
    end = begin + timedelta(seconds=spec.exposure_time)
    cards: dict[str, Any] = {
        "TELESCOP": TELESCOPE_NAME,
        "INSTRUME": INSTRUMENT_NAME,
        "OBS-LONG": SITE_LON_DEG,
        "OBS-LAT": SITE_LAT_DEG,
        "OBS-ELEV": SITE_HEIGHT_M,
        "OBSID": obs_id(day_obs, seq),
        "DAYOBS": day_obs,
        "SEQNUM": seq,
        "GROUPID": spec.group_id or _iso(begin),
        "CURINDEX": spec.group_index,
        "MAXINDEX": spec.group_size,
        "IMGTYPE": spec.img_type,
        "REASON": spec.reason,
        "PROGRAM": spec.program,
        "OBJECT": spec.object,
        "TIMESYS": "TAI",
        "DATE-BEG": _iso(begin),
        "DATE-END": _iso(end),
        "EXPTIME": spec.exposure_time,
        "DARKTIME": round(spec.exposure_time + READOUT_S, 3),
        "FILTER": spec.physical_filter,
        "FOCUSZ": 0.0,
        "AIRTEMP": round(float(rng.normal(11.0, 1.5)), 2),
        "PRESSURE": round(float(rng.normal(743.0, 1.0)), 2),
        "HUMIDITY": round(float(rng.uniform(15.0, 45.0)), 1),
        "BUNIT": "adu",
    }
    az, el = float(rng.uniform(0.0, 360.0)), float(rng.uniform(35.0, 85.0))
    if spec.img_type == "OBJECT":
        ra, dec = _radec_from_altaz(az, el, begin)
        az_end, el_end = _altaz_from_radec(ra, dec, end)
        cards |= {
            "RADESYS": "ICRS",
            "RA": round(ra, 6),
            "DEC": round(dec, 6),
            "ROTPA": round(float(rng.uniform(-90.0, 90.0)), 4),
            "AMSTART": round(_airmass(el), 4),
            "AZSTART": round(az, 6),
            "ELSTART": round(el, 6),
            "AZEND": round(az_end, 6),
            "ELEND": round(el_end, 6),
        }
        if not spec.object:
            cards["OBJECT"] = f"field_{round(ra):03d}{round(dec):+03d}"
    else:  # calibrations: the dome (flat screen) position, no sky pointing
        cards |= {"AZSTART": round(az, 6), "ELSTART": round(el, 6)}
        cards |= {"AZEND": cards["AZSTART"], "ELEND": cards["ELSTART"]}
    return cards


def _header(values: dict[str, Any]) -> bytes:
    """Card images (80 bytes each) of the table's cards that ``values`` gives, in the table's
    order and with the table's comments. astropy formats the cards; writing a file is then
    only joining bytes (astropy's per-file header and HDU verification costs ~10 ms a file).
    """
    unknown = set(values) - set(KEYWORDS)
    if unknown:
        raise KeyError(f"not SimCam header keywords: {sorted(unknown)}")
    header = fits.Header(
        [(c.keyword, values[c.keyword], c.comment) for c in CARDS if c.keyword in values]
    )
    return _card_images(header)


def _card_images(header: fits.Header) -> bytes:
    text: str = header.tostring(endcard=False, padding=False)
    return text.encode("ascii")


@functools.cache
def _detector_block(detector_id: int) -> bytes:
    det = DETECTORS[detector_id]
    raft, slot = det.full_name.split("_")
    values = {"DETECTOR": det.id, "DETNAME": det.full_name, "RAFTBAY": raft, "CCDSLOT": slot}
    return _header(values | {"DETSER": det.serial})


@functools.cache
def _structure_blocks() -> tuple[bytes, bytes]:
    """The cards before and after the SimCam cards of a 16x16 uint16 primary HDU."""
    head = fits.Header(
        [
            ("SIMPLE", True, "conforms to FITS standard"),
            ("BITPIX", 16, "array data type"),
            ("NAXIS", 2, "number of array dimensions"),
            ("NAXIS1", PIXELS[1]),
            ("NAXIS2", PIXELS[0]),
        ]
    )
    tail = fits.Header([("BSCALE", 1), ("BZERO", 32768)])
    return _card_images(head), _card_images(tail) + b"END".ljust(80)


def _pad(block: bytes, fill: bytes) -> bytes:
    return block + fill * (-len(block) % _FITS_BLOCK)


def _fits_file(exposure_block: bytes, detector_block: bytes, stored: np.ndarray) -> bytes:
    head, tail = _structure_blocks()
    header = _pad(head + exposure_block + detector_block + tail, b" ")
    return header + _pad(stored.tobytes(), b"\0")


def _pixels(
    spec: ExposureSpec, detectors: Sequence[DetectorDef], rng: np.random.Generator
) -> np.ndarray:
    """(n_detectors, 16, 16) uint16: bias + read noise + the signal of the image type."""
    assert spec.exposure_time is not None and spec.physical_filter is not None
    n = len(detectors)
    ids = np.array([d.id for d in detectors], dtype=np.float64)[:, None, None]
    bias = 15000.0 + (ids * 131.0) % 2000.0  # a stable per-detector bias level (ADU)
    gain = 1.5  # e-/ADU
    electrons = np.zeros((n, *PIXELS))
    darktime = spec.exposure_time + READOUT_S
    if spec.img_type == "DARK":
        electrons = rng.poisson(0.02 * darktime, (n, *PIXELS)).astype(np.float64)
    elif spec.img_type == "FLAT":
        y, x = np.mgrid[0 : PIXELS[0], 0 : PIXELS[1]]
        vignetting = 1.0 - 0.002 * ((x - 7.5) ** 2 + (y - 7.5) ** 2) / 8.0
        electrons = rng.poisson(20000.0 * vignetting, (n, *PIXELS)).astype(np.float64)
    elif spec.img_type == "OBJECT":
        sky = _SKY_E_PER_S.get(spec.physical_filter, 20.0) * spec.exposure_time
        electrons = rng.poisson(sky, (n, *PIXELS)).astype(np.float64)
        # one star per detector: a Gaussian PSF somewhere on the 16x16 stamp
        y, x = np.mgrid[0 : PIXELS[0], 0 : PIXELS[1]]
        cx, cy = rng.uniform(3, 12, (2, n, 1, 1))
        flux = rng.uniform(2e3, 5e4, (n, 1, 1))
        sigma = 1.5
        electrons += (
            flux
            / (2 * math.pi * sigma**2)
            * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        )
    adu = bias + electrons / gain + rng.normal(0.0, 6.0, (n, *PIXELS))
    return np.asarray(np.clip(np.rint(adu), 0, 65535), dtype=np.uint16)


def write_exposure(
    outdir: Path | str,
    seq: int,
    when: datetime | str,
    spec: ExposureSpec | None = None,
    *,
    seed: int = 0,
    detectors: Iterable[int] | None = None,
) -> list[Path]:
    """Write one exposure's raw files (one per detector) and return their paths.

    ``seq`` is the SEQNUM within the observing day of ``when`` (the start, see ``to_tai``);
    ``spec`` says what the exposure is (default: 30 s science in r); ``detectors`` limits the
    detector ids written (default all 205). Pixels, weather and pointing are a pure function
    of (seed, day_obs, seq).
    """
    spec = (spec or ExposureSpec()).resolved()
    begin = to_tai(when)
    day_obs = day_obs_of(begin)
    SimCamTranslator.compute_exposure_id(day_obs, seq)  # validates seq
    wanted = None if detectors is None else set(detectors)
    dets = [d for d in DETECTORS if wanted is None or d.id in wanted]
    if wanted is not None and len(dets) != len(wanted):
        raise ValueError(f"SimCam has no detectors {sorted(wanted - {d.id for d in dets})}")
    rng = np.random.default_rng([seed, day_obs, seq])
    exposure_block = _header(_exposure_cards(spec, day_obs, seq, begin, rng))
    pixels = _pixels(spec, dets, rng)
    # FITS stores uint16 as int16 with BZERO = 32768, big-endian.
    stored = (pixels.astype(np.int32) - 32768).astype(">i2")
    folder = Path(outdir) / str(day_obs) / f"{seq:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for det, data in zip(dets, stored, strict=True):
        path = raw_path(Path(outdir), day_obs, seq, det)
        partial = path.with_name(path.name + ".part")
        partial.write_bytes(_fits_file(exposure_block, _detector_block(det.id), data))
        os.replace(partial, path)
        paths.append(path)
    return paths


def plan_night(exposures: int) -> list[ExposureSpec]:
    """What a night of ``exposures`` holds, in order.

    About 10% biases, 5% darks and 10% flats (at least one of each while there is room,
    biases first), then science: 30 s exposures changing filter every 10 (r, i, z, y, g, u).
    Each calibration block is one group (shared GROUPID, CURINDEX 1..MAXINDEX).
    """
    if exposures < 0:
        raise ValueError("the number of exposures must be >= 0")
    n_bias = min(exposures, max(1, exposures // 10))
    n_dark = min(exposures - n_bias, max(1, exposures // 20))
    n_flat = min(exposures - n_bias - n_dark, max(1, exposures // 10))
    n_science = exposures - n_bias - n_dark - n_flat
    plan: list[ExposureSpec] = []
    for img_type, count in (("BIAS", n_bias), ("DARK", n_dark), ("FLAT", n_flat)):
        plan += [
            ExposureSpec(img_type, group_index=i, group_size=count) for i in range(1, count + 1)
        ]
    plan += [
        ExposureSpec("OBJECT", physical_filter=SCIENCE_FILTERS[(k // 10) % len(SCIENCE_FILTERS)])
        for k in range(n_science)
    ]
    return plan


def generate_night(
    outdir: Path | str,
    exposures: int,
    start: datetime | str = DEFAULT_START,
    interval: float = 40.0,
    *,
    seed: int = 0,
    first_seq: int = 1,
    detectors: Iterable[int] | None = None,
) -> list[Path]:
    """Write a night of ``exposures`` exposures (``plan_night``) ``interval`` seconds apart.

    SEQNUM runs from ``first_seq``. An exposure longer than ``interval`` minus the readout
    time is shortened to fit, so exposures never overlap. ``detectors`` limits the detector
    ids written (default all 205). Returns every file written, in order (exposure, then
    detector id).
    """
    wanted = None if detectors is None else sorted(set(detectors))
    if interval <= 0:
        raise ValueError("the interval must be > 0 seconds")
    begin = to_tai(start)
    plan = plan_night(exposures)
    max_exptime = max(0.0, interval - READOUT_S)
    paths: list[Path] = []
    group_ids: dict[int, str] = {}
    for k, spec in enumerate(plan):
        when = begin + timedelta(seconds=k * interval)
        resolved = spec.resolved()
        assert resolved.exposure_time is not None
        first = k - (spec.group_index - 1)  # the plan index that started this group
        group_ids.setdefault(first, _iso(when))
        resolved = replace(
            resolved,
            exposure_time=min(resolved.exposure_time, max_exptime),
            group_id=group_ids[first],
        )
        paths += write_exposure(outdir, first_seq + k, when, resolved, seed=seed, detectors=wanted)
    return paths
