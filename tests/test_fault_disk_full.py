"""A summit-night fault: the datastore's disk fills up.

The datastore folder is a real size-limited filesystem (a tmpfs mounted for the test, so
root or CAP_SYS_ADMIN is needed: skipped without, a failure in CI) with a ballast file that
leaves room for a known number of raws. Every file that does not fit gets ``datastore_full``;
nothing half-written stays behind, nothing dies, and once the ballast is removed the rest is
ingested.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.bus.runner import Incoming, Outgoing
from services.bus.topics import INGEST_OUTCOMES, RAW_ARRIVALS, REGISTRY_COMMANDS
from services.bus.transport import Delivery
from services.butler import Butler
from services.core.errors import DatastoreFullError, OutageError
from services.core.runfiles import run_dir
from services.handlers.ingest import IngestHandler
from services.ingest.raws import RawIngester
from services.instruments import load_instrument
from services.instruments.simcam import write_exposure
from services.messages import RawArrival
from tests.support.bus import raw_arrival
from tests.support.cli import Cli
from tests.support.services import Services, check_night, kafka_bootstrap, new_repo

START = "2024-11-26T01:00:00"
FILES = 20  # raws of one SimCam exposure (8640 bytes each)
ROOM = 7  # of them fit on the small disk


class SmallDisk:
    """A 2 MiB tmpfs mounted on ``root``, filled by a ballast file to leave room for N raws."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ballast = root / "ballast"
        root.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            why = f"cannot mount a tmpfs ({result.stderr.strip()}): needs root or CAP_SYS_ADMIN"
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)

    def leave_room_for(self, files: int, file_size: int) -> None:
        """Fill the disk but for ``files`` files of ``file_size`` bytes (and less than one more)."""
        st = os.statvfs(self.root)
        per_file = math.ceil(file_size / st.f_frsize)  # tmpfs counts whole pages
        keep = files * per_file + per_file - 1
        self.ballast.write_bytes(b"\0" * ((st.f_bavail - keep) * st.f_frsize))

    def free(self) -> None:
        self.ballast.unlink()

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.root)], check=True)  # busy: detach it


def small_disk(root: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(root)
    try:
        yield disk
    finally:
        disk.unmount()


@pytest.fixture
def repo(tmp_path: Path, db_settings: dict[str, str | None]) -> Iterator[Butler]:
    """A repository (SQLite or PostgreSQL) with SimCam, its datastore on a small disk."""
    with Butler.create(tmp_path / "repo", actor="pytest", **db_settings) as butler:
        load_instrument("SimCam").register(butler.registry)
        yield butler


@pytest.fixture
def disk(repo: Butler) -> Iterator[SmallDisk]:
    yield from small_disk(repo.datastore.root)


@pytest.fixture
def raws(tmp_path: Path) -> list[Path]:
    return sorted(write_exposure(tmp_path / "landing", 1, START, detectors=range(FILES)))


def registered_paths(butler: Butler) -> set[str]:
    refs = butler.registry.query_datasets("raw", ["SimCam/raw/all"])
    return {butler.stored_file(ref).path for ref, _ in refs}


def assert_datastore_holds_only(butler: Butler, disk: SmallDisk, registered: set[str]) -> None:
    """Whole files, exactly those registered: no partial copy, no folder left empty."""
    root = butler.datastore.root
    entries = [p for p in root.rglob("*") if p != disk.ballast]
    files = {p.relative_to(root).as_posix() for p in entries if p.is_file()}
    assert files == registered
    assert [p for p in entries if p.is_dir() and not any(p.iterdir())] == []
    assert {(root / f).stat().st_size for f in files} <= {8640}


# --- in process: obsbus ingest-raws -------------------------------------------------------------


def test_ingest_raws_on_a_full_disk_then_again_once_freed(
    repo: Butler, disk: SmallDisk, raws: list[Path]
) -> None:
    disk.leave_room_for(ROOM, raws[0].stat().st_size)
    outcomes = list(RawIngester(repo).ingest(raws))
    assert [o.status for o in outcomes] == ["ingested"] * ROOM + ["failed"] * (FILES - ROOM)
    failed = outcomes[ROOM:]
    assert {o.reason for o in failed} == {"datastore_full"}
    message = failed[0].message
    assert "\n" not in message and f"free space on {repo.datastore.root}," in message
    assert "ingest it again" in message
    assert_datastore_holds_only(repo, disk, registered_paths(repo))
    assert len(registered_paths(repo)) == ROOM

    disk.free()
    again = list(RawIngester(repo).ingest(raws))
    assert [o.status for o in again] == ["already-present"] * ROOM + ["ingested"] * (FILES - ROOM)
    assert len(registered_paths(repo)) == FILES
    assert_datastore_holds_only(repo, disk, registered_paths(repo))


def test_ingest_raws_command_on_a_full_disk(
    repo: Butler, disk: SmallDisk, raws: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    disk.leave_room_for(ROOM, raws[0].stat().st_size)
    result = Cli(capsys).run("ingest-raws", repo.root, raws[0].parent, "--json")
    assert result.code == 1, result.describe()
    rows = result.json()
    assert [r["reason"] for r in rows] == [None] * ROOM + ["datastore_full"] * (FILES - ROOM)
    assert_datastore_holds_only(repo, disk, registered_paths(repo))


def test_a_full_disk_is_an_outage_error() -> None:
    err = DatastoreFullError(Path("/ds"), Path("/ds/a.fits"), "No space left on device")
    assert isinstance(err, OutageError) and err.code == "datastore_full"
    assert str(err.then_do("then retry")).endswith("free space on /ds, then retry")


# --- the ingest service's handler, driven by hand ----------------------------------------------


def command_paths(commands: list[Outgoing]) -> set[str]:
    return {o.message.body.stored[0].path for o in commands}


def incoming(arrivals: list[RawArrival]) -> list[Incoming]:
    delivery = Delivery(RAW_ARRIVALS.name, 0, 0, None, b"", 0)
    return [Incoming(delivery, a) for a in arrivals]


def test_ingest_handler_tells_once_then_waits_then_goes_on(
    repo: Butler, disk: SmallDisk, raws: list[Path]
) -> None:
    disk.leave_room_for(ROOM, raws[0].stat().st_size)
    handler = IngestHandler(repo)
    out = handler(incoming([raw_arrival(p) for p in raws]))
    commands = [o for o in out if o.topic == REGISTRY_COMMANDS.name]
    told = [o for o in out if o.topic == INGEST_OUTCOMES.name]
    again = [o.message for o in out if o.topic == RAW_ARRIVALS.name]
    assert len(commands) == ROOM and len(told) == len(again) == FILES - ROOM
    assert {o.message.reason for o in told} == {"datastore_full"}
    assert all(o.key == "SimCam/2024112500001" for o in told)  # in order with their answers
    assert "ingested by itself once there is space" in told[0].message.message
    assert_datastore_holds_only(repo, disk, command_paths(commands))

    # Only files already told about: an outage for the service loop, and nothing is left.
    with pytest.raises(DatastoreFullError):
        handler(incoming(again))
    assert_datastore_holds_only(repo, disk, command_paths(commands))

    disk.free()
    resumed = handler(incoming(again))
    assert [o.topic for o in resumed] == [REGISTRY_COMMANDS.name] * (FILES - ROOM)
    assert {o.message.body.file for o in resumed} == {a.path for a in again}


def test_ingest_handler_batch_not_made_durable_for_quota(
    repo: Butler, raws: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def over_quota(paths: object) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr("services.datastore.transaction.sync_files", over_quota)
    out = IngestHandler(repo)(incoming([raw_arrival(p) for p in raws[:3]]))
    assert sorted(o.topic for o in out) == [INGEST_OUTCOMES.name] * 3 + [RAW_ARRIVALS.name] * 3
    assert {o.message.reason for o in out if o.topic == INGEST_OUTCOMES.name} == {"datastore_full"}
    assert [p for p in repo.datastore.root.rglob("*")] == []


# --- the services over the real broker ----------------------------------------------------------


@pytest.fixture
def service_repo(tmp_path: Path, db_settings: dict[str, str | None]) -> Path:
    kafka_bootstrap()
    return new_repo(tmp_path / "repo", **db_settings)


@pytest.fixture
def service_disk(service_repo: Path) -> Iterator[SmallDisk]:
    with Butler.open(service_repo) as butler:
        root = butler.datastore.root
    yield from small_disk(root)


@pytest.fixture
def services(service_repo: Path, service_disk: SmallDisk, tmp_path: Path) -> Iterator[Services]:
    """Stopped before the small disk is unmounted (fixtures end in reverse order)."""
    landing = tmp_path / "landing"
    landing.mkdir()
    running = Services(service_repo, landing, tmp_path)
    yield running
    running.stop()


def ingest_status(services: Services) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((run_dir(services.repo) / "ingest.json").read_text())
    return status


@pytest.mark.timeout(600)
def test_services_survive_a_full_datastore_and_catch_up(
    services: Services, service_disk: SmallDisk, tmp_path: Path
) -> None:
    size = 8640  # a SimCam raw (checked below)
    service_disk.leave_room_for(ROOM, size)
    services.start("registry", "ingest", "watcher")
    files = sorted(write_exposure(services.landing, 5, START, detectors=range(FILES)))
    assert {f.stat().st_size for f in files} == {size}

    def count(out: list[dict[str, Any]], status: str, reason: str | None = None) -> int:
        return sum(o["status"] == status and o["reason"] == reason for o in out)

    full = services.messages(
        INGEST_OUTCOMES.name,
        lambda out: count(out, "ingested") == ROOM and count(out, "failed", "datastore_full") > 0,
    )
    assert count(full, "ingested") == ROOM, services.logs()
    time.sleep(15)  # the ingest service meets the full disk again and again, and waits
    assert services.alive() == ["ingest", "registry", "watcher"], services.logs()
    with Butler.open(services.repo) as butler:
        assert len(registered_paths(butler)) == ROOM
        assert_datastore_holds_only(butler, service_disk, registered_paths(butler))

    service_disk.free()
    wanted = {str(f) for f in files}
    done = services.messages(
        INGEST_OUTCOMES.name,
        lambda out: {o["file"] for o in out if o["status"] == "ingested"} >= wanted,
        timeout_s=120,  # one outage round is under 10 s
    )
    assert {o["file"] for o in done if o["status"] == "ingested"} == wanted, services.logs()
    told = [o["file"] for o in done if o["reason"] == "datastore_full"]
    assert told and len(told) == len(set(told))  # each file told once
    assert {o["status"] for o in done} == {"ingested", "failed"}
    assert services.alive() == ["ingest", "registry", "watcher"], services.logs()
    # A loop that took the outage for poison messages would have dead-lettered them.
    assert ingest_status(services)["dead_lettered"] == 0
    with Butler.open(services.repo) as butler:
        assert_datastore_holds_only(butler, service_disk, registered_paths(butler))
    check_night(services, files, tmp_path)
