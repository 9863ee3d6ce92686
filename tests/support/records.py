"""Helpers that register realistic records for tests."""

from __future__ import annotations

from typing import Any

from astropy.time import Time, TimeDelta

from services.core.timespan import Timespan
from services.registry.registry import Registry


def add_exposure(
    registry: Registry,
    exposure: int,
    begin: str,
    *,
    instrument: str = "DummyCam",
    seconds: float = 30.0,
    physical_filter: str = "dummy_r",
    observation_type: str = "science",
) -> dict[str, Any]:
    """Register an exposure (and its day_obs and group) starting at ``begin`` (ISO, TAI)."""
    start = Time(begin, scale="tai")
    day_obs = int(start.strftime("%Y%m%d"))
    group = f"g{exposure}"
    registry.sync_dimension_record(
        "day_obs",
        {
            "instrument": instrument,
            "id": day_obs,
            "timespan": Timespan.from_times(
                Time(start.strftime("%Y-%m-%d"), scale="tai"),
                Time(start.strftime("%Y-%m-%d"), scale="tai") + TimeDelta(1, format="jd"),
            ),
        },
    )
    registry.sync_dimension_record("group", {"instrument": instrument, "name": group})
    record = {
        "instrument": instrument,
        "id": exposure,
        "obs_id": f"{instrument}_{exposure}",
        "physical_filter": physical_filter,
        "group": group,
        "day_obs": day_obs,
        "exposure_time": seconds,
        "dark_time": seconds,
        "observation_type": observation_type,
        "seq_num": exposure % 100000,
        "timespan": Timespan.from_times(start, start + TimeDelta(seconds, format="sec")),
    }
    registry.sync_dimension_record("exposure", record)
    return record
