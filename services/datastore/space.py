"""Telling a full datastore from other write failures: by errno, never by message text."""

from __future__ import annotations

import errno
from pathlib import Path

from services.core.errors import DatastoreFullError

# No space left, or over the user's quota: the same outage to whoever writes.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def full_error(root: Path, target: Path, exc: OSError) -> DatastoreFullError:
    return DatastoreFullError(root, target, exc.strerror or str(exc))
