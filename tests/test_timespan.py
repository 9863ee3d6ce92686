"""Timespans: half-open TAI intervals in integer nanoseconds."""

from __future__ import annotations

import pytest
from astropy.time import Time

from services.core.errors import TimespanError
from services.core.timespan import (
    Timespan,
    ns_to_iso,
    ns_to_time,
    parse_time,
    time_to_ns,
)


@pytest.mark.parametrize(
    "iso", ["1970-01-01T00:00:00", "2024-05-01T12:00:00.123456789", "2262-01-01T00:00:00"]
)
def test_ns_round_trip_is_exact(iso: str) -> None:
    ns = time_to_ns(parse_time(iso))
    assert time_to_ns(ns_to_time(ns)) == ns
    assert ns_to_iso(ns) == iso


def test_epoch_and_scale() -> None:
    assert time_to_ns(Time("1970-01-01T00:00:00", scale="tai")) == 0
    # UTC 2024-01-01 is 37 s (leap seconds) behind TAI.
    utc = Time("2024-01-01T00:00:00", scale="utc")
    assert time_to_ns(utc) - time_to_ns(Time("2024-01-01T00:00:00", scale="tai")) == 37 * 10**9


def test_half_open_and_unbounded() -> None:
    a = Timespan.from_times("2024-01-01", "2024-02-01")
    b = Timespan.from_times("2024-02-01", None)
    assert not a.overlaps(b)  # [a, b) and [b, c) touch but do not overlap
    assert Timespan(None, None).overlaps(a)
    assert a.contains(a.begin or 0) and not a.contains(a.end or 0)
    with pytest.raises(TimespanError, match="empty timespan"):
        Timespan.from_times("2024-02-01", "2024-01-01")
    with pytest.raises(TimespanError, match="cannot read 'soon' as a time"):
        parse_time("soon")
    assert str(b) == "[2024-02-01T00:00:00, +inf)"


def test_difference_splits() -> None:
    whole = Timespan(0, 100)
    assert whole.difference(Timespan(10, 20)) == [Timespan(0, 10), Timespan(20, 100)]
    assert whole.difference(Timespan(None, 50)) == [Timespan(50, 100)]
    assert whole.difference(Timespan(None, None)) == []
    assert whole.difference(Timespan(200, 300)) == [whole]
    assert Timespan(None, None).difference(Timespan(5, None)) == [Timespan(None, 5)]


def test_db_sentinels_round_trip() -> None:
    for ts in (Timespan(None, None), Timespan(None, 5), Timespan(5, None), Timespan(1, 2)):
        assert Timespan.from_db(ts.db_begin, ts.db_end) == ts


def test_times_beyond_int64_nanoseconds_are_refused() -> None:
    with pytest.raises(TimespanError, match="outside what obsbus stores"):
        Timespan(0, 10**19)
    with pytest.raises(TimespanError, match="outside what obsbus stores"):
        Timespan.from_times("2300-01-01", None)
