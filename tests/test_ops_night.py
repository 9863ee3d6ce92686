"""The night's view: the fold of typed messages, the page's snapshot, and /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from services.messages import (
    BlessingRequest,
    CalibrationOutcome,
    DeadLetter,
    IngestOutcome,
    RawArrival,
    RegistryEvent,
)
from services.ops.metrics import MetricsInput, exposition
from services.ops.night import NS, NightView, quantile
from services.ops.snapshot import exposure_detail, snapshot

T0 = 1_700_000_000 * NS
FOLDER = "/landing/20241125/000001"


def view() -> NightView:
    return NightView(lambda name: {"SimCam": 3}.get(name, 0), lambda name: 1)


def arrival(n: int, folder: str = FOLDER, at_ns: int = T0) -> RawArrival:
    path = f"{folder}/f{n}.fits"
    return RawArrival(f"a{n}{folder}", path, "/landing", 10, 0, at_ns, "w")


def outcome(
    n: int,
    status: str = "ingested",
    exposure: int | None = 1,
    folder: str = FOLDER,
    latency_s: float = 0.5,
    reason: str | None = None,
) -> IngestOutcome:
    return IngestOutcome(
        file=f"{folder}/f{n}.fits",
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=f"{reason} happened" if reason else "",
        instrument="SimCam" if exposure is not None else None,
        exposure=exposure,
        detectors=(n,) if exposure is not None else (),
        dataset_ids=(f"id{n}",) if status != "failed" else (),
        detected_at_ns=T0,
        finished_at_ns=T0 + int(latency_s * NS),
    )


def test_a_file_counts_under_its_exposure_once_an_outcome_names_it() -> None:
    v = view()
    v.add_all([arrival(0), arrival(1), arrival(2)])
    assert len(v.in_flight) == 3 and not v.exposures  # a path says no exposure
    v.add(outcome(0))  # names exposure 1: the folder's other files are its too
    (e,) = v.exposures.values()
    assert (e.instrument, e.exposure, e.expected) == ("SimCam", 1, 3)
    assert e.counts() == {"ingested": 1, "landed": 2} and not v.in_flight
    v.add_all([outcome(1), outcome(1), outcome(2, "already-present")])  # 1 redelivered
    assert e.counts() == {"ingested": 2, "already-present": 1}
    assert e.detectors_done() == 3
    row = snapshot(v, T0 + 10 * NS, 3600)["exposures"][0]
    assert (row["ingested"], row["already_present"], row["waiting"], row["flag"]) == (
        2,
        1,
        0,
        None,
    )
    assert v.outcomes[("ingested", "")] == 3  # every outcome message: a counter's total


def test_an_exposure_quiet_with_files_missing_or_failed_is_flagged() -> None:
    v = view()
    v.add_all([outcome(0), outcome(1, "failed", reason="untranslatable-header")])
    early = snapshot(v, T0 + 5 * NS, 3600, quiet_s=60)
    assert early["exposures"][0]["flag"] is None  # still arriving
    late = snapshot(v, T0 + 120 * NS, 3600, quiet_s=60)
    assert late["exposures"][0]["flag"] == "1 failed"
    assert late["flagged"] == late["exposures"]
    assert late["failures"]["by_reason"] == [{"reason": "untranslatable-header", "files": 1}]
    assert late["failures"]["latest"][0]["file"].endswith("f1.fits")
    v.add(outcome(1))  # the failed file ingested after all: 2 of 3 detectors
    again = snapshot(v, T0 + 300 * NS, 3600, quiet_s=60)
    assert again["exposures"][0]["flag"] == "1 of 3 detectors missing"
    assert again["failures"]["by_reason"] == []  # no file is failing now


def test_an_unreadable_file_counts_under_its_folders_exposure() -> None:
    for order in (1, -1):  # its outcome has another key: it may come first
        v = view()
        v.add_all([outcome(0), outcome(9, "failed", exposure=None, reason="not-fits")][::order])
        e = v.exposure("SimCam", 1)
        assert e is not None and e.files[f"{FOLDER}/f9.fits"].reason == "not-fits"
    elsewhere = outcome(5, "failed", exposure=None, folder="/landing/x", reason="not-fits")
    v.add(elsewhere)  # no exposure known for its folder: a failure, under no exposure
    assert len(v.exposures) == 1 and v.failures[0]["file"] == elsewhere.file
    snap = snapshot(v, T0, 3600)
    assert snap["totals"]["failed"] == 2
    assert snap["failures"]["by_reason"] == [{"reason": "not-fits", "files": 2}]


def test_latency_per_exposure_per_minute_and_as_a_histogram() -> None:
    v = view()
    v.add_all([outcome(i, latency_s=s) for i, s in enumerate((0.2, 0.4, 3.0))])
    snap = snapshot(v, T0 + 10 * NS, 3600)
    assert snap["exposures"][0]["p50_s"] == 0.4 and snap["exposures"][0]["p99_s"] == 3.0
    (minute,) = snap["latency"]["series"]
    assert minute["n"] == 3 and minute["p50_s"] == 0.4
    assert dict(v.latency.cumulative())[0.25] == 1
    assert dict(v.latency.cumulative())[5.0] == 3
    assert quantile([], 0.5) is None


def test_missing_exposure_ids_between_two_seen_are_a_gap() -> None:
    v = view()
    for exposure in (1, 2, 5, 900):  # 900: a new sequence, not a gap
        v.add(outcome(exposure, exposure=exposure, folder=f"/landing/{exposure}"))
    assert v.gaps(0) == [{"instrument": "SimCam", "after": 2, "missing": [3, 4]}]


def test_dead_letters_blessings_and_swaps() -> None:
    v = view()
    v.add(DeadLetter("obsbus.raw.arrivals", 2, 17, b"x", "bad", "undecodable", "ingest", T0))
    request = BlessingRequest(
        "r1",
        "SimCam/calib/night",
        "bias",
        "SimCam/calib/masters",
        (),
        None,
        None,
        "me",
        "why",
        T0,
    )
    v.add_all([request, BlessingRequest(**{**request.to_value(), "request_id": "r2"})])
    v.add(CalibrationOutcome("r1", "SimCam/calib/night", "rejected", "overlaps", 0, T0, "overlap"))
    v.add(
        RegistryEvent(
            "c1",
            "detector-swapped",
            "new device",
            T0,
            instrument="SimCam",
            detector=4,
            old_serial="A",
            new_serial="B",
            exposure=1,
            since_ns=T0,
        )
    )
    snap = snapshot(v, T0, 3600)
    assert snap["dead_letters"]["count"] == 1
    assert snap["dead_letters"]["latest"][0]["offset"] == 17
    assert snap["blessings"]["counts"] == {"rejected": 1, "pending": 1}
    rejected = next(b for b in snap["blessings"]["latest"] if b["request_id"] == "r1")
    assert (rejected["reason"], rejected["dataset_type"]) == ("overlap", "bias")
    assert snap["swaps"][0]["new_serial"] == "B"


def test_one_exposures_files_and_datasets() -> None:
    v = view()
    v.add_all([arrival(2), outcome(0), outcome(1, "failed", reason="bad-header")])
    e = v.exposure("SimCam", 1)
    assert e is not None
    detail = exposure_detail(e, T0, 60)
    files = {f["path"].rsplit("/", 1)[1]: f for f in detail["file_list"]}
    assert files["f0.fits"]["dataset_ids"] == ["id0"]
    assert files["f1.fits"]["reason"] == "bad-header"
    assert files["f2.fits"]["status"] == "landed"


def test_metrics_are_the_prometheus_text_of_the_view() -> None:
    v = view()
    v.add_all([outcome(0), outcome(1, latency_s=90), outcome(2, "failed", reason="bad-header")])
    services = [
        {"service": "ingest", "pid": None, "restarts": 2, "lag": 7, "consumed": 3},
        {"service": "broker", "state": "reachable"},
    ]
    text = exposition(lambda: MetricsInput.of(v, services)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("obsbus_ingest_outcomes_total", (("reason", ""), ("status", "ingested")))] == 2
    failed = (("reason", "bad-header"), ("status", "failed"))
    assert samples[("obsbus_ingest_outcomes_total", failed)] == 1
    assert samples[("obsbus_landed_to_registered_seconds_count", ())] == 3
    assert samples[("obsbus_landed_to_registered_seconds_bucket", (("le", "60.0"),))] == 2
    assert samples[("obsbus_service_up", (("service", "ingest"),))] == 0
    assert samples[("obsbus_consumer_lag_messages", (("service", "ingest"),))] == 7
    assert samples[("obsbus_service_restarts_total", (("service", "ingest"),))] == 2
    assert samples[("obsbus_broker_reachable", ())] == 1
    assert all(name.startswith("obsbus_") for name, _ in samples)
