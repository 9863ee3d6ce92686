"""Dimension records of an exposure, from a translated header (ObservationInfo)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from astro_metadata_translator import ObservationInfo
from astropy.time import Time, TimeDelta

from ..core.timespan import Timespan, time_to_ns

Record = dict[str, Any]


def exposure_timespan(info: ObservationInfo) -> Timespan:
    begin = time_to_ns(info.datetime_begin)
    end = time_to_ns(info.datetime_end)
    # A zero-length exposure (a bias) still happened at an instant: give it one nanosecond.
    return Timespan(begin, max(end, begin + 1))


def _deg(value: Any) -> float | None:
    return None if value is None else float(value.to_value("deg"))


def exposure_record(instrument: str, info: ObservationInfo) -> Record:
    # HeaderTranslator has checked that the REQUIRED_PROPERTIES are all present.
    assert info.exposure_id is not None and info.exposure_time is not None
    radec, altaz = info.tracking_radec, info.altaz_begin
    return {
        "instrument": instrument,
        "id": int(info.exposure_id),
        "obs_id": str(info.observation_id),
        "physical_filter": str(info.physical_filter),
        "group": None if info.exposure_group is None else str(info.exposure_group),
        "day_obs": None if info.observing_day is None else int(info.observing_day),
        "exposure_time": float(info.exposure_time.to_value("s")),
        "dark_time": None if info.dark_time is None else float(info.dark_time.to_value("s")),
        "observation_type": str(info.observation_type),
        "observation_reason": _str(info.observation_reason),
        "seq_num": None if info.observation_counter is None else int(info.observation_counter),
        "science_program": _str(info.science_program),
        "target_name": _str(info.object),
        "tracking_ra": None if radec is None else float(radec.ra.deg),
        "tracking_dec": None if radec is None else float(radec.dec.deg),
        "sky_angle": _deg(info.boresight_rotation_angle),
        "azimuth": None if altaz is None else float(altaz.az.deg),
        "zenith_angle": None if altaz is None else 90.0 - float(altaz.alt.deg),
        "timespan": exposure_timespan(info),
    }


def _str(value: Any) -> str | None:
    return None if value is None else str(value)[:64]


def day_obs_record(instrument: str, info: ObservationInfo) -> Record | None:
    if info.observing_day is None:
        return None
    offset = info.observing_day_offset
    offset_s = 0.0 if offset is None else float(offset.to_value("s"))
    return {
        "instrument": instrument,
        "id": int(info.observing_day),
        "timespan": _day_timespan(int(info.observing_day), offset_s),
    }


@functools.lru_cache(maxsize=64)
def _day_timespan(day_obs: int, offset_s: float) -> Timespan:
    # Every file of a night asks for the same day: astropy Time work once per night.
    day = str(day_obs)
    start = Time(f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00", scale="tai")
    start = start + TimeDelta(offset_s, format="sec")
    return Timespan.from_times(start, start + TimeDelta(1, format="jd"))


def group_record(instrument: str, info: ObservationInfo) -> Record | None:
    if info.exposure_group is None:
        return None
    return {"instrument": instrument, "name": str(info.exposure_group)}


def visit_records(instrument: str, exposure: Record) -> tuple[Record, Record] | None:
    """A one-to-one visit for a science exposure (and the row linking them), else None."""
    if exposure["observation_type"] != "science":
        return None
    visit = {
        "instrument": instrument,
        "id": exposure["id"],
        "name": exposure["obs_id"],
        "physical_filter": exposure["physical_filter"],
        "day_obs": exposure["day_obs"],
        "exposure_time": exposure["exposure_time"],
        "science_program": exposure["science_program"],
        "target_name": exposure["target_name"],
        "observation_reason": exposure["observation_reason"],
        "timespan": exposure["timespan"],
    }
    definition = {"instrument": instrument, "exposure": exposure["id"], "visit": exposure["id"]}
    return visit, definition


@dataclass(frozen=True)
class ExposureRecords:
    """Every dimension record one exposure's raw files add (shared by all its files)."""

    exposure: Record
    day_obs: Record | None
    group: Record | None
    visit: tuple[Record, Record] | None


def exposure_records(instrument: str, info: ObservationInfo) -> ExposureRecords:
    exposure = exposure_record(instrument, info)
    return ExposureRecords(
        exposure=exposure,
        day_obs=day_obs_record(instrument, info),
        group=group_record(instrument, info),
        visit=visit_records(instrument, exposure),
    )
