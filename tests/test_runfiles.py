"""Finding a repository's running services from their pid files, and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.runfiles import alive, run_dir, service_pid


@pytest.fixture
def fake_service(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line is `obsbus serve registry REPO`, as a service's is."""
    script = tmp_path / "bin" / "obsbus"
    script.parent.mkdir()
    # `sleep &` + `wait`: a shell would run a last plain command in its own process (exec),
    # and the process would stop looking like a service.
    script.write_text("#!/bin/sh\nsleep 60 &\nwait\n")
    script.chmod(0o755)
    argv = [str(script), "serve", "registry", str(tmp_path / "repo")]
    proc = subprocess.Popen(argv, start_new_session=True)
    yield proc
    os.killpg(proc.pid, signal.SIGKILL)  # the shell and its sleep
    proc.wait()


def test_a_service_is_found_whatever_its_name(
    tmp_path: Path, fake_service: subprocess.Popen[bytes]
) -> None:
    repo = tmp_path / "repo"
    assert service_pid(repo, "registry") is None
    (run_dir(repo) / "registry-a.pid").write_text(str(fake_service.pid))
    deadline = time.monotonic() + 10  # until the shell shows its command line
    while service_pid(repo, "registry") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service_pid(repo, "registry") == fake_service.pid, _cmdline(fake_service.pid)
    assert service_pid(repo, "ingest") is None
    assert alive(fake_service.pid) and alive(fake_service.pid, "registry")


def test_a_stale_pid_of_another_process_is_not_a_service(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    other = subprocess.Popen(["sleep", "60"])  # e.g. a database backend reusing the pid
    try:
        (run_dir(repo) / "registry.pid").write_text(str(other.pid))
        assert service_pid(repo, "registry") is None and not alive(other.pid)
    finally:
        other.kill()
        other.wait()
    (run_dir(repo) / "registry.pid").write_text("not a pid")
    assert service_pid(repo, "registry") is None


def _cmdline(pid: int) -> bytes:
    try:
        return (Path(f"/proc/{pid}") / "cmdline").read_bytes()
    except OSError as err:
        return str(err).encode()


def test_a_second_registry_service_is_refused(
    tmp_path: Path, fake_service: subprocess.Popen[bytes]
) -> None:
    repo = tmp_path / "repo"
    (run_dir(repo) / "registry.pid").write_text(str(fake_service.pid))
    deadline = time.monotonic() + 10  # until the shell shows its command line
    while service_pid(repo, "registry") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "serve", "registry", str(repo)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"obsbus: error: a registry service already serves {repo} (pid {fake_service.pid}); "
        "it must be the registry's only writer: stop it first (`obsbus down REPO`, or kill it)"
    ]
