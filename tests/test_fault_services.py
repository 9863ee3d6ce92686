"""Services killed at random moments of a night, on the real broker: nothing lost or doubled.

Each test ends with ``check_night``: one raw per file, the registry as an in-process
``ingest-raws`` of the same files builds it, and a replay of the command topic identical.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import (
    Services,
    Supervised,
    all_outcomes,
    check_night,
    kafka_bootstrap,
    land_exposure,
    new_repo,
)

pytestmark = pytest.mark.timeout(600)
FAST_RESTARTS = {"OBSBUS_RESTART_BACKOFF_S": "0.3", "OBSBUS_RESTART_MAX_BACKOFF_S": "2"}


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Supervised]:
    kafka_bootstrap()
    landing = tmp_path / "landing"
    landing.mkdir()
    running = Supervised(new_repo(tmp_path / "repo"), landing, tmp_path)
    yield running
    running.stop()


def test_kill_9_of_every_service_at_random_moments_is_healed(
    supervised: Supervised, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    supervised.up(**FAST_RESTARTS)
    files: list[Path] = []
    landing = threading.Thread(
        target=lambda: [
            (files.extend(land_exposure(supervised.landing, seq, 40)), time.sleep(1.0))
            for seq in range(1, 6)
        ]
    )
    landing.start()
    victims = ["watcher", "ingest", "registry", "calib", *rng.choices(["ingest", "registry"], k=2)]
    rng.shuffle(victims)
    for name in victims:
        time.sleep(rng.uniform(0.2, 1.5))
        supervised.wait_until(lambda s, n=name: s["services"][n]["state"] == "running")
        supervised.kill9(name)
    landing.join()
    outcomes = all_outcomes(supervised, files)
    assert {o["status"] for o in outcomes} <= {"ingested", "already-present"}, f"seed {seed}"
    supervised.wait_until(lambda s: all(v["state"] == "running" for v in s["services"].values()))
    restarts = {n: s["restarts"] for n, s in supervised.state()["services"].items()}
    assert restarts == {n: victims.count(n) for n in restarts}, f"seed {seed}"
    check_night(supervised, files, tmp_path)


def test_two_ingest_workers_one_killed_mid_exposure(tmp_path: Path) -> None:
    kafka_bootstrap()
    landing = tmp_path / "landing"
    landing.mkdir()
    services = Services(new_repo(tmp_path / "repo"), landing, tmp_path)
    try:
        services.start("registry", "watcher")
        services.start_as("ingest", "ingest-1")
        services.start_as("ingest", "ingest-2")
        time.sleep(3)  # both in the group before the files come
        files = land_exposure(landing, 1, 205)
        from services.bus.topics import INGEST_OUTCOMES

        services.messages(INGEST_OUTCOMES.name, 30)
        services.kill9("ingest-2")  # its partitions move to ingest-1 (a rebalance)
        files += land_exposure(landing, 2, 60)
        outcomes = all_outcomes(services, files)
        # Handled again after the rebalance, an arrival sends the same command (its id comes
        # from the arrival's): the registry answers it again, never applies it twice. A
        # repeated outcome has the same arrival_id and dataset ids: consumers skip on those.
        by_file = defaultdict(list)
        for o in outcomes:
            by_file[o["file"]].append(o)
        for repeats in by_file.values():
            assert {o["status"] for o in repeats} == {"ingested"}
            assert len({(o["arrival_id"], tuple(o["dataset_ids"])) for o in repeats}) == 1
        assert services.alive() == ["ingest-1", "registry", "watcher"]
        check_night(services, files, tmp_path)
    finally:
        services.stop()
