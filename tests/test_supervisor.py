"""The supervisor behind `obsbus up`: restarts with backoff, gives up on a crash loop, says why.

Its children here are small shell processes, so what is tested is the supervision itself;
tests/test_fault_kill.py kills the real services under it on the real broker.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cli.supervisor import Child, RestartPolicy, Supervisor
from tests.conftest import REPO_ROOT

FAST = RestartPolicy(backoff_s=0.1, max_backoff_s=0.4, stable_s=30, max_crashes=4, window_s=60)


def state(repo: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((repo / "var" / "run" / "up.json").read_text())
    return data


def wait_for(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(*children: tuple[str, str], policy: RestartPolicy = FAST) -> Supervisor:
        kids = [Child(n, ["sh", "-c", cmd], tmp_path / f"{n}.log") for n, cmd in children]
        supervisor = Supervisor(tmp_path, kids, policy)
        thread = threading.Thread(target=supervisor.run, args=(stop,), kwargs={"poll_s": 0.02})
        thread.start()
        threads.append(thread)
        wait_for(lambda: (tmp_path / "var" / "run" / "up.json").exists())
        return supervisor

    yield start
    stop.set()
    for thread in threads:
        thread.join(30)


def test_a_killed_service_is_restarted_with_its_new_pid_recorded(
    run: Callable[..., Supervisor], tmp_path: Path
) -> None:
    run(("sleeper", "sleep 60"))
    first = state(tmp_path)["services"]["sleeper"]["pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: state(tmp_path)["services"]["sleeper"]["restarts"] == 1)
    wait_for(lambda: state(tmp_path)["services"]["sleeper"]["state"] == "running")
    now = state(tmp_path)
    assert now["services"]["sleeper"]["pid"] not in (None, first)
    assert now["pids"]["sleeper"] == now["services"]["sleeper"]["pid"]
    assert now["services"]["sleeper"]["last_exit"] == "killed by SIGKILL"


def test_a_crash_loop_is_left_stopped_with_the_reason(
    run: Callable[..., Supervisor], tmp_path: Path
) -> None:
    supervisor = run(("crasher", "echo boom >&2; exit 3"), ("steady", "sleep 60"))
    wait_for(lambda: state(tmp_path)["services"]["crasher"]["state"] == "failed")
    crasher = state(tmp_path)["services"]["crasher"]
    assert crasher["restarts"] == FAST.max_crashes - 1
    assert crasher["pid"] is None
    assert "crasher stopped 4 times within 60 s (last: exited with code 3)" in crasher["reason"]
    assert str(tmp_path / "crasher.log") in crasher["reason"]
    assert (tmp_path / "crasher.log").read_text().count("boom") == FAST.max_crashes
    # The others are not disturbed, and nothing restarts a service given up on.
    assert state(tmp_path)["services"]["steady"]["restarts"] == 0
    time.sleep(1)
    assert state(tmp_path)["services"]["crasher"]["restarts"] == FAST.max_crashes - 1
    # Backoff doubled between crashes, bounded by max_backoff_s.
    assert supervisor.children[0].backoff_s == FAST.max_backoff_s


def test_a_run_longer_than_stable_starts_the_backoff_again(
    run: Callable[..., Supervisor], tmp_path: Path
) -> None:
    policy = RestartPolicy(backoff_s=0.1, max_backoff_s=5, stable_s=0.5, max_crashes=99)
    supervisor = run(("slow", "sleep 0.7; exit 1"), policy=policy)
    wait_for(lambda: state(tmp_path)["services"]["slow"]["restarts"] >= 3)
    assert supervisor.children[0].backoff_s == policy.backoff_s


def test_stopping_terminates_every_service(run: Callable[..., Supervisor], tmp_path: Path) -> None:
    supervisor = run(("a", "sleep 60"), ("b", "sleep 60"))
    procs = [c.proc for c in supervisor.children]
    supervisor.stop_all()
    assert all(p is not None and p.poll() is not None for p in procs)
    assert {c.state for c in supervisor.children} == {"stopped"}


@pytest.mark.parametrize(
    "unit", sorted((REPO_ROOT / "deploy" / "systemd").glob("*.service")), ids=lambda p: p.name
)
def test_systemd_units_restart_like_the_supervisor(unit: Path) -> None:
    import configparser

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    policy = RestartPolicy()
    assert parser["Service"]["Restart"] == "always"
    assert int(parser["Unit"]["StartLimitBurst"]) == policy.max_crashes
    assert float(parser["Unit"]["StartLimitIntervalSec"]) == policy.window_s
