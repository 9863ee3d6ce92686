"""The raw-arrival watcher: publishes one RawArrival per complete file in the landing folders.

A file is complete when its size and mtime have not changed for ``settle_s`` (cameras and
transfer tools write in place) — or at once when it appeared by rename, the usual
close-then-rename convention, which the stability check covers as a special case. Half-written
files (``*.part``, dot-files) are never published.

What was published is the arrivals topic itself: on start the watcher reads back its own
arrivals, so a restart neither loses nor repeats a file, with no local state to corrupt.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..bus import codec
from ..bus.topics import RAW_ARRIVALS
from ..bus.transport import Bus
from ..core.errors import UndecodableMessageError
from ..core.timespan import now_ns
from .raws import RAW_SUFFIXES

log = structlog.get_logger(__name__)


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
    ) -> None:
        self.status_file = status_file
        self.bus = bus
        self.folders = [Path(f).resolve() for f in folders]
        self.watcher_id = watcher_id
        self.settle_ns = int(settle_s * 1e9)
        self._published: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns)
        self._candidates: dict[str, _Seen] = {}
        self.published_count = 0

    def recover(self) -> int:
        """Learn from the arrivals topic what this watcher already published."""
        ends = {p: end for p, end in self.bus.end_offsets(RAW_ARRIVALS.name).items() if end}
        consumer = self.bus.consumer(f"watcher-recover-{uuid.uuid4().hex}", [RAW_ARRIVALS.name])
        reached: dict[int, int] = {}
        try:
            # Read until every partition is at the end it had when we started (offsets, not
            # message counts: a topic may not start at offset 0).
            while any(reached.get(p, 0) < end for p, end in ends.items()):
                for d in consumer.poll(0.5, 5000):
                    reached[d.partition] = d.offset + 1
                    try:
                        value = codec.decode(d.value).value
                    except UndecodableMessageError:
                        continue  # not ours to publish again; the services dead-letter it
                    if value["watcher"] == self.watcher_id:
                        self._published.add((value["path"], value["size"], value["mtime_ns"]))
        finally:
            consumer.close()
        log.info("watcher recovered", watcher=self.watcher_id, published=len(self._published))
        return len(self._published)

    def _files(self) -> Iterator[os.DirEntry[str]]:
        stack = [str(f) for f in self.folders if f.is_dir()]
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.name.lower().endswith(RAW_SUFFIXES):
                        yield entry

    def scan(self) -> list[dict[str, Any]]:
        """One look at the landing folders; publishes (and returns) newly complete files."""
        now = now_ns()
        arrivals = []
        present = set()
        for entry in self._files():
            try:
                st = entry.stat()
            except FileNotFoundError:  # renamed or cleaned up since the directory was read
                continue
            present.add(entry.path)
            ident = (entry.path, st.st_size, st.st_mtime_ns)
            if ident in self._published:
                continue
            seen = self._candidates.get(entry.path)
            if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                self._candidates[entry.path] = _Seen(st.st_size, st.st_mtime_ns, now)
                continue  # new or still changing: look again next scan
            settled = now - seen.first_seen_ns >= self.settle_ns
            if not settled or not _plausibly_complete(entry.name, st.st_size):
                continue
            arrivals.append(self._arrival(entry.path, st.st_size, st.st_mtime_ns, now))
        for arrival in arrivals:
            self.bus.send(
                RAW_ARRIVALS.name,
                arrival["path"].encode(),
                codec.encode(RAW_ARRIVALS.record, arrival),
            )
        if arrivals:
            self.bus.flush()  # acknowledged before we consider them published
            for a in arrivals:
                self._published.add((a["path"], a["size"], a["mtime_ns"]))
                self._candidates.pop(a["path"], None)
            self.published_count += len(arrivals)
        for gone in set(self._candidates) - present:
            del self._candidates[gone]
        return arrivals

    def _arrival(self, path: str, size: int, mtime_ns: int, now: int) -> dict[str, Any]:
        return {
            "arrival_id": str(uuid.uuid4()),
            "path": path,
            "folder": str(Path(path).parent),
            "size": size,
            "mtime_ns": mtime_ns,
            "detected_at_ns": now,
            "watcher": self.watcher_id,
        }

    def run(self, stop: threading.Event, interval_s: float = 0.05) -> None:
        self.recover()
        log.info("watcher started", watcher=self.watcher_id, folders=[str(f) for f in self.folders])
        last_status = 0.0
        while not stop.is_set():
            self.scan()
            if self.status_file is not None and time.monotonic() - last_status > 1.0:
                status = {
                    "service": self.watcher_id,
                    "pid": os.getpid(),
                    "updated_at_ns": now_ns(),
                    "produced": self.published_count,
                    "lag": 0,
                }
                tmp = self.status_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(status))
                tmp.replace(self.status_file)
                last_status = time.monotonic()
            stop.wait(interval_s)


def _plausibly_complete(name: str, size: int) -> bool:
    # A complete (uncompressed or tile-compressed) FITS file is a whole number of 2880-byte
    # blocks: a file stalled mid-write is almost never one.
    if name.lower().endswith((".fits", ".fit", ".fits.fz")):
        return size > 0 and size % 2880 == 0
    return size > 0
