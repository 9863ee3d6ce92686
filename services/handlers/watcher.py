"""The raw-arrival watcher: publishes one RawArrival per complete file in the landing folders.

In ``inotify`` mode (the default on Linux, local filesystems) the kernel reports a file closed
after writing (cameras write in place) or renamed into place (close-then-rename), and it is
published at once; a file still open for writing never is. Every directory below the landing
folders is watched; a new one is watched, then read once (files may have landed in it first).
Files found by reading a directory rather than by an event (at start, in a new directory,
after lost events) are published once stable, as in ``scan`` mode: that reads the whole tree
every interval, and a file is complete when its size and mtime have not changed for
``settle_s`` (for shared filesystems written by other hosts, whose writes inotify never sees).

``*.part`` and dot-files are never published; a FITS file must be whole 2880-byte blocks. What
was published is the arrivals topic itself: on start the watcher reads back its own arrivals,
so a restart neither loses nor repeats a file, with no local state to corrupt.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..bus.declaration import Declaration
from ..bus.outage import Outage
from ..bus.readback import read_to_end
from ..bus.runner import write_status_file
from ..bus.topics import RAW_ARRIVALS
from ..bus.transport import Bus
from ..core.errors import BusError, ConfigError, UndecodableMessageError
from ..core.timespan import now_ns
from ..ingest import inotify as ino
from ..ingest.raws import RAW_SUFFIXES
from ..ingest.treewatch import TreeWatch, choose_mode, linked, raw_files
from ..messages import RawArrival

log = structlog.get_logger(__name__)

SERVICE = Declaration(
    "watcher",
    reads=(),  # the landing folders
    writes=(RAW_ARRIVALS,),
    doc="landing folders watched; one RawArrival per complete raw file",
)

_ROOT_CHECK_S = 1.0  # how often to look for landing folders not watched (gone, not made yet)
Ready = dict[str, tuple[int, int]]  # path -> (size, mtime_ns) complete in this tick


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime_ns: int
    first_seen_ns: int


class Watcher:
    def __init__(
        self,
        bus: Bus,
        folders: Iterable[Path],
        watcher_id: str,
        settle_s: float = 0.1,
        status_file: Path | None = None,
        mode: str = "auto",
    ) -> None:
        self.status_file = status_file
        self.bus = bus
        self.folders = [Path(f).resolve() for f in folders]
        self.watcher_id = watcher_id
        self.settle_ns = int(settle_s * 1e9)
        self.mode = choose_mode(mode, self.folders)
        self._published: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns)
        self._candidates: dict[str, _Seen] = {}  # found by reading a directory, not yet stable
        # Arrivals the broker did not acknowledge (an outage): sent again, same arrival ids.
        self._unsent: list[RawArrival] = []
        self.published_count = 0
        self.last_published_ns = 0
        self._tree: TreeWatch | None = None  # made by start() (inotify mode)
        self._next_root_check = 0.0

    def recover(self) -> int:
        """Learn from the arrivals topic what this watcher already published."""
        group = f"watcher-recover-{uuid.uuid4().hex}"
        for d in read_to_end(self.bus, [RAW_ARRIVALS.name], group):
            try:
                arrival = RawArrival.decode(d.value)
            except UndecodableMessageError:
                continue  # not ours to publish again; the services dead-letter it
            if arrival.watcher == self.watcher_id:
                self._published.add((arrival.path, arrival.size, arrival.mtime_ns))
        log.info("watcher recovered", watcher=self.watcher_id, published=len(self._published))
        return len(self._published)

    def _walk(self, roots: Iterable[str], now: int, ready: Ready) -> set[str]:
        """Read the directories under ``roots``; returns the raw files present."""
        present = set()
        for entry in raw_files(roots, self._tree):
            try:
                st = entry.stat()
            except FileNotFoundError:  # renamed or cleaned up since the directory was read
                continue
            present.add(entry.path)
            self._settle(entry.path, st.st_size, st.st_mtime_ns, now, ready)
        return present

    def _settle(self, path: str, size: int, mtime_ns: int, now: int, ready: Ready) -> None:
        """One look at a file found by reading its directory: ready once stable for settle_s."""
        if (path, size, mtime_ns) in self._published:
            self._candidates.pop(path, None)
            return
        seen = self._candidates.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (size, mtime_ns):
            self._candidates[path] = _Seen(size, mtime_ns, now)
            return  # new or still changing: look again next time
        if now == seen.first_seen_ns or now - seen.first_seen_ns < self.settle_ns:
            return
        if _plausibly_complete(os.path.basename(path), size):
            ready[path] = (size, mtime_ns)
        elif self._tree is not None:
            self._candidates.pop(path)  # stable but not whole: its writer's close will tell

    def _look_again(self, path: str, now: int, ready: Ready) -> None:
        try:
            st = os.stat(path)
        except OSError:
            self._candidates.pop(path, None)  # gone (a rename has its own event)
            return
        self._settle(path, st.st_size, st.st_mtime_ns, now, ready)

    def _closed(self, path: str, ready: Ready) -> None:
        """A file closed after writing or renamed into place: complete now, if it is whole."""
        try:
            st = os.stat(path)
        except OSError:
            return  # renamed or removed since: a rename has its own event
        if (path, st.st_size, st.st_mtime_ns) in self._published:
            return
        if _plausibly_complete(os.path.basename(path), st.st_size):
            ready[path] = (st.st_size, st.st_mtime_ns)
        else:
            self._candidates.pop(path, None)  # truncated or to be rewritten: wait for a close

    def _publish(self, ready: Ready, now: int) -> list[RawArrival]:
        waiting = {(a.path, a.size, a.mtime_ns) for a in self._unsent}
        arrivals = self._unsent + [
            self._arrival(p, size, mtime, now)
            for p, (size, mtime) in ready.items()
            if (p, size, mtime) not in waiting
        ]
        self._unsent = arrivals  # until the broker acknowledges them
        for arrival in arrivals:
            self.bus.send(
                RAW_ARRIVALS.name,
                arrival.path.encode(),
                arrival.encode(),
            )
        if arrivals:
            self.bus.flush()  # acknowledged before we consider them published
            for a in arrivals:
                self._published.add((a.path, a.size, a.mtime_ns))
                self._candidates.pop(a.path, None)
            self.published_count += len(arrivals)
            self.last_published_ns = now_ns()
        self._unsent = []
        return arrivals

    def scan(self) -> list[RawArrival]:
        """One look at the whole landing tree; publishes (and returns) newly complete files."""
        now, ready = now_ns(), Ready()
        self._walk_all(now, ready)
        return self._publish(ready, now)

    def _walk_all(self, now: int, ready: Ready) -> None:
        present = self._walk(map(str, self.folders), now, ready)
        for gone in set(self._candidates) - present:
            del self._candidates[gone]

    def start(self) -> list[RawArrival]:
        """inotify mode: watch the landing tree, then read it once for the files that landed
        while no watcher ran (they are published once stable, by later steps)."""
        if self._tree is not None:
            return []
        if self.mode != "inotify":
            raise ConfigError(f"watcher {self.watcher_id} is in {self.mode} mode, not inotify")
        self._tree = TreeWatch()
        arrivals = self.scan()
        self._next_root_check = time.monotonic() + _ROOT_CHECK_S
        log.info("watching with inotify", watcher=self.watcher_id, directories=len(self._tree))
        return arrivals

    def step(self, timeout_s: float = 0.1) -> list[RawArrival]:
        """inotify mode: wait up to ``timeout_s`` for events; publish what became complete.

        Re-stats only the files found by reading a directory that are not yet stable; reads
        directories only when one is new, a landing folder reappears or events were lost.
        """
        self.start()
        assert self._tree is not None
        pending = list(self._candidates)  # looked at before this tick: due another look
        events = self._tree.events(timeout_s)
        now, ready = now_ns(), Ready()
        closed: dict[str, None] = {}  # in event order, once each
        overflow = False
        for mask, path in events:
            name = os.path.basename(path)
            if mask & ino.IN_Q_OVERFLOW:
                overflow = True
            elif name.startswith("."):
                continue
            elif mask & ino.IN_ISDIR:  # made here or moved in: watch it all, read it once
                self._walk([path], now, ready)
            elif not name.lower().endswith(RAW_SUFFIXES):
                continue
            elif mask & (ino.IN_CLOSE_WRITE | ino.IN_MOVED_TO):
                closed[path] = None
            elif linked(path):  # a hard or symbolic link: no close will follow
                self._look_again(path, now, ready)
        if overflow:
            log.warning("inotify events lost (queue overflow): reading the landing tree")
            self._walk_all(now, ready)
        elif time.monotonic() >= self._next_root_check:
            self._next_root_check = time.monotonic() + _ROOT_CHECK_S
            watched = self._tree.watched()
            missing = [str(f) for f in self.folders if str(f) not in watched]
            if missing:
                self._walk(missing, now, ready)
        for path in closed:
            self._closed(path, ready)
        for path in pending:
            if path in self._candidates and path not in ready:
                self._look_again(path, now, ready)
        return self._publish(ready, now)

    def close(self) -> None:
        if self._tree is not None:
            self._tree.close()
            self._tree = None

    def _arrival(self, path: str, size: int, mtime_ns: int, now: int) -> RawArrival:
        return RawArrival(
            arrival_id=str(uuid.uuid4()),
            path=path,
            folder=str(Path(path).parent),
            size=size,
            mtime_ns=mtime_ns,
            detected_at_ns=now,
            watcher=self.watcher_id,
        )

    def run(self, stop: threading.Event, interval_s: float = 0.05) -> None:
        outage = Outage(self.watcher_id)
        while not stop.is_set():
            try:
                self.recover()
                break
            except BusError as err:
                outage.wait(err, stop)
        outage.ok()
        log.info(
            "watcher started",
            watcher=self.watcher_id,
            folders=[str(f) for f in self.folders],
            mode=self.mode,
        )
        last_status = 0.0
        try:
            while not stop.is_set():
                try:
                    if self.mode == "inotify":
                        # Short waits: stop is honoured within one, and files found by reading
                        # a directory are looked at again every interval until they are stable.
                        self.step(interval_s if self._candidates else 0.1)
                    else:
                        self.scan()
                except BusError as err:  # kept in _unsent: sent once the broker is back
                    outage.wait(err, stop)
                    continue
                outage.ok()
                if self.status_file is not None and time.monotonic() - last_status > 1.0:
                    _write_status(
                        self.status_file,
                        self.watcher_id,
                        self.published_count,
                        self.last_published_ns,
                    )
                    last_status = time.monotonic()
                if self.mode == "scan":
                    stop.wait(interval_s)
        finally:
            self.close()


def _write_status(path: Path, watcher_id: str, produced: int, last_message_ns: int) -> None:
    status = {
        "service": watcher_id,
        "pid": os.getpid(),
        "updated_at_ns": now_ns(),
        "produced": produced,
        "last_message_ns": last_message_ns,
        "lag": 0,
    }
    write_status_file(path, status)


def _plausibly_complete(name: str, size: int) -> bool:
    # A complete (uncompressed or tile-compressed) FITS file is a whole number of 2880-byte
    # blocks: a file stalled mid-write is almost never one.
    if name.lower().endswith((".fits", ".fit", ".fits.fz")):
        return size > 0 and size % 2880 == 0
    return size > 0
