"""The dashboard over the in-memory bus: the services land an exposure, the dashboard reads
the topics, and its HTTP app answers (snapshot, one exposure, /metrics, the live stream)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.butler import Butler
from services.instruments import load_instrument
from services.instruments.simcam import write_exposure
from services.web.app import create_app
from services.web.dashboard import SERVICE, Dashboard
from services.web.serve import DashboardServer
from tests.support.bus import Pipeline, memory_bus


@pytest.fixture
def night(empty_butler: Butler, tmp_path: Path) -> tuple[Dashboard, list[Path]]:
    load_instrument("SimCam").register(empty_butler.registry)
    landing = tmp_path / "landing"
    bus = memory_bus()
    pipeline = Pipeline(bus, empty_butler, landing)
    files = write_exposure(landing, 1, "2024-11-25T03:00:00")
    # Whole 2880-byte blocks (the watcher waits for those), but not FITS.
    (files[0].parent / "SC_O_broken.fits").write_bytes(b"x" * 2880)
    pipeline.drain()
    board = Dashboard(bus, None, status_file=tmp_path / "dashboard.json")
    consumer = bus.consumer("dashboard", [t.name for t in SERVICE.reads])
    while board.step(consumer):
        pass
    return board, files


def test_the_snapshot_shows_the_exposure_and_the_failed_file(
    night: tuple[Dashboard, list[Path]],
) -> None:
    board, files = night
    client = TestClient(create_app(board))
    snap = client.get("/ops/snapshot").json()
    (row,) = snap["exposures"]
    assert (row["instrument"], row["expected"], row["ingested"], row["detectors_done"]) == (
        "SimCam",
        205,
        205,
        205,
    )
    assert row["failed"] == 1  # the broken file, under its folder's exposure
    assert snap["totals"]["landed"] == len(files) + 1
    (reason,) = snap["failures"]["by_reason"]
    assert reason["files"] == 1 and reason["reason"]
    assert snap["reader"]["caught_up"] and snap["reader"]["undecodable"] == 0
    page = client.get("/")
    assert page.status_code == 200 and "/static/dashboard.js" in page.text
    assert "EventSource" in client.get("/static/dashboard.js").text  # shipped, no CDN
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_one_exposure_lists_its_files_with_their_datasets(
    night: tuple[Dashboard, list[Path]],
) -> None:
    board, files = night
    client = TestClient(create_app(board))
    exposure = board.snapshot()["exposures"][0]["exposure"]
    detail = client.get(f"/ops/exposures/SimCam/{exposure}").json()
    by_path = {f["path"]: f for f in detail["file_list"]}
    assert set(map(str, files)) <= set(by_path)
    assert all(len(by_path[str(p)]["dataset_ids"]) == 1 for p in files)
    missing = client.get("/ops/exposures/SimCam/12345")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].startswith("no exposure SimCam 12345")


def test_metrics_count_what_landed(night: tuple[Dashboard, list[Path]]) -> None:
    board, files = night
    text = TestClient(create_app(board)).get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    outcomes = {s.labels["status"]: s.value for s in families["obsbus_ingest_outcomes"].samples}
    assert outcomes == {"ingested": len(files), "failed": 1}
    count = next(
        s.value
        for s in families["obsbus_landed_to_registered_seconds"].samples
        if s.name.endswith("_count")
    )
    assert count == len(files) + 1


def test_the_stream_sends_the_snapshot_live(night: tuple[Dashboard, list[Path]]) -> None:
    board, _ = night
    server = DashboardServer(board, "127.0.0.1", 0)
    stop = threading.Event()
    thread = threading.Thread(target=server.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with httpx.stream("GET", server.url + "ops/stream", timeout=10) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            line = next(x for x in answer.iter_lines() if x.startswith("data: "))
        snap = json.loads(line.removeprefix("data: "))
        assert snap["exposures"][0]["ingested"] == 205
        board.write_status()
        status = json.loads(board.status_file.read_text())  # type: ignore[union-attr]
        assert status["url"] == server.url and status["consumed"] == board.view.messages
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()


def test_the_dashboard_serves_the_read_only_api_too(
    night: tuple[Dashboard, list[Path]], empty_butler: Butler
) -> None:
    board, _ = night
    client = TestClient(create_app(board, empty_butler))
    names = [t["name"] for t in client.get("/api/v1/dataset-types").json()["items"]]
    assert "raw" in names
    assert "/api/v1/datasets" in client.get("/api/v1/openapi.json").json()["paths"]
    bad = client.get("/api/v1/collections", params={"limit": 5000})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "bad_input"
