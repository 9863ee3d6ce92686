"""The local broker killed -9 mid-night: the supervisor starts it again, the services reconnect
by themselves (no restarts, no crash loop, a clear log line each way), nothing is lost or doubled.

The broker here is a private one (deploy/kafka.sh in a temporary folder, on free ports) that
`obsbus up` uses as its local broker, so killing it disturbs no other test.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.bus.topics import INGEST_OUTCOMES
from tests.conftest import REPO_ROOT
from tests.support.services import (
    Supervised,
    all_outcomes,
    check_night,
    free_port_pair,
    kafka_bootstrap,
    land_exposure,
    new_repo,
)

pytestmark = pytest.mark.timeout(900)
KAFKA_SH = REPO_ROOT / "deploy" / "kafka.sh"


@pytest.fixture
def local_broker(tmp_path: Path) -> Iterator[dict[str, str]]:
    """deploy/kafka.sh settings of a private broker (started and stopped by the test)."""
    kafka_bootstrap()  # the Kafka tests must run in CI; this one brings its own broker
    env = {
        **os.environ,
        "OBSBUS_KAFKA_DIR": str(tmp_path / "kafka"),
        "OBSBUS_KAFKA_PORT": str(free_port_pair()),
    }
    subprocess.run(["bash", str(KAFKA_SH), "start"], env=env, check=True, timeout=300)
    yield env
    subprocess.run(["bash", str(KAFKA_SH), "stop"], env=env, timeout=120)


def test_broker_killed_mid_night_is_restarted_and_services_reconnect(
    local_broker: dict[str, str], tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    bootstrap = f"127.0.0.1:{local_broker['OBSBUS_KAFKA_PORT']}"
    night = Supervised(new_repo(tmp_path / "repo"), landing, tmp_path, bootstrap=bootstrap)
    night.env.update(local_broker)
    try:
        night.up(
            OBSBUS_KAFKA_BOOTSTRAP=None,  # the local broker: the supervisor looks after it
            OBSBUS_RESTART_BROKER_CHECK_S="1",
            # Shorter than the broker's restart: unacknowledged messages fail and are sent
            # again (the path a long outage takes), not only retried inside the producer.
            OBSBUS_KAFKA_DELIVERY_TIMEOUT_S="5",
        )
        assert night.state()["local_broker"] and not night.state()["broker_started"]
        files = land_exposure(landing, 1, 60)
        night.messages(INGEST_OUTCOMES.name, 20)
        pid = int((tmp_path / "kafka" / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        files += land_exposure(landing, 2, 60)  # lands while there is no broker
        night.wait_until(lambda s: s["broker"]["restarts"] == 1, timeout_s=300)
        files += land_exposure(landing, 3, 30)
        outcomes = all_outcomes(night, files)
        assert {o["status"] for o in outcomes} <= {"ingested", "already-present"}
        services = night.state()["services"]
        assert {n: (s["state"], s["restarts"]) for n, s in services.items()} == {
            n: ("running", 0) for n in services
        }, night.logs()
        logs = night.logs()
        assert "broker unavailable: keeping unsent messages and retrying" in logs
        assert "broker available again" in logs
        assert "local broker restarted" in logs
        check_night(night, files, tmp_path)
    finally:
        night.stop()
