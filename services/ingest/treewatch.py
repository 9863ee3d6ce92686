"""The landing tree: read, watched with inotify, and which of the two the watcher uses.

inotify watches single directories and names them by descriptor; TreeWatch keeps the path of
each so that events come out as paths, and follows directories that move or go away.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog

from ..core.errors import ConfigError
from . import inotify as ino
from .raws import RAW_SUFFIXES

log = structlog.get_logger(__name__)

WATCH_MODES = ("auto", "inotify", "scan")
# What each watched directory reports. IN_ONLYDIR/IN_DONT_FOLLOW: like the scan, never follow
# a symlink to a directory; IN_EXCL_UNLINK: nothing about files already deleted.
DIR_MASK = (
    ino.IN_CLOSE_WRITE
    | ino.IN_MOVED_TO
    | ino.IN_CREATE
    | ino.IN_DELETE_SELF
    | ino.IN_MOVE_SELF
    | ino.IN_ONLYDIR
    | ino.IN_DONT_FOLLOW
    | ino.IN_EXCL_UNLINK
)

# Filesystems where a write by another host raises no inotify event on this one.
_REMOTE_FS = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "gpfs", "lustre", "beegfs",
    "gfs2", "ocfs2", "glusterfs", "fuse.glusterfs", "fuse.cephfs", "fuse.sshfs", "fuse.s3fs",
    "fuse.rclone", "fuse.gcsfuse",
}  # fmt: skip


def choose_mode(mode: str, folders: list[Path]) -> str:
    """``inotify`` or ``scan``: "auto" is inotify unless it is unavailable or a landing folder
    is on a shared filesystem (another host's writes would go unseen)."""
    if mode not in WATCH_MODES:
        raise ConfigError(f"unknown watch mode {mode!r}: use one of {', '.join(WATCH_MODES)}")
    if mode == "inotify" and not ino.inotify_available():
        raise ConfigError("inotify is not available here: use --watch-mode scan")
    if mode != "auto":
        return mode
    if not ino.inotify_available():
        return "scan"
    for folder in folders:
        fs = remote_filesystem(folder)
        if fs is not None:
            log.warning(
                "landing folder on a shared filesystem: scanning", folder=str(folder), fs=fs
            )
            return "scan"
    return "inotify"


def remote_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The type of the shared filesystem holding ``path`` (e.g. "nfs4"), None if local.

    From the mount table (/proc/self/mounts unless given): the longest mount point that
    contains the path.
    """
    try:
        lines = (mounts or Path("/proc/self/mounts").read_text()).splitlines()
    except OSError:
        return None
    target, best, fstype = str(path.resolve()), "", ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        # Spaces and the like are octal escapes (\040) in the mount table.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, fields[2]
    return fstype if fstype in _REMOTE_FS else None


def raw_files(roots: Iterable[str], tree: TreeWatch | None) -> Iterator[os.DirEntry[str]]:
    """Raw files under ``roots``, not under dot-directories, not following symlinks to
    directories. Given a tree, each directory is watched before it is read, so a file closed
    in between is seen by one or the other."""
    stack = [r for r in roots if os.path.isdir(r)]
    while stack:
        folder = stack.pop()
        if tree is not None and not tree.watch(folder):
            continue
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.name.lower().endswith(RAW_SUFFIXES):
                        yield entry
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed (or replaced) since its parent was read


def linked(path: str) -> bool:
    """A name that appeared by link(2) or symlink(2): no IN_CLOSE_WRITE will come for it."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISLNK(st.st_mode) or st.st_nlink > 1


class TreeWatch:
    """Watches on directories, kept by path, so that events come out as (mask, path) pairs.

    The kernel watches inodes: a directory moved within the tree keeps its watch, and
    watching it again under its new path only records that path (its IN_MOVED_TO comes before
    its IN_MOVE_SELF). One deleted or moved away is forgotten with all the watches under it.
    """

    def __init__(self, mask: int = DIR_MASK) -> None:
        self._inotify = ino.Inotify()
        self._mask = mask
        self._dirs: dict[int, tuple[str, int]] = {}  # watch descriptor -> (directory, inode)

    def __len__(self) -> int:
        return len(self._dirs)

    def watched(self) -> set[str]:
        return {folder for folder, _ in self._dirs.values()}

    def watch(self, folder: str) -> bool:
        """Watch a directory; False if it is gone or no longer a directory."""
        try:
            wd = self._inotify.add_watch(folder, self._mask)
            self._dirs[wd] = (folder, os.stat(folder).st_ino)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def events(self, timeout_s: float) -> Iterator[tuple[int, str]]:
        """Waits up to ``timeout_s``, then yields (mask, path of the entry) for each event
        about an entry of a watched directory, and (IN_Q_OVERFLOW, "") if events were lost.

        Lazily: a directory's own events are acted on only once the caller has handled
        those before them (e.g. watched the new path of a moved directory).
        """
        return self._resolve(self._inotify.read(timeout_s))

    def _resolve(self, events: list[ino.Event]) -> Iterator[tuple[int, str]]:
        for ev in events:
            if ev.mask & ino.IN_Q_OVERFLOW:
                yield ino.IN_Q_OVERFLOW, ""
            elif ev.mask & ino.IN_IGNORED:  # the kernel dropped the watch (deleted, unmounted)
                self._dirs.pop(ev.wd, None)
            elif ev.wd not in self._dirs:
                continue  # a watch already forgotten
            elif ev.mask & (ino.IN_DELETE_SELF | ino.IN_MOVE_SELF):
                self._forget_if_gone(ev.wd)
            elif ev.name:
                yield ev.mask, os.path.join(self._dirs[ev.wd][0], ev.name)

    def _forget_if_gone(self, wd: int) -> None:
        folder, inode = self._dirs[wd]
        try:
            if os.stat(folder).st_ino == inode:
                return  # moved within the tree: its new path is already recorded
        except OSError:
            pass
        log.info("directory gone from the landing tree", folder=folder)
        for w, (d, _) in list(self._dirs.items()):
            if d == folder or d.startswith(folder + os.sep):
                self._inotify.rm_watch(w)
                del self._dirs[w]

    def close(self) -> None:
        self._inotify.close()
        self._dirs.clear()
