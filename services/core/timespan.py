"""Half-open TAI time intervals, stored as integer nanoseconds.

A ``Timespan`` is ``[begin, end)``; either end may be unbounded (``None``). Internally both ends
are integer nanoseconds since 1970-01-01T00:00:00 TAI, so comparisons and database range checks
are exact integer arithmetic; astropy ``Time`` is used only at the API edge.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from astropy.time import Time

from .errors import TimespanError

_NS_PER_DAY = 86_400_000_000_000
_EPOCH = Time("1970-01-01T00:00:00", scale="tai", format="isot")
_EPOCH_JD1 = int(_EPOCH.jd1)
_EPOCH_JD2 = float(_EPOCH.jd2)

# Database sentinels for unbounded ends: plain integers keep range checks index-friendly.
BEGIN_UNBOUNDED = -(2**63)
END_UNBOUNDED = 2**63 - 1


def time_to_ns(t: Time) -> int:
    """Nanoseconds since the TAI epoch; exact to well below a nanosecond."""
    tai = t.tai
    days = int(tai.jd1) - _EPOCH_JD1
    frac = (float(tai.jd1) - int(tai.jd1)) + (float(tai.jd2) - _EPOCH_JD2)
    return days * _NS_PER_DAY + round(frac * _NS_PER_DAY)


def ns_to_time(ns: int) -> Time:
    days, rem = divmod(ns, _NS_PER_DAY)
    return Time(_EPOCH_JD1 + days, _EPOCH_JD2 + rem / _NS_PER_DAY, format="jd", scale="tai")


def parse_time(text: str | Time, scale: str = "tai") -> Time:
    """Parse an ISO time given on the command line or in a file (TAI unless told)."""
    if isinstance(text, Time):
        return text
    try:
        return Time(text, scale=scale)
    except ValueError as err:
        raise TimespanError(
            f"cannot read {text!r} as a time: give an ISO date such as 2024-05-01T12:00:00"
        ) from err


def ns_to_iso(ns: int | None) -> str | None:
    """ISO TAI text for a bound; None stays None (unbounded)."""
    if ns is None:
        return None
    t = ns_to_time(ns)
    t.precision = 9
    text = str(t.isot)
    # Exact round trip without noise: drop trailing zeros of the fraction (and a bare '.').
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class Timespan:
    """``[begin, end)`` in TAI nanoseconds; ``None`` means unbounded on that side."""

    begin: int | None
    end: int | None

    def __post_init__(self) -> None:
        for bound in (self.begin, self.end):
            if bound is not None and not BEGIN_UNBOUNDED < bound < END_UNBOUNDED:
                raise TimespanError(
                    f"time {bound} ns is outside what obsbus stores (about 1678 to 2262)"
                )
        if self.begin is not None and self.end is not None and self.begin >= self.end:
            raise TimespanError(
                f"empty timespan: begin {ns_to_iso(self.begin)} is not before end "
                f"{ns_to_iso(self.end)}"
            )

    @classmethod
    def from_times(cls, begin: Time | str | None, end: Time | str | None) -> Timespan:
        return cls(
            None if begin is None else time_to_ns(parse_time(begin)),
            None if end is None else time_to_ns(parse_time(end)),
        )

    @classmethod
    def at(cls, t: Time | str) -> Timespan:
        """The shortest timespan containing the instant ``t``."""
        ns = time_to_ns(parse_time(t))
        return cls(ns, ns + 1)

    @classmethod
    def from_db(cls, begin: int, end: int) -> Timespan:
        return cls(
            None if begin == BEGIN_UNBOUNDED else begin, None if end == END_UNBOUNDED else end
        )

    @property
    def db_begin(self) -> int:
        return BEGIN_UNBOUNDED if self.begin is None else self.begin

    @property
    def db_end(self) -> int:
        return END_UNBOUNDED if self.end is None else self.end

    def overlaps(self, other: Timespan) -> bool:
        return self.db_begin < other.db_end and other.db_begin < self.db_end

    def contains(self, ns: int) -> bool:
        return self.db_begin <= ns < self.db_end

    def difference(self, cut: Timespan) -> list[Timespan]:
        """What remains of this timespan after removing ``cut`` (zero, one or two pieces)."""
        if not self.overlaps(cut):
            return [self]
        pieces = []
        if cut.begin is not None and self.db_begin < cut.begin:
            pieces.append(Timespan(self.begin, cut.begin))
        if cut.end is not None and cut.end < self.db_end:
            pieces.append(Timespan(cut.end, self.end))
        return pieces

    def to_iso(self) -> tuple[str | None, str | None]:
        return ns_to_iso(self.begin), ns_to_iso(self.end)

    def __str__(self) -> str:
        b, e = self.to_iso()
        return f"[{b or '-inf'}, {e or '+inf'})"

    def to_json(self) -> dict[str, Any]:
        b, e = self.to_iso()
        return {"begin": b, "end": e}


@functools.cache
def _tai_minus_unix_ns() -> int:
    # Constant between leap seconds; computed once per process with astropy's leap table.
    now = time.time_ns()
    return time_to_ns(Time(now // 1_000_000_000, format="unix")) - (now // 1_000_000_000) * 10**9


def now_ns() -> int:
    """The current moment as TAI nanoseconds (used to stamp history rows)."""
    return time.time_ns() + _tai_minus_unix_ns()


def tai_ns_to_unix_s(ns: int) -> float:
    """A TAI moment as Unix seconds (what Prometheus and browsers count in)."""
    return (ns - _tai_minus_unix_ns()) / 1e9
