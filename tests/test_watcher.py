"""The raw-arrival watcher on the in-memory bus: inotify mode (events) and scan mode."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.bus.topics import RAW_ARRIVALS
from services.bus.transport import MemoryBus
from services.core.errors import ConfigError
from services.handlers.watcher import Watcher
from services.ingest import inotify, treewatch
from tests.support.bus import decoded, memory_bus

needs_inotify = pytest.mark.skipif(
    not inotify.inotify_available(), reason="inotify is not available here"
)
BLOCK = b"SIMPLE  =" + b" " * (2880 - 9)  # one whole FITS block


def published(bus: MemoryBus) -> list[tuple[str, int]]:
    return [(a["path"], a["size"]) for a in decoded(bus, RAW_ARRIVALS.name)]


def steps(watcher: Watcher, n: int, timeout_s: float = 0.02) -> list[dict[str, Any]]:
    return [a for _ in range(n) for a in watcher.step(timeout_s)]


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    return folder


@pytest.fixture
def bus() -> MemoryBus:
    return memory_bus()


@pytest.fixture
def event_watcher(bus: MemoryBus, landing: Path) -> Iterator[Watcher]:
    """inotify mode with a settle time no test waits for: what it publishes, events found."""
    watcher = Watcher(bus, [landing], "w1", settle_s=30.0, mode="inotify")
    watcher.recover()
    assert watcher.start() == []
    yield watcher
    watcher.close()


@needs_inotify
def test_a_file_written_in_place_is_published_when_closed(
    event_watcher: Watcher, bus: MemoryBus, landing: Path
) -> None:
    path = landing / "exp1.fits"
    with path.open("wb") as f:
        f.write(BLOCK * 2)
        f.flush()  # whole blocks already on disk, but its writer has not closed it
        assert steps(event_watcher, 5) == []
        f.write(BLOCK)
    closed_at = time.monotonic()
    (arrival,) = event_watcher.step(1.0)
    assert time.monotonic() - closed_at < 0.5  # at the close, not after a settle time
    assert (arrival.path, arrival.size) == (str(path), 3 * 2880)
    assert arrival.mtime_ns == path.stat().st_mtime_ns
    assert steps(event_watcher, 3) == []
    assert published(bus) == [(str(path), 3 * 2880)]


@needs_inotify
def test_a_file_closed_half_written_waits_for_its_next_close(
    event_watcher: Watcher, bus: MemoryBus, landing: Path
) -> None:
    path = landing / "exp1.fits"
    path.write_bytes(BLOCK[:1000])  # not whole blocks: the writer will come back
    assert steps(event_watcher, 2) == []
    with path.open("ab") as f:
        f.write(BLOCK[1000:])
    assert [a.size for a in event_watcher.step(1.0)] == [2880]


@needs_inotify
def test_a_part_file_renamed_into_place_is_published(
    event_watcher: Watcher, bus: MemoryBus, landing: Path
) -> None:
    part = landing / "exp2.fits.part"
    part.write_bytes(BLOCK)
    (landing / ".hidden.fits").write_bytes(BLOCK)
    (landing / "notes.txt").write_bytes(b"x")
    assert steps(event_watcher, 3) == []
    part.rename(landing / "exp2.fits")
    assert [(a.path, a.size) for a in event_watcher.step(1.0)] == [
        (str(landing / "exp2.fits"), 2880)
    ]
    assert published(bus) == [(str(landing / "exp2.fits"), 2880)]


@needs_inotify
def test_files_in_a_new_nested_directory_are_published(bus: MemoryBus, landing: Path) -> None:
    watcher = Watcher(bus, [landing], "w1", settle_s=0.0, mode="inotify")
    watcher.start()
    try:
        nested = landing / "night1" / "raw"
        nested.mkdir(parents=True)
        (nested / "early.fits").write_bytes(BLOCK)  # before the watcher saw the directory
        # Read by the directory's first look, so published once seen stable.
        assert watcher.step(1.0) == []
        assert [a.path for a in watcher.step(0.02)] == [str(nested / "early.fits")]
        (nested / "late.fits").write_bytes(BLOCK * 2)  # the directory is watched by now
        assert [(a.path, a.size) for a in watcher.step(1.0)] == [
            (str(nested / "late.fits"), 2 * 2880)
        ]
        # A directory moved in from outside the landing folder is watched too.
        outside = landing.parent / "staging"
        outside.mkdir()
        (outside / "moved.fits").write_bytes(BLOCK)
        outside.rename(landing / "night2")
        steps(watcher, 2)
        (landing / "night2" / "after.fits").write_bytes(BLOCK)
        assert [a.path for a in watcher.step(1.0)] == [str(landing / "night2" / "after.fits")]
    finally:
        watcher.close()
    assert sorted(p for p, _ in published(bus)) == sorted(
        str(p)
        for p in (
            nested / "early.fits",
            nested / "late.fits",
            landing / "night2" / "moved.fits",
            landing / "night2" / "after.fits",
        )
    )


@needs_inotify
def test_files_present_at_start_settle_then_a_restart_repeats_none(
    bus: MemoryBus, landing: Path
) -> None:
    (landing / "a").mkdir()
    before = [landing / "one.fits", landing / "a" / "two.fits.fz"]
    for p in before:
        p.write_bytes(BLOCK)
    watcher = Watcher(bus, [landing], "w1", settle_s=0.5, mode="inotify")
    watcher.recover()
    assert watcher.start() == [] and watcher.step(0.02) == []  # seen, not yet stable
    time.sleep(0.5)
    assert sorted(a.path for a in watcher.step(0.02)) == sorted(map(str, before))
    assert steps(watcher, 3) == []
    watcher.close()

    (landing / "while-down.fits").write_bytes(BLOCK)
    again = Watcher(bus, [landing], "w1", settle_s=0.0, mode="inotify")
    assert again.recover() == 2
    try:
        assert again.start() == []
        assert [a.path for a in steps(again, 3)] == [str(landing / "while-down.fits")]
    finally:
        again.close()
    assert len(published(bus)) == 3


@needs_inotify
def test_an_idle_tick_reads_no_directory(
    event_watcher: Watcher, landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(50):
        (landing / f"f{i}.fits").write_bytes(BLOCK)
    assert len(steps(event_watcher, 2)) == 50
    walks: list[list[str]] = []
    real = treewatch.raw_files

    def counting(roots: Iterable[str], tree: Any) -> Iterator[os.DirEntry[str]]:
        walks.append(list(roots))
        return real(walks[-1], tree)

    monkeypatch.setattr("services.handlers.watcher.raw_files", counting)
    monkeypatch.setattr("services.handlers.watcher._ROOT_CHECK_S", 0.0)  # check every tick
    assert steps(event_watcher, 5) == []
    assert walks == [] and event_watcher._candidates == {}
    (landing / "sub").mkdir()  # the control: a new directory is read
    event_watcher.step(1.0)
    assert walks == [[str(landing / "sub")]]


@needs_inotify
def test_run_publishes_promptly_and_stops(bus: MemoryBus, landing: Path, tmp_path: Path) -> None:
    status = tmp_path / "w1.json"
    watcher = Watcher(bus, [landing], "w1", settle_s=30.0, status_file=status)
    assert watcher.mode == "inotify"  # auto, on a local filesystem
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 1.5
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        (landing / "x.fits").write_bytes(BLOCK)
        while not published(bus) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert published(bus) == [(str(landing / "x.fits"), 2880)]
    finally:
        stop.set()
        stopped_at = time.monotonic()
        thread.join(2.0)
    assert not thread.is_alive() and time.monotonic() - stopped_at < 0.5
    assert json.loads(status.read_text())["service"] == "w1"


def test_scan_mode_publishes_once_stable(bus: MemoryBus, landing: Path) -> None:
    watcher = Watcher(bus, [landing], "w1", settle_s=0.0, mode="scan")
    assert watcher.mode == "scan"
    with pytest.raises(ConfigError, match="scan mode"):
        watcher.step()
    growing = landing / "growing.fits"
    growing.write_bytes(BLOCK[:1000])
    (landing / "skipped.fits.part").write_bytes(BLOCK)
    assert watcher.scan() == [] and watcher.scan() == []
    growing.write_bytes(BLOCK * 2)
    assert watcher.scan() == []  # first sight of the final size: wait one more look
    assert [(a.path, a.size) for a in watcher.scan()] == [(str(growing), 2 * 2880)]
    assert watcher.scan() == []
    again = Watcher(bus, [landing], "w1", settle_s=0.0, mode="scan")
    assert again.recover() == 1 and again.scan() == [] and again.scan() == []
    assert published(bus) == [(str(growing), 2 * 2880)]


def test_an_unknown_mode_is_refused(bus: MemoryBus, landing: Path) -> None:
    with pytest.raises(ConfigError, match="unknown watch mode 'poll'"):
        Watcher(bus, [landing], "w1", mode="poll")


@needs_inotify
def test_the_watch_limit_is_one_clear_error(landing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with inotify.Inotify() as notify:
        with pytest.raises(FileNotFoundError):
            notify.add_watch(landing / "missing", inotify.IN_CREATE)

        class Full:  # libc as it answers once max_user_watches watches exist
            def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
                ctypes.set_errno(errno.ENOSPC)
                return -1

        monkeypatch.setattr(inotify, "_libc", Full)
        with pytest.raises(ConfigError, match="max_user_watches") as err:
            notify.add_watch(landing, inotify.IN_CREATE)
    assert "\n" not in str(err.value) and "--watch-mode scan" in str(err.value)


def test_parse_events_reads_whole_records() -> None:
    import struct

    name = b"exp.fits".ljust(16, b"\0")
    data = struct.pack("iIII", 3, inotify.IN_CLOSE_WRITE, 0, len(name)) + name
    data += struct.pack("iIII", -1, inotify.IN_Q_OVERFLOW, 0, 0)
    assert inotify.parse_events(data) == [
        inotify.Event(3, inotify.IN_CLOSE_WRITE, 0, "exp.fits"),
        inotify.Event(-1, inotify.IN_Q_OVERFLOW, 0, ""),
    ]


def test_auto_mode_scans_folders_on_shared_filesystems() -> None:
    mounts = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/export /data nfs4 rw 0 0\n"
        "/dev/sdb1 /data/local\\040disk xfs rw 0 0\n"
    )
    assert treewatch.remote_filesystem(Path("/data/night1"), mounts) == "nfs4"
    assert treewatch.remote_filesystem(Path("/data"), mounts) == "nfs4"
    assert treewatch.remote_filesystem(Path("/data/local disk/x"), mounts) is None
    assert treewatch.remote_filesystem(Path("/database"), mounts) is None
