"""The dashboard page in a real (headless) browser, following a night live on the real broker.

The page is opened once, before anything lands, and never reloaded: everything it shows
afterwards (an exposure filling up, a failed file and its reason, a service dying) reaches it
over the server-sent event stream. ``/metrics`` is checked against the same night. The
screenshot in docs/dashboard.png is taken here (written there with OBSBUS_UPDATE_SCREENSHOT=1;
otherwise to the test's own folder, so a test run leaves the checkout as it was).
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from selenium.webdriver.remote.webdriver import WebDriver

from services.bus.topics import INGEST_OUTCOMES
from services.instruments.simcam import SimCamTranslator, write_exposure
from services.instruments.simcam.generator import day_obs_of, obs_id, to_tai
from services.web.serve import status_url
from tests.conftest import REPO_ROOT
from tests.support.browser import console_errors, headless_chromium, text, texts, wait_for
from tests.support.services import Services, kafka_bootstrap, new_repo

pytestmark = pytest.mark.timeout(600)

SCREENSHOT = REPO_ROOT / "docs" / "dashboard.png"
SEQ, WHEN = 1, "2024-11-26T01:00:00"
DETECTORS = 205
INGEST_S = 240  # services starting on a busy CI machine, then 205 files
SHOW_S = 60  # an event already on the topic, until the page shows it


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    kafka_bootstrap()
    landing = tmp_path / "landing"
    landing.mkdir()
    running = Services(new_repo(tmp_path / "repo"), landing, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


def test_the_page_follows_a_night_live_without_reloading(
    services: Services, browser: WebDriver, tmp_path: Path
) -> None:
    services.start("registry", "ingest", "watcher", "dashboard")
    url = wait_for(
        browser,
        lambda _: status_url(
            services.repo / "var" / "run" / "dashboard.json", services.procs["dashboard"].pid
        ),
        SHOW_S,
        "the dashboard's URL in its status file",
    )
    browser.get(url)
    wait_for(browser, lambda d: text(d, "#feed") == "live", SHOW_S, 'the feed pill "live"')
    browser.execute_script("window.__marker = 1")  # gone if the page is ever reloaded
    assert text(browser, "#exposures tbody") == "no exposures in the window yet"

    # One SimCam exposure: its row fills up to every detector.
    day_obs = day_obs_of(to_tai(WHEN))
    exposure = SimCamTranslator.compute_exposure_id(day_obs, SEQ)
    files = write_exposure(services.landing, SEQ, WHEN)
    assert len(files) == DETECTORS
    row = f'#exposures tbody tr[data-exposure="SimCam/{exposure}"]'
    wait_for(
        browser,
        lambda d: text(d, f"{row} td.ingested") == str(DETECTORS),
        INGEST_S,
        f"{DETECTORS} ingested in the row of exposure {exposure}",
        detail=services.logs,
    )
    assert text(browser, f"{row} .bar label") == f"{DETECTORS} / {DETECTORS}"
    assert text(browser, f"{row} td.failed") == "0"
    assert text(browser, f"{row} td.waiting") == "0"
    assert text(browser, "#t-ingested") == str(DETECTORS)
    wait_for(
        browser,
        lambda d: text(d, '#services tbody tr[data-service="ingest"] td.state') == "running",
        SHOW_S,
        "the ingest service running in the services table",
    )

    # A file named like one of the exposure's raws, but garbage: one block of blanks after
    # "SIMPLE  =", no END card. Its reason is whatever its IngestOutcome says.
    broken = files[0].with_name(f"{obs_id(day_obs, SEQ)}_R99_S99.fits")
    partial = broken.with_name(broken.name + ".part")
    partial.write_bytes(b"SIMPLE  =" + b" " * 2871)
    os.replace(partial, broken)
    outcomes = services.messages(
        INGEST_OUTCOMES.name, lambda out: any(o["file"] == str(broken) for o in out), INGEST_S
    )
    failed = [o for o in outcomes if o["file"] == str(broken)]
    assert [o["status"] for o in failed] == ["failed"], services.logs()
    reason = failed[0]["reason"]
    assert reason, failed
    ingested = [o for o in outcomes if o["status"] == "ingested"]
    assert {o["file"] for o in ingested} == {str(f) for f in files}
    assert {o["exposure"] for o in ingested} == {exposure}

    wait_for(
        browser,
        lambda d: text(d, f'#reasons [data-reason="{reason}"]'),
        SHOW_S,
        f"reason {reason!r} in the failures card",
    )
    assert text(browser, f'#reasons [data-reason="{reason}"] code') == reason
    assert text(browser, f'#reasons [data-reason="{reason}"] b') == "1"
    failure_row = f'#failures tbody tr[data-file="{broken}"]'
    assert text(browser, f"{failure_row} code") == reason
    assert broken.name in (text(browser, f"{failure_row} td.msg") or "")
    assert texts(browser, "#failures tbody tr code") == [reason]
    # The broken file sits in the exposure's folder: it counts there, its detectors do not.
    assert text(browser, f"{row} td.failed") == "1"
    assert text(browser, f"{row} .bar label") == f"{DETECTORS} / {DETECTORS}"
    assert text(browser, "#t-failed") == "1"

    SCREENSHOT.parent.mkdir(exist_ok=True)
    update = os.environ.get("OBSBUS_UPDATE_SCREENSHOT")
    shot = SCREENSHOT if update else tmp_path / SCREENSHOT.name
    assert browser.save_screenshot(str(shot)), f"no screenshot written to {shot}"

    # /metrics, from the same view the page has just shown.
    metrics = scrape(url)
    outcomes_total = "obsbus_ingest_outcomes_total"
    assert metrics[outcomes_total, (("reason", ""), ("status", "ingested"))] == DETECTORS
    assert metrics[outcomes_total, (("reason", reason), ("status", "failed"))] == 1
    outcome_count = sum(v for (name, _), v in metrics.items() if name == outcomes_total)
    assert outcome_count == DETECTORS + 1
    assert metrics["obsbus_landed_to_registered_seconds_count", ()] == outcome_count
    assert metrics["obsbus_service_up", (("service", "ingest"),)] == 1

    # The ingest service dies (no supervisor here): its row says "down", and /metrics too.
    services.kill9("ingest")
    wait_for(
        browser,
        lambda d: text(d, '#services tbody tr[data-service="ingest"] td.state') == "down",
        SHOW_S,
        'the ingest service "down" in the services table',
    )
    assert text(browser, '#services tbody tr[data-service="watcher"] td.state') == "running"
    assert scrape(url)["obsbus_service_up", (("service", "ingest"),)] == 0

    assert browser.execute_script("return window.__marker") == 1, "the page was reloaded"
    errors = [e for e in console_errors(browser) if "favicon.ico" not in e]
    assert errors == [], errors


Labels = tuple[tuple[str, str], ...]


def scrape(url: str) -> dict[tuple[str, Labels], float]:
    """Every sample of ``/metrics``: (sample name, its labels sorted by name) -> value."""
    with urllib.request.urlopen(url + "metrics", timeout=30) as answer:
        body = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
