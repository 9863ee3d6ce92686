"""SimCamTranslator: astro_metadata_translator for SimCam raw headers.

``CARDS`` below is the one table of SimCam header keywords. The generator writes exactly
these cards (in this order, with these comments) and nothing else; the translator reads them.
A card that names a ``prop`` *is* that ObservationInfo property (``_trivial_map`` is built
from the table, with the card's unit); the other cards feed the few computed ``to_*``
methods below. Constant properties are in ``_const_map``.

Conventions (LSSTCam-like):

* Times are TAI (``TIMESYS = 'TAI'``): ``DATE-BEG``/``DATE-END`` are ISOT strings.
* ``DAYOBS`` is the observing day, YYYYMMDD of the TAI start time minus 12 h, so one night
  has one day_obs; ``SEQNUM`` counts exposures within it from 1.
* exposure_id = visit_id = DAYOBS * 100000 + SEQNUM (one snap per visit);
  detector_exposure_id = exposure_id * 1000 + detector.
* ``IMGTYPE`` is upper case as the camera writes it (OBJECT, BIAS, DARK, FLAT);
  observation_type is its lower-case form with OBJECT read as ``science``.
* ``CURINDEX``/``MAXINDEX`` place an exposure in its ``GROUPID`` sequence (e.g. 5 biases
  taken together share one group).
* Calibration frames (bias, dark, dome flat) carry no RA/DEC, AMSTART or ROTPA: those
  translate to None; for science frames their absence is an error.

Translation does no network or site look-ups: the location is a fixed
``EarthLocation.from_geodetic`` for Cerro Pachón, built once on first use (nothing is built or
configured at import time).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import astropy.units as u
from astro_metadata_translator import MetadataTranslator, cache_translation
from astro_metadata_translator.translators.helpers import is_non_science
from astropy.coordinates import (
    ICRS,
    AltAz,
    Angle,
    EarthLocation,
    SkyCoord,
    UnitSphericalRepresentation,
)
from astropy.io import fits
from astropy.time import Time, TimeDelta

__all__ = [
    "CARDS",
    "DAY_OBS_OFFSET_S",
    "INSTRUMENT_NAME",
    "KEYWORDS",
    "SITE_HEIGHT_M",
    "SITE_LAT_DEG",
    "SITE_LON_DEG",
    "TELESCOPE_NAME",
    "Card",
    "SimCamTranslator",
    "observation_type_from_imgtype",
    "site_location",
]

INSTRUMENT_NAME = "SimCam"
TELESCOPE_NAME = "Simonyi Survey Telescope"
# Rubin Observatory, Cerro Pachón (geodetic WGS84).
SITE_LON_DEG = -70.749417
SITE_LAT_DEG = -30.244639
SITE_HEIGHT_M = 2663.0
# The observing day rolls over at 12:00 TAI (about 09:00 in Chile): day_obs = date(TAI - 12 h).
DAY_OBS_OFFSET_S = 12 * 3600
# exposure_id = DAYOBS * EXPOSURE_SEQ_SPAN + SEQNUM;
# detector_exposure_id = exposure_id * DETECTOR_SPAN + detector.
EXPOSURE_SEQ_SPAN = 100_000
DETECTOR_SPAN = 1000


@dataclass(frozen=True)
class Card:
    """One SimCam header keyword.

    ``prop``: the ObservationInfo property this card is read into verbatim (with ``unit`` if
    given), or None when a computed translation uses it. ``sky_only``: written only for
    exposures that see the sky; when absent the property is None unless the exposure is a
    science exposure (then translation fails).
    """

    keyword: str
    comment: str
    prop: str | None = None
    unit: u.UnitBase | None = None
    sky_only: bool = False


CARDS: tuple[Card, ...] = (
    # --- instrument, site ---
    Card("TELESCOP", "Telescope name", "telescope"),
    Card("INSTRUME", "Instrument name", "instrument"),
    Card("OBS-LONG", "[deg] Observatory east longitude"),
    Card("OBS-LAT", "[deg] Observatory latitude"),
    Card("OBS-ELEV", "[m] Observatory elevation"),
    # --- identity of the exposure ---
    Card("OBSID", "Observation id: SC_O_<DAYOBS>_<SEQNUM>", "observation_id"),
    Card("DAYOBS", "Observing day YYYYMMDD (TAI - 12 h)", "observing_day"),
    Card("SEQNUM", "Sequence number within DAYOBS", "observation_counter"),
    Card("GROUPID", "Group of exposures taken together", "exposure_group"),
    Card("CURINDEX", "Index of this exposure in its group (1-based)"),
    Card("MAXINDEX", "Number of exposures in the group"),
    Card("IMGTYPE", "Image type: OBJECT, BIAS, DARK or FLAT"),
    Card("REASON", "Why the exposure was taken", "observation_reason"),
    Card("PROGRAM", "Observing program / survey", "science_program"),
    Card("OBJECT", "Target or field name", "object"),
    # --- time ---
    Card("TIMESYS", "Time scale of DATE-BEG and DATE-END"),
    Card("DATE-BEG", "Start of exposure (TAI, ISOT)"),
    Card("DATE-END", "End of exposure (TAI, ISOT)"),
    Card("EXPTIME", "[s] Exposure (shutter open) time", "exposure_time", u.s),
    Card("DARKTIME", "[s] Dark current integration time", "dark_time", u.s),
    # --- optics ---
    Card("FILTER", "Physical filter", "physical_filter"),
    Card("FOCUSZ", "[mm] Camera hexapod defocus", "focus_z", u.mm),
    # --- pointing ---
    Card("RADESYS", "Frame of RA and DEC", sky_only=True),
    Card("RA", "[deg] Tracking ICRS right ascension", sky_only=True),
    Card("DEC", "[deg] Tracking ICRS declination", sky_only=True),
    Card("ROTPA", "[deg] Sky position angle", sky_only=True),
    Card("AMSTART", "Airmass at start of exposure", "boresight_airmass", sky_only=True),
    Card("AZSTART", "[deg] Azimuth at start (N through E)"),
    Card("ELSTART", "[deg] Elevation at start"),
    Card("AZEND", "[deg] Azimuth at end"),
    Card("ELEND", "[deg] Elevation at end"),
    # --- weather ---
    Card("AIRTEMP", "[deg_C] Outside air temperature", "temperature", u.deg_C),
    Card("PRESSURE", "[hPa] Outside air pressure", "pressure", u.hPa),
    Card("HUMIDITY", "[%] Outside relative humidity", "relative_humidity"),
    Card("BUNIT", "Pixel unit"),
    # --- detector ---
    Card("DETECTOR", "Detector id (0-204)", "detector_num"),
    Card("DETNAME", "Detector full name RXX_SYY", "detector_unique_name"),
    Card("RAFTBAY", "Raft (detector group)", "detector_group"),
    Card("CCDSLOT", "Sensor slot in the raft", "detector_name"),
    Card("DETSER", "Serial number of the device", "detector_serial"),
)

KEYWORDS: dict[str, Card] = {card.keyword: card for card in CARDS}

# IMGTYPE (as written by the camera) -> observation_type.
_OBSERVATION_TYPES = {"OBJECT": "science", "BIAS": "bias", "DARK": "dark", "FLAT": "flat"}


def observation_type_from_imgtype(imgtype: str) -> str:
    """The ObservationInfo observation_type for an IMGTYPE value."""
    value = imgtype.strip().upper()
    return _OBSERVATION_TYPES.get(value, value.lower())


def _trivial_entry(card: Card) -> str | tuple[str, dict[str, Any]]:
    options: dict[str, Any] = {}
    if card.unit is not None:
        options["unit"] = card.unit
    if card.sky_only:
        options["checker"] = is_non_science  # absent is fine unless this is a science frame
    return (card.keyword, options) if options else card.keyword


class _CardCache(Mapping[str, Any]):
    """A read-through cache over a fits.Header: each card's value is looked up once.

    A fits.Header look-up costs ~20 µs (astropy reads its configuration on every value
    access) and a full translation makes ~100 of them; ``in`` is cheap and is passed through.
    A translator treats its header as read-only, so caching is safe.
    """

    __slots__ = ("_header", "_values")

    def __init__(self, header: fits.Header) -> None:
        self._header = header
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            value = self._values[key] = self._header[key]
            return value

    def __contains__(self, key: object) -> bool:
        return key in self._values or key in self._header

    def __iter__(self) -> Iterator[str]:
        return iter(self._header)

    def __len__(self) -> int:
        return len(self._header)


# site_location() and _day_obs_offset() are built once and shared by every translation
# (astropy objects are costly to build); treat them as immutable.


@functools.cache
def site_location() -> EarthLocation:
    """Cerro Pachón, built once on first use (no site registry look-up)."""
    return EarthLocation.from_geodetic(
        SITE_LON_DEG * u.deg, SITE_LAT_DEG * u.deg, SITE_HEIGHT_M * u.m
    )


@functools.cache
def _day_obs_offset() -> TimeDelta:
    return TimeDelta(DAY_OBS_OFFSET_S, format="sec", scale="tai")


class SimCamTranslator(MetadataTranslator):
    """Header translation for SimCam, the simulated LSSTCam-like camera."""

    name = INSTRUMENT_NAME
    supported_instrument = INSTRUMENT_NAME

    # Read once by MetadataTranslator.__init_subclass__, which turns them into to_* methods
    # (the base class declares them as plain dict attributes, hence no ClassVar here).
    _const_map = {  # noqa: RUF012
        "boresight_rotation_coord": "sky",
        "has_simulated_content": True,
    }
    _trivial_map = {  # noqa: RUF012
        card.prop: _trivial_entry(card) for card in CARDS if card.prop is not None
    }

    # Dome flats see the screen, not the sky.
    _sky_observation_types = ("science",)
    _non_sky_observation_types = ("bias", "dark", "flat")

    def __init__(self, header: Mapping[str, Any], filename: Any = None) -> None:
        if isinstance(header, fits.Header):
            header = _CardCache(header)
        super().__init__(header, filename)

    @classmethod
    def can_translate(cls, header: Mapping[str, Any], filename: str | None = None) -> bool:
        return bool(header.get("INSTRUME") == cls.supported_instrument)

    # --- ids ------------------------------------------------------------------------------------

    @staticmethod
    def compute_exposure_id(day_obs: int, seq_num: int) -> int:
        """exposure_id for (day_obs, seq_num): YYYYMMDDnnnnn."""
        if not 0 <= seq_num < EXPOSURE_SEQ_SPAN:
            raise ValueError(f"sequence number {seq_num} is outside 0..{EXPOSURE_SEQ_SPAN - 1}")
        return int(day_obs) * EXPOSURE_SEQ_SPAN + int(seq_num)

    @staticmethod
    def compute_detector_exposure_id(exposure_id: int, detector: int) -> int:
        if not 0 <= detector < DETECTOR_SPAN:
            raise ValueError(f"detector {detector} is outside 0..{DETECTOR_SPAN - 1}")
        return exposure_id * DETECTOR_SPAN + detector

    @cache_translation
    def to_exposure_id(self) -> int:
        self._used_these_cards("DAYOBS", "SEQNUM")
        return self.compute_exposure_id(self._header["DAYOBS"], self._header["SEQNUM"])

    @cache_translation
    def to_visit_id(self) -> int:
        # One snap per visit: the visit id is the exposure id (as LSSTCam).
        return self.to_exposure_id()

    @cache_translation
    def to_detector_exposure_id(self) -> int:
        return self.compute_detector_exposure_id(self.to_exposure_id(), self.to_detector_num())

    @cache_translation
    def to_group_counter_start(self) -> int:
        self._used_these_cards("CURINDEX")
        return self.to_observation_counter() - int(self._header["CURINDEX"]) + 1

    @cache_translation
    def to_group_counter_end(self) -> int:
        self._used_these_cards("MAXINDEX")
        return self.to_group_counter_start() + int(self._header["MAXINDEX"]) - 1

    # --- type -----------------------------------------------------------------------------------

    @cache_translation
    def to_observation_type(self) -> str:
        self._used_these_cards("IMGTYPE")
        return observation_type_from_imgtype(self._header["IMGTYPE"])

    # --- time -----------------------------------------------------------------------------------

    def _tai(self, keyword: str) -> Time:
        self._used_these_cards(keyword)
        return Time(self._header[keyword], format="isot", scale="tai")

    @cache_translation
    def to_datetime_begin(self) -> Time:
        return self._tai("DATE-BEG")

    @cache_translation
    def to_datetime_end(self) -> Time:
        return self._tai("DATE-END")

    @cache_translation
    def to_observing_day_offset(self) -> TimeDelta:
        return _day_obs_offset()

    # --- where ----------------------------------------------------------------------------------

    @cache_translation
    def to_location(self) -> EarthLocation:
        return site_location()

    @cache_translation
    def to_tracking_radec(self) -> SkyCoord | None:
        if not self.are_keys_ok(("RA", "DEC")):
            is_non_science(self)  # KeyError for a science frame without a pointing
            return None
        self._used_these_cards("RA", "DEC", "RADESYS")
        rep = UnitSphericalRepresentation(
            self._header["RA"] * u.deg, self._header["DEC"] * u.deg, copy=False
        )
        return SkyCoord(ICRS(rep), copy=False)

    def _altaz(self, az_key: str, el_key: str, when: Time) -> AltAz:
        self._used_these_cards(az_key, el_key)
        rep = UnitSphericalRepresentation(
            self._header[az_key] * u.deg, self._header[el_key] * u.deg, copy=False
        )
        return AltAz(rep, obstime=when, location=site_location())

    @cache_translation
    def to_boresight_rotation_angle(self) -> Angle | None:
        # Not in _trivial_map: astro_metadata_translator 30.x fails on an absent card that has
        # both a unit and a checker when the property is an Angle (it calls Angle(None)).
        if not self.is_key_ok("ROTPA"):
            is_non_science(self)
            return None
        self._used_these_cards("ROTPA")
        return Angle(self._header["ROTPA"], u.deg)

    @cache_translation
    def to_altaz_begin(self) -> AltAz:
        return self._altaz("AZSTART", "ELSTART", self.to_datetime_begin())

    @cache_translation
    def to_altaz_end(self) -> AltAz:
        return self._altaz("AZEND", "ELEND", self.to_datetime_end())
