"""Finding a repository's running services from their pid files, and nothing else; and who
looks: the command line (to choose a Butler's writer, or refuse), never the library."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.butler import Butler
from services.cli.opening import open_butler, require_no_registry_service
from services.clients.writes import BusWrites
from services.core.errors import RegistryServedError
from services.core.runfiles import alive, run_dir, service_pid
from services.ingest.raws import RawIngester
from services.registry.datasets import DatasetType
from services.writes import LocalWrites
from tests.support.cli import Cli


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


def served_by(repo: Path, service: subprocess.Popen[bytes], pid_file: str = "registry.pid") -> None:
    """Leave ``service``'s pid file in ``repo`` and wait until it is found as its registry
    service (until the shell shows its command line)."""
    (run_dir(repo) / pid_file).write_text(str(service.pid))
    deadline = time.monotonic() + 10
    while service_pid(repo, "registry") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service_pid(repo, "registry") == service.pid, _cmdline(service.pid)


def test_a_service_is_found_whatever_its_name(
    tmp_path: Path, fake_service: subprocess.Popen[bytes]
) -> None:
    repo = tmp_path / "repo"
    assert service_pid(repo, "registry") is None
    served_by(repo, fake_service, "registry-a.pid")
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
    served_by(repo, fake_service)
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


def test_the_library_reads_no_pid_file(
    tmp_path: Path, fake_service: subprocess.Popen[bytes]
) -> None:
    """A Butler opened without a writer writes in-process, even while a live registry service
    is among the repository's pid files: only its opener (the command line) looks."""
    repo = tmp_path / "repo"
    Butler.create(repo).close()
    served_by(repo, fake_service)
    bias = DatasetType("bias", ("instrument", "detector"), "Image", True)
    with Butler.open(repo) as butler:
        assert isinstance(butler.writes, LocalWrites)
        assert butler.register_dataset_type(bias)
        RawIngester(butler)  # not refused here: `obsbus ingest-raws` refuses
    with Butler.open(repo) as butler:
        assert bias in butler.registry.query_dataset_types()


def test_the_command_line_writes_through_a_live_registry_service(
    tmp_path: Path, fake_service: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    Butler.create(repo).close()
    with open_butler(repo, "obsbus pytest") as butler:
        assert isinstance(butler.writes, LocalWrites)
    require_no_registry_service(repo, "ingest-raws")

    served_by(repo, fake_service)
    with open_butler(repo, "obsbus pytest") as butler:
        assert butler.writes == BusWrites("obsbus pytest via obsbus")
    with pytest.raises(RegistryServedError, match="is its only writer"):
        require_no_registry_service(repo, "freeze-collection")
    # Raw ingest is refused by the command, before the library is asked.
    assert Cli(capsys).fails("ingest-raws", repo, tmp_path) == (
        f"a registry service (pid {fake_service.pid}) serves {repo.resolve()} and is its only "
        "writer; `obsbus ingest-raws` writes the registry directly: drop the files into the "
        "watched landing folder instead"
    )
