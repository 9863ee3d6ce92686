"""The filesystem steps a datastore write is made of.

A temporary name beside the destination (so a rename is atomic), copying with its checksum
and fsync in one pass, moving across filesystems, checking that an existing file holds the
same bytes, and removing the folders a write made. Separate from the datastore and its
transactions, which both use them: these know nothing of templates, roots or undo.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from pathlib import Path

from services.core.errors import FileConflictError
from services.datastore.stored import CHECKSUM_ALGORITHM, CHUNK_BYTES, file_checksum

__all__ = ["copy_hashing", "fsync_file", "move_file", "remove_dirs", "same_content", "temp_path"]


def same_content(source: Path, dest: Path) -> tuple[int, str]:
    """(size, checksum) when ``dest`` already holds exactly ``source``'s bytes, else raise."""
    size, checksum = file_checksum(source)
    if dest.is_file() and file_checksum(dest) == (size, checksum):
        return size, checksum
    raise FileConflictError(
        f"{dest} already exists with different content; "
        "remove the old dataset first or use another run"
    )


def temp_path(dest: Path) -> Path:
    # Same directory (so os.replace is atomic); the real name last keeps its extension,
    # which some writers (astropy) inspect.
    return dest.with_name(f".tmp-{uuid.uuid4().hex}-{dest.name}")


def copy_hashing(source: Path, target: Path, *, sync: bool = True) -> tuple[int, str]:
    """Copy and checksum in one pass; fsync (unless the caller syncs a batch later) so the
    rename never exposes a partial file."""
    digest = hashlib.blake2b(digest_size=32)
    size = 0
    with source.open("rb") as src, target.open("xb") as dst:
        while chunk := src.read(CHUNK_BYTES):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        if sync:
            os.fsync(dst.fileno())
    return size, f"{CHECKSUM_ALGORITHM}:{digest.hexdigest()}"


def move_file(source: Path, dest: Path) -> None:
    """Rename ``source`` to ``dest``; across filesystems, copy atomically and delete it."""
    try:
        os.rename(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Another filesystem: copy atomically, then delete the original.
        tmp = temp_path(dest)
        try:
            shutil.copy2(source, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        source.unlink()


def remove_dirs(created: list[Path]) -> None:
    """Remove folders we made, deepest first, stopping at one that is not empty."""
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            return  # something else now lives there (or it is gone): leave it


def fsync_file(path: Path) -> None:
    """Make the data of the file at ``path`` durable."""
    with path.open("rb") as stream:
        os.fsync(stream.fileno())
