"""The README is the user's door: every command in it is run here, as a user would."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy

from tests.conftest import REPO_ROOT, postgres_url

README = REPO_ROOT / "README.md"


def console_block(after_heading: str) -> list[str]:
    """The lines of the first ```console block under a heading, without the "$ " prompt."""
    text = README.read_text()
    section = text.split(f"## {after_heading}\n", 1)[1]
    block = re.search(r"```console\n(.*?)```", section, re.S)
    assert block is not None, f"no console block under {after_heading!r}"
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    return [line.removeprefix("$ ") for line in lines]


def obsbus_script() -> str:
    script = Path(sys.executable).parent / "obsbus"
    return str(script) if script.exists() else shutil.which("obsbus") or "obsbus"


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    if argv[0] == "obsbus":
        argv[0] = obsbus_script()
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_walkthrough(tmp_path: Path, cli_env: dict[str, str]) -> None:
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    for command in console_block("Walkthrough"):
        result = run(command, tmp_path, cli_env)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    # The walkthrough's lookups found what it set up.
    found = run(
        "obsbus find-calibration demo bias --collections SimCam/calib --data-id "
        "instrument=SimCam detector=94 --exposure 2024112500004 --json",
        tmp_path,
        cli_env,
    )
    assert '"detector": 94' in found.stdout and '"run": "SimCam/calib/masters"' in found.stdout


def test_the_two_commands_are_the_makefile_targets() -> None:
    commands = console_block("The two commands")
    assert [c.split("#")[0].strip() for c in commands] == ["make run", "make test"]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def kafka_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for commands that use the bus: the test broker, a fresh namespace."""
    bootstrap = os.environ.get("OBSBUS_TEST_KAFKA")
    if not bootstrap:
        if os.environ.get("CI"):
            pytest.fail("OBSBUS_TEST_KAFKA is not set in CI: the Kafka tests must run")
        pytest.skip("OBSBUS_TEST_KAFKA not set (run `make test`, which starts Kafka)")
    return {
        **env,
        "OBSBUS_KAFKA_BOOTSTRAP": bootstrap,
        "OBSBUS_KAFKA_NAMESPACE": f"readme{uuid.uuid4().hex[:8]}.",
    }


def test_main_job(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """`make run`: the services ingest a simulated night, then stop by themselves."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = kafka_env(cli_env)
    args = [
        make,
        "-C",
        str(REPO_ROOT),
        "run",
        f"REPO={tmp_path / 'repo'}",
        "EXPOSURES=1",
        "INTERVAL=0.5",
    ]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "done: 205 files landed, 205 ingested, 0 failed" in result.stdout, result.stdout
    assert any(line.startswith("SimCam ") for line in result.stdout.splitlines())  # records


def test_running_the_services(tmp_path: Path, cli_env: dict[str, str]) -> None:
    env = kafka_env(cli_env)
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    try:
        for command in console_block("Running the services"):
            result = run(command, tmp_path, env)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            if "obsbus.ingest.outcomes" in command:
                assert result.stdout.count('"status": "ingested"') == 205, result.stdout[-2000:]
            if command.startswith("obsbus bless"):
                assert "blessed into SimCam/calib/night" in result.stdout
    finally:
        run("obsbus down night", tmp_path, env)


def test_readme_lists_every_topic() -> None:
    from services.bus.topics import ALL_TOPICS

    text = README.read_text()
    for t in ALL_TOPICS:  # the row says what services/bus/topics.py says
        assert f"| `{t.name}` | `{t.record}` | {t.key} | {t.partitions} |" in text


def test_pointing_at_postgresql(tmp_path: Path, cli_env: dict[str, str]) -> None:
    url = postgres_url()
    namespace = f"readme_{uuid.uuid4().hex[:12]}"
    (command,) = console_block("Pointing at PostgreSQL")
    command = command.replace("postgresql+psycopg://USER@HOST:5432/DB", url)
    command = command.replace("my_repo", namespace).replace("REPO", str(tmp_path / "pg"))
    try:
        result = run(command, tmp_path, cli_env)
        assert result.returncode == 0, result.stderr
        listed = run(f"obsbus query-collections {tmp_path / 'pg'} --json", tmp_path, cli_env)
        assert listed.returncode == 0 and listed.stdout.strip() == "[]"
    finally:
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        engine.dispose()
