"""The short chaos run (bench/chaos.py) as a test: services and the broker killed -9 at random
moments of a small night, then every check of the long run. Fixed seed, so a failure can be
run again exactly (`.venv/bin/python bench/chaos.py --seed ...` with the arguments below)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.support.services import kafka_bootstrap

pytestmark = pytest.mark.timeout(900)
ARGS = ["--exposures", "3", "--detectors", "20", "--kills", "4", "--seed", "11"]


def test_short_chaos_night_heals_itself() -> None:
    kafka_bootstrap()  # the Kafka tests run in CI; this one brings its own broker
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "chaos.py"), *ARGS],
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "killed -9" in result.stdout
    assert "every file registered exactly once" in result.stdout


def test_readme_shows_the_short_run() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"$ python bench/chaos.py {' '.join(ARGS)}\n" in readme
