"""PostgreSQL stopped and started again mid-night: the services wait and resume; no command is
lost or applied twice.

The database here is a private PostgreSQL (deploy/postgres.sh in its own folder and port), so
stopping it disturbs no other test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.bus.topics import INGEST_OUTCOMES
from tests.conftest import REPO_ROOT, postgres_url
from tests.support.services import (
    Services,
    all_outcomes,
    check_night,
    free_port_pair,
    kafka_bootstrap,
    land_exposure,
    new_repo,
)

pytestmark = pytest.mark.timeout(900)
POSTGRES_SH = REPO_ROOT / "deploy" / "postgres.sh"


@pytest.fixture
def private_postgres() -> Iterator[dict[str, str]]:
    postgres_url()  # needs the server packages, as the PostgreSQL tests do
    # As root the server runs as `postgres`, who cannot enter pytest's private tmp folders.
    base = Path(tempfile.mkdtemp(prefix="obsbus-pg-fault-", dir="/var/tmp"))
    base.chmod(0o755)
    env = {**os.environ, "OBSBUS_PG_DIR": str(base), "OBSBUS_PG_PORT": str(free_port_pair())}
    subprocess.run(["bash", str(POSTGRES_SH), "start"], env=env, check=True, timeout=300)
    yield env
    subprocess.run(["bash", str(POSTGRES_SH), "stop"], env=env, timeout=120)
    shutil.rmtree(base, ignore_errors=True)


def pg(env: dict[str, str], action: str) -> str:
    result = subprocess.run(
        ["bash", str(POSTGRES_SH), action], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_postgres_restarted_mid_night(private_postgres: dict[str, str], tmp_path: Path) -> None:
    kafka_bootstrap()
    url = pg(private_postgres, "url")
    repo = new_repo(tmp_path / "repo", db=url, db_namespace=f"f_{uuid.uuid4().hex[:8]}")
    landing = tmp_path / "landing"
    landing.mkdir()
    services = Services(repo, landing, tmp_path)
    try:
        services.start("registry", "ingest", "watcher")
        files = land_exposure(landing, 1, 60)
        services.messages(INGEST_OUTCOMES.name, 20, timeout_s=120)
        pg(private_postgres, "stop")
        files += land_exposure(landing, 2, 60)  # lands while there is no database
        time.sleep(8)
        pg(private_postgres, "start")
        files += land_exposure(landing, 3, 30)
        outcomes = all_outcomes(services, files)
        assert {o["status"] for o in outcomes} == {"ingested"}, services.logs()
        assert services.alive() == ["ingest", "registry", "watcher"]
        assert "outage: will read the batch again" in services.logs()
        check_night(services, files, tmp_path)
    finally:
        services.stop()
