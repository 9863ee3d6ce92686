"""Shared fixtures: every registry test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``deploy/postgres.sh`` (``make test`` starts it and sets
OBSBUS_TEST_POSTGRES_URL). Each test gets its own PostgreSQL schema, dropped afterwards.
Outside CI a missing server skips the PostgreSQL half; in CI it is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from services.butler import Butler
from tests.support.dummycam import DummyCam

PG_ENV = "OBSBUS_TEST_POSTGRES_URL"
REPO_ROOT = Path(__file__).resolve().parent.parent


def postgres_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{PG_ENV} is not set in CI: PostgreSQL tests must run")
        pytest.skip(f"{PG_ENV} not set (run `make test`, which starts PostgreSQL)")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_settings(backend: str) -> Iterator[dict[str, str | None]]:
    """``db``/``db_namespace`` for Butler.create: None (SQLite in the repo) or a fresh schema."""
    if backend == "sqlite":
        yield {"db": None, "db_namespace": None}
        return
    url = postgres_url()
    namespace = f"t_{uuid.uuid4().hex[:16]}"
    yield {"db": url, "db_namespace": namespace}
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
    engine.dispose()


@pytest.fixture
def empty_butler(tmp_path: Path, db_settings: dict[str, str | None]) -> Iterator[Butler]:
    butler = Butler.create(tmp_path / "repo", actor="pytest", **db_settings)
    yield butler
    butler.close()


@pytest.fixture
def butler(empty_butler: Butler) -> Butler:
    """A repository with DummyCam (4 detectors, 3 filters) registered."""
    DummyCam.register(empty_butler.registry)
    return empty_butler


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running the real ``obsbus`` console script in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)  # so tests.support instruments can be named
    return env


def pytest_configure(config: pytest.Config) -> None:
    # The dashboards tests start (`obsbus up` starts one) take any free port, never the
    # default 8642 a user's own dashboard may hold.
    os.environ.setdefault("OBSBUS_DASHBOARD_PORT", "0")
