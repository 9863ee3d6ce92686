"""bus_bench: what its modules share."""

from __future__ import annotations

import time

from services.core.timespan import now_ns

NS = 1_000_000_000


def log(text: str) -> None:
    """The bench's output: figures on stdout (it is a benchmark, not a service)."""
    print(text, flush=True)


def tai_minus_unix_ns() -> int:
    """TAI - Unix time in ns (whole seconds between leap seconds), to put Kafka timestamps
    (Unix ms) and mtimes on the services' TAI clock (``now_ns()``)."""
    return round((now_ns() - time.time_ns()) / NS) * NS
