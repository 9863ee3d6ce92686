"""What the dashboard page shows, as one JSON-ready dict made from the night's view.

Exposures newest first; an exposure is flagged when files are still missing (or failed) and
nothing has happened to it for ``quiet_s``: the camera or the transfer lost files, or a
service is down. Times are ISO TAI, as everywhere in obsbus.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..core.timespan import ns_to_iso
from .night import NS, ExposureState, NightView, quantile

SHOWN_EXPOSURES = 60


def exposure_row(e: ExposureState, now_ns: int, quiet_s: float) -> dict[str, Any]:
    counts = e.counts()
    latencies = [f.latency_s for f in e.files.values() if f.latency_s is not None]
    done = e.detectors_done()
    return {
        "instrument": e.instrument,
        "exposure": e.exposure,
        "expected": e.expected,
        "files": len(e.files),
        "waiting": counts["landed"],  # landed, no outcome yet
        "ingested": counts["ingested"],
        "already_present": counts["already-present"],
        "failed": counts["failed"],
        "detectors_done": done,
        "p50_s": quantile(latencies, 0.5),
        "p99_s": quantile(latencies, 0.99),
        "first_at": ns_to_iso(e.first_ns),
        "last_at": ns_to_iso(e.last_ns),
        "flag": _flag(e, counts, done, now_ns, quiet_s),
    }


def _flag(
    e: ExposureState, counts: Counter[str], done: int, now_ns: int, quiet_s: float
) -> str | None:
    if now_ns - e.last_ns < quiet_s * NS:
        return None  # still arriving
    if counts["failed"]:
        return f"{counts['failed']} failed"
    if counts["landed"]:
        return f"{counts['landed']} landed without an outcome"
    if e.expected and done < e.expected:
        return f"{e.expected - done} of {e.expected} detectors missing"
    return None


def exposure_detail(e: ExposureState, now_ns: int, quiet_s: float) -> dict[str, Any]:
    """One exposure's row and every file of it, with its outcome and datasets."""
    return {
        **exposure_row(e, now_ns, quiet_s),
        "file_list": [
            {
                "path": f.path,
                "status": f.status,
                "reason": f.reason,
                "message": f.message,
                "detectors": list(f.detectors),
                "dataset_ids": list(f.dataset_ids),
                "latency_s": f.latency_s,
                "landed_at": ns_to_iso(f.landed_ns),
            }
            for f in sorted(e.files.values(), key=lambda f: f.path)
        ],
    }


def snapshot(
    view: NightView,
    now_ns: int,
    window_s: float,
    quiet_s: float = 120.0,
    shown: int = SHOWN_EXPOSURES,
) -> dict[str, Any]:
    """The page's data: the window is the last ``window_s`` seconds up to ``now_ns``."""
    since = now_ns - int(window_s * NS)
    recent = sorted(
        (e for e in view.exposures.values() if e.last_ns >= since),
        key=lambda e: (e.first_ns, e.exposure),
        reverse=True,
    )
    rows = [exposure_row(e, now_ns, quiet_s) for e in recent]
    unplaced = [f for f in view.unplaced_failures() if (f.landed_ns or 0) >= since]
    failed_now: Counter[str] = Counter(
        f.reason or "unknown"
        for files in (*(e.files.values() for e in recent), unplaced)
        for f in files
        if f.status == "failed"
    )
    totals = Counter[str]()
    for row in rows:
        totals.update({k: row[k] for k in ("ingested", "already_present", "failed")})
    totals["failed"] += len(unplaced)
    latencies = [f.latency_s for e in recent for f in e.files.values() if f.latency_s is not None]
    blessings = sorted(
        view.blessings.values(), key=lambda b: b.get("requested_at") or "", reverse=True
    )
    return {
        "now": ns_to_iso(now_ns),
        "window_s": window_s,
        "messages_read": view.messages,
        "in_flight": len(view.in_flight),
        "oldest_in_flight": ns_to_iso(
            min((a.detected_at_ns for a in view.in_flight.values()), default=None)
        ),
        "totals": {
            **{k: totals[k] for k in ("ingested", "already_present", "failed")},
            "landed": sum(r["files"] for r in rows) + len(view.in_flight) + len(unplaced),
            "exposures": len(rows),
        },
        "exposures": rows[:shown],
        "flagged": [r for r in rows if r["flag"]][:shown],
        "gaps": view.gaps(since),
        "latency": {
            "p50_s": quantile(latencies, 0.5),
            "p99_s": quantile(latencies, 0.99),
            "series": view.latency_series(since),
        },
        "failures": {
            "by_reason": [{"reason": r, "files": n} for r, n in failed_now.most_common()],
            "latest": list(view.failures),
        },
        "dead_letters": {
            "count": sum(view.dead_letters.values()),
            "by_topic": dict(view.dead_letters),
            "latest": list(view.latest_dead_letters),
        },
        "blessings": {
            "counts": dict(Counter(b.get("status", "pending") for b in blessings)),
            "latest": blessings[:20],
        },
        "swaps": list(view.swaps),
    }
