"""A sensor swap seen at ingest is published as a "detector-swapped" registry event.

The services run as real processes over the real broker, on SQLite and on PostgreSQL: an
exposure, then one whose header names a new device in one slot, then (after restarting the
registry service) one more with that device. The swap is published exactly once, with the
slot, both serials, the exposure and the time from which the new device is in the slot; a
replay into a fresh repository publishes nothing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from services.bus.topics import INGEST_OUTCOMES, REGISTRY_EVENTS
from services.butler import Butler
from services.instruments.simcam import SimCam, write_exposure
from services.instruments.simcam.instrument import DETECTORS
from tests.support.cli import obsbus_script
from tests.support.services import Services, kafka_bootstrap

pytestmark = pytest.mark.timeout(900)

SLOT = 1
OLD_SERIAL = DETECTORS[SLOT].serial
NEW_SERIAL = "ITL-3800C-999"  # the same length as the old one: the header keeps its size
DETECTORS_LANDED = range(3)


def land_exposure(services: Services, seq: int, when: str, serial: str) -> list[Path]:
    """Write an exposure aside, give slot ``SLOT`` the device ``serial``, then land it."""
    staging = services.tmp / f"staging-{seq}"
    files = write_exposure(staging, seq, when, detectors=DETECTORS_LANDED)
    landed = []
    for detector, path in zip(DETECTORS_LANDED, files, strict=True):
        data = path.read_bytes()
        if detector == SLOT:
            data = data.replace(f"'{OLD_SERIAL}'".encode(), f"'{serial}'".encode())
        target = services.landing / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")  # ignored by the watcher
        partial.write_bytes(data)
        os.replace(partial, target)
        landed.append(target)
    return landed


def swaps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "detector-swapped"]


@pytest.fixture
def services(tmp_path: Path, db_settings: dict[str, str | None]) -> Iterator[Services]:
    kafka_bootstrap()
    repo, landing = tmp_path / "repo", tmp_path / "landing"
    landing.mkdir()
    with Butler.create(repo, **db_settings) as butler:
        SimCam.register(butler.registry)
    running = Services(repo, landing, tmp_path)
    yield running
    running.stop()


def test_a_swap_is_published_once_with_its_slot_serials_and_time(
    services: Services, tmp_path: Path, db_settings: dict[str, str | None]
) -> None:
    services.start("registry", "ingest", "watcher")
    per_exposure = len(DETECTORS_LANDED)
    land_exposure(services, 1, "2024-11-26T01:00:00", OLD_SERIAL)
    first = services.messages(INGEST_OUTCOMES.name, per_exposure)
    assert [o["swaps"] for o in first] == [[]] * per_exposure, services.logs()
    swapped_files = land_exposure(services, 2, "2024-11-26T01:10:00", NEW_SERIAL)
    outcomes = services.messages(INGEST_OUTCOMES.name, 2 * per_exposure)
    assert {o["status"] for o in outcomes} == {"ingested"}, services.logs()
    swapped_file = str(swapped_files[SLOT])
    (reported,) = [o for o in outcomes if o["swaps"]]
    assert reported["file"] == swapped_file
    events = services.messages(REGISTRY_EVENTS.name, lambda out: len(swaps(out)) >= 1)
    (swap,) = swaps(events)
    exposure = 2024112500002
    with Butler.open(services.repo) as butler:
        (record,) = butler.registry.query_dimension_records("exposure", f"exposure = {exposure}")
    assert {k: swap[k] for k in ("instrument", "detector", "old_serial", "new_serial")} == {
        "instrument": "SimCam",
        "detector": SLOT,
        "old_serial": OLD_SERIAL,
        "new_serial": NEW_SERIAL,
    }
    assert (swap["exposure"], swap["file"]) == (exposure, swapped_file)
    assert swap["since_ns"] == record["timespan"].begin
    (registered,) = [e for e in events if e["kind"] != swap["kind"] and e["file"] == swapped_file]
    assert swap["command_id"] == registered["command_id"]

    # Restart the registry service; the next exposure has the new device too: no new swap.
    services.procs["registry"].terminate()
    services.procs["registry"].wait(60)
    services.start("registry")
    land_exposure(services, 3, "2024-11-26T01:20:00", NEW_SERIAL)
    outcomes = services.messages(INGEST_OUTCOMES.name, 3 * per_exposure)
    assert len(outcomes) == 3 * per_exposure and not any(o["swaps"] for o in outcomes[-3:])
    events = services.messages(
        REGISTRY_EVENTS.name,
        lambda out: sum(e["kind"] == "datasets-registered" for e in out) >= 3 * per_exposure,
    )
    assert swaps(events) == [swap], services.logs()

    # A replay rebuilds a registry from the command topic and publishes nothing.
    with fresh_repository(tmp_path / "fresh", db_settings) as fresh:
        services.replay(fresh)
        with Butler.open(fresh) as butler:
            installed = butler.registry.query_dimension_records("detector_installation")
        assert NEW_SERIAL in {r["physical_detector"] for r in installed}
    total = len(events)
    again = services.messages(REGISTRY_EVENTS.name, total, timeout_s=5)
    assert len(again) == total and swaps(again) == [swap]

    # `obsbus events` shows it readably: kind, slot, serials, exposure and ISO time.
    shown = subprocess.run(
        [obsbus_script(), "events", str(services.repo), "--topic", REGISTRY_EVENTS.name,
         "--from-beginning", "--max", str(total), "--timeout", "30"],
        env=services.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    (line,) = [x for x in shown.stdout.splitlines() if "kind=detector-swapped" in x]
    for part in (
        f"detector={SLOT}",
        f"old_serial={OLD_SERIAL}",
        f"new_serial={NEW_SERIAL}",
        f"exposure={exposure}",
        "since=2024-11-26T01:10:00",
    ):
        assert part in line, line


@contextmanager
def fresh_repository(root: Path, db_settings: dict[str, str | None]) -> Iterator[Path]:
    """A new SimCam repository on the same database, in its own schema (dropped after)."""
    namespace = db_settings["db_namespace"]
    fresh = {**db_settings, "db_namespace": None if namespace is None else f"{namespace}_fresh"}
    try:
        with Butler.create(root, **fresh) as butler:
            SimCam.register(butler.registry)
        yield root
    finally:
        if fresh["db"] is not None:
            engine = sqlalchemy.create_engine(fresh["db"])
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{fresh["db_namespace"]}" CASCADE')
            engine.dispose()
