"""A small typed wrapper over Linux inotify (libc through ctypes; no third-party package).

The watcher uses it to learn that a file was closed after writing, or renamed into place,
the moment it happens, instead of re-reading every landing directory many times a second.
Only what the watcher needs is here: one non-blocking descriptor, watches added and removed
by path, and ``struct inotify_event`` records read with a timeout.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import select
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ..core.errors import ConfigError

# <sys/inotify.h>: events, then flags for inotify_add_watch, then flags set by the kernel.
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
# inotify_init1 flags are the open(2) ones (asm-generic; true on x86 and arm).
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_READ_SIZE = 64 * 1024  # room for ~250 events with long names; at least one of any length
_MAX_READS = 16  # per read(): bounded, so a storm of events cannot starve the caller
_WATCHES_FILE = Path("/proc/sys/fs/inotify/max_user_watches")
_INSTANCES_FILE = Path("/proc/sys/fs/inotify/max_user_instances")


@dataclass(frozen=True, slots=True)
class Event:
    wd: int  # the watch (a directory) the event is about; -1 for IN_Q_OVERFLOW
    mask: int
    cookie: int  # pairs IN_MOVED_FROM with IN_MOVED_TO
    name: str  # entry in the watched directory; "" when the event is about the directory


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)  # the C library this Python is linked with
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def inotify_available() -> bool:
    """True if this system can give this process an inotify descriptor right now."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fd = int(_libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    except (OSError, AttributeError):  # no libc, or one without inotify
        return False
    if fd < 0:
        return False
    os.close(fd)
    return True


def _limit(file: Path) -> str:
    try:
        return file.read_text().strip()
    except OSError:
        return "?"


class Inotify:
    """One inotify descriptor (non-blocking, close-on-exec); a context manager."""

    def __init__(self) -> None:
        fd = int(_libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            hint = ""
            if err == errno.EMFILE:
                hint = f" (limit {_INSTANCES_FILE} = {_limit(_INSTANCES_FILE)})"
            raise ConfigError(
                f"cannot start inotify: {os.strerror(err)}{hint}; "
                "raise the limit or use --watch-mode scan"
            )
        self.fd = fd
        self._poll = select.poll()  # not select.select: the fd number may exceed 1023
        self._poll.register(fd, select.POLLIN)

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        """Watch ``path``; returns the watch descriptor (the same one if already watched).

        Raises FileNotFoundError/NotADirectoryError when the path vanished or is not what the
        mask allows (a race the caller skips), ConfigError for any other refusal.
        """
        wd = int(_libc().inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd >= 0:
            return wd
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise OSError(err, os.strerror(err), os.fspath(path))
        if err == errno.ENOSPC:
            raise ConfigError(
                f"cannot watch {os.fspath(path)}: the inotify watch limit is reached "
                f"({_WATCHES_FILE} = {_limit(_WATCHES_FILE)}); raise it "
                "(sysctl fs.inotify.max_user_watches=N) or use --watch-mode scan"
            )
        raise ConfigError(f"cannot watch {os.fspath(path)}: {os.strerror(err)}")

    def rm_watch(self, wd: int) -> None:
        """Stop watching; a watch the kernel already dropped (EINVAL) is not an error."""
        if int(_libc().inotify_rm_watch(self.fd, wd)) < 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL:
                raise OSError(err, os.strerror(err))

    def read(self, timeout_s: float) -> list[Event]:
        """Events that are waiting, waiting up to ``timeout_s`` for the first one."""
        if not self._poll.poll(max(0, int(timeout_s * 1000))):
            return []
        events: list[Event] = []
        for _ in range(_MAX_READS):
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            events.extend(parse_events(data))
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def parse_events(data: bytes) -> list[Event]:
    """``struct inotify_event`` records (the kernel only hands out whole ones)."""
    events, offset = [], 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        name = os.fsdecode(data[offset : offset + length].rstrip(b"\0"))
        offset += length
        events.append(Event(wd, mask, cookie, name))
    return events
