"""The local PostgreSQL cluster managed by ``deploy/postgres.sh`` is usable by obsbus.

``make test`` starts the cluster and exports ``OBSBUS_TEST_POSTGRES_URL``. Without it the
tests skip, except under CI (env ``CI`` set), where skipping PostgreSQL is an error.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "postgres.sh"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def pg_url() -> str:
    url = os.environ.get("OBSBUS_TEST_POSTGRES_URL")
    if not url:
        reason = "OBSBUS_TEST_POSTGRES_URL is not set (run `make test`)"
        if _in_ci():
            pytest.fail(f"{reason}; CI must not skip the PostgreSQL tests")
        pytest.skip(reason)
    return url


@pytest.fixture(scope="module")
def engine(pg_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(pg_url)
    try:
        yield eng
    finally:
        eng.dispose()


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_script_status_and_url(pg_url: str) -> None:
    status = _script("status")
    assert status.returncode == 0, status.stdout + status.stderr
    url = _script("url")
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip() == pg_url


def test_connects_as_obsbus(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        user, db = conn.execute(sa.text("SELECT current_user, current_database()")).one()
        version = conn.execute(sa.text("SHOW server_version_num")).scalar_one()
    assert (user, db) == ("obsbus", "obsbus")
    assert int(version) >= 130000  # btree_gist is a trusted extension from PG13


def test_btree_gist_available(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
        installed = conn.execute(
            sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'btree_gist'")
        ).scalar_one()
        assert installed == 1
        # What the registry needs it for: no overlapping validity ranges per key.
        conn.execute(
            sa.text(
                "CREATE TEMPORARY TABLE validity (k integer, r int8range,"
                " EXCLUDE USING gist (k WITH =, r WITH &&))"
            )
        )
        conn.execute(sa.text("INSERT INTO validity VALUES (1, '[0,10)'), (1, '[10,20)')"))
        with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
            conn.execute(sa.text("INSERT INTO validity VALUES (1, '[5,15)')"))


def test_role_can_create_and_drop_schema(engine: sa.Engine) -> None:
    schema = f"test_deploy_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(sa.text(f'CREATE TABLE "{schema}".t (id integer PRIMARY KEY)'))
    try:
        insp = sa.inspect(engine)
        assert schema in insp.get_schema_names()
        assert insp.get_table_names(schema=schema) == ["t"]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    assert schema not in sa.inspect(engine).get_schema_names()
