"""Which serial-numbered device (physical_detector) sat in which detector slot, and when.

Each installation is a row with a half-open timespan; recording a new device in a slot from
a moment on ends the current row there. A new serial seen in a header is thereby a recorded
swap, visible per exposure (the device at the exposure's start). A device seen at an earlier
time than its row starts (exposures applied out of order) moves that row's start earlier, so
a slot's history is the same whichever order one swap's exposures arrive in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..core.timespan import END_UNBOUNDED
from .records import DimensionRecords

InstallOutcome = Literal["unchanged", "installed", "swapped", "moved"]


class InstallationManager:
    def __init__(self, records: DimensionRecords) -> None:
        self.records = records
        self._table = records.table("detector_installation")
        # How many times ``record`` was called: a memory of who sat where (known.py) made
        # before one is dropped when it sees this move.
        self.changes = 0

    def record(
        self, conn: Connection, instrument: str, detector: int, serial: str, since_ns: int
    ) -> InstallOutcome:
        """ "unchanged" when the slot already holds that device then, "installed" for the
        slot's first device, "swapped" when it replaces another device, "moved" when the
        device's stay in the slot is now known to start earlier (seen out of order)."""
        self.changes += 1
        table, c = self._table, self._table.c
        known = self.records.fetch(
            conn, "physical_detector", {"instrument": instrument, "serial": serial}
        )
        if known is None:  # a device first seen in a header takes its slot's purpose
            slot = self.records.fetch(conn, "detector", {"instrument": instrument, "id": detector})
            purpose = None if slot is None else slot["purpose"]
            self.records.insert(
                conn,
                "physical_detector",
                [{"instrument": instrument, "serial": serial, "purpose": purpose}],
            )
        rows = list(
            conn.execute(
                select(table)
                .where(c.instrument == instrument, c.detector == detector)
                .order_by(c.timespan_begin)
            ).mappings()
        )
        current = next(
            (r for r in rows if r["timespan_begin"] <= since_ns < r["timespan_end"]), None
        )
        if current is not None and current["physical_detector"] == serial:
            return "unchanged"
        later = [r for r in rows if r["timespan_begin"] > since_ns]
        following = min(later, key=lambda r: r["timespan_begin"]) if later else None
        end = END_UNBOUNDED if following is None else following["timespan_begin"]
        if current is not None:
            conn.execute(
                table.update()
                .where(
                    c.instrument == instrument,
                    c.detector == detector,
                    c.physical_detector == current["physical_detector"],
                    c.timespan_begin == current["timespan_begin"],
                )
                .values(timespan_end=since_ns)
            )
        if following is not None and following["physical_detector"] == serial:
            # Seen later first (exposures applied out of order, e.g. in a replay): the device
            # was there earlier than known. Extending its row keeps one row per stay in the
            # slot, so the result does not depend on the order exposures arrive in.
            conn.execute(
                table.update()
                .where(
                    c.instrument == instrument,
                    c.detector == detector,
                    c.physical_detector == serial,
                    c.timespan_begin == end,
                )
                .values(timespan_begin=since_ns)
            )
            return "moved"  # the same swap, known now to have happened earlier: not a new one
        else:
            conn.execute(
                table.insert().values(
                    instrument=instrument,
                    detector=detector,
                    physical_detector=serial,
                    timespan_begin=since_ns,
                    timespan_end=end,
                )
            )
        return "installed" if not rows else "swapped"

    def installed(
        self, conn: Connection, instrument: str, detectors: Sequence[int] | None, at_ns: int
    ) -> dict[int, str]:
        """The device in each slot (``None``: every slot of the instrument) at ``at_ns``."""
        c = self._table.c
        at = (c.instrument == instrument, c.timespan_begin <= at_ns, c.timespan_end > at_ns)
        if detectors is None:
            rows = conn.execute(select(c.detector, c.physical_detector).where(*at))
            return {int(d): str(s) for d, s in rows}
        out: dict[int, str] = {}
        wanted = sorted(set(detectors))
        for start in range(0, len(wanted), 500):
            rows = conn.execute(
                select(c.detector, c.physical_detector).where(
                    *at, c.detector.in_(wanted[start : start + 500])
                )
            )
            out.update({int(d): str(s) for d, s in rows})
        return out
