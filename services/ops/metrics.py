"""``/metrics``: the night's view and the services' states in the Prometheus text format.

Every service's counters reach one endpoint, the dashboard's: it already reads every topic
(outcomes, events, dead letters) and the status files (pids, restarts, lag), so it needs no
port per service, and a dead service still shows (``obsbus_service_up 0``, its lag growing)
instead of vanishing from the scrape. Counts are over what the dashboard has read since it
started (its window of history, then live): a dashboard restart is a counter reset, which
Prometheus' ``rate()`` handles. No per-exposure or per-file labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from ..core.timespan import tai_ns_to_unix_s
from .night import NightView

PREFIX = "obsbus_"


@dataclass(frozen=True)
class MetricsInput:
    """What one scrape reports, taken together (under the dashboard's lock)."""

    outcomes: dict[tuple[str, str], int]
    latency: list[tuple[float, int]]  # cumulative buckets
    latency_sum_s: float
    in_flight: int
    registry_events: dict[str, int]
    dead_letters: dict[str, int]
    blessings: dict[str, int]
    messages_read: int
    services: Sequence[dict[str, Any]]  # ops.status rows

    @classmethod
    def of(cls, view: NightView, services: Sequence[dict[str, Any]]) -> MetricsInput:
        statuses: dict[str, int] = {}
        for b in view.blessings.values():
            statuses[b.get("status", "pending")] = statuses.get(b.get("status", "pending"), 0) + 1
        return cls(
            dict(view.outcomes),
            view.latency.cumulative(),
            view.latency.total_s,
            len(view.in_flight),
            dict(view.registry_events),
            dict(view.dead_letters),
            statuses,
            view.messages,
            list(services),
        )


def families(m: MetricsInput) -> Iterator[Metric]:
    outcomes = CounterMetricFamily(
        PREFIX + "ingest_outcomes",
        "Raw files by outcome: status (ingested, already-present, failed) and failure reason.",
        labels=["status", "reason"],
    )
    for (status, reason), n in sorted(m.outcomes.items()):
        outcomes.add_metric([status, reason], n)
    yield outcomes
    yield HistogramMetricFamily(
        PREFIX + "landed_to_registered_seconds",
        "From the watcher seeing a raw file to its outcome (registered, or failed).",
        buckets=[(_bound(b), n) for b, n in m.latency],
        sum_value=m.latency_sum_s,
    )
    yield GaugeMetricFamily(
        PREFIX + "files_in_flight",
        "Raw files landed that have no outcome yet.",
        value=m.in_flight,
    )
    yield _by(
        CounterMetricFamily(
            PREFIX + "registry_events", "What the registry service did, by kind.", labels=["kind"]
        ),
        m.registry_events,
    )
    yield _by(
        CounterMetricFamily(
            PREFIX + "dead_letters",
            "Messages a service could not handle, by the topic they came from.",
            labels=["topic"],
        ),
        m.dead_letters,
    )
    yield _by(
        GaugeMetricFamily(
            PREFIX + "blessing_requests",
            "Blessing requests seen, by state (pending, blessed, rejected).",
            labels=["status"],
        ),
        m.blessings,
    )
    yield CounterMetricFamily(
        PREFIX + "dashboard_messages_read",
        "Messages the dashboard has read from the topics.",
        value=m.messages_read,
    )
    yield from _services(m.services)


def _services(rows: Sequence[dict[str, Any]]) -> Iterator[Metric]:
    services = [r for r in rows if r["service"] not in ("supervisor", "broker")]
    up = GaugeMetricFamily(PREFIX + "service_up", "1 if the service runs.", labels=["service"])
    restarts = CounterMetricFamily(
        PREFIX + "service_restarts", "Restarts by the supervisor.", labels=["service"]
    )
    lag = GaugeMetricFamily(
        PREFIX + "consumer_lag_messages",
        "Messages on the service's input topics it has not consumed yet (as it last said).",
        labels=["service"],
    )
    consumed = CounterMetricFamily(
        PREFIX + "service_consumed_messages", "Messages the service handled.", labels=["service"]
    )
    last = GaugeMetricFamily(
        PREFIX + "service_last_message_timestamp_seconds",
        "When the service last handled a message (Unix time).",
        labels=["service"],
    )
    for r in services:
        name = [r["service"]]
        up.add_metric(name, 1 if r.get("pid") else 0)
        if r.get("restarts") is not None:
            restarts.add_metric(name, r["restarts"])
        if r.get("lag") is not None:
            lag.add_metric(name, r["lag"])
        if r.get("consumed") is not None:
            consumed.add_metric(name, r["consumed"])
        if r.get("last_message_ns"):
            last.add_metric(name, tai_ns_to_unix_s(r["last_message_ns"]))
    yield from (up, restarts, lag, consumed, last)
    broker = [r for r in rows if r["service"] == "broker"]
    if broker:
        yield GaugeMetricFamily(
            PREFIX + "broker_reachable",
            "1 if the Kafka broker answers.",
            value=1 if broker[0]["state"] == "reachable" else 0,
        )


def _by(family: Any, values: dict[str, int]) -> Any:
    for label, n in sorted(values.items()):
        family.add_metric([label], n)
    return family


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


class _Collector(Collector):
    def __init__(self, source: Callable[[], MetricsInput]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return families(self.source())


def exposition(source: Callable[[], MetricsInput]) -> bytes:
    """The text a scrape gets (its own registry: nothing global, nothing at import)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(source))
    return generate_latest(registry)
