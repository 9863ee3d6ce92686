"""What the registry records of one stored file, and the checksum it records.

Separate from the datastore so that the registry, which keeps ``StoredFile`` rows, and the
datastore's own file operations both depend on the record without depending on each other.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHECKSUM_ALGORITHM", "CHUNK_BYTES", "StoredFile", "file_checksum"]

CHECKSUM_ALGORITHM = "blake2b"
CHUNK_BYTES = 1 << 20  # 1 MiB: bounded memory for multi-GB raw files
_FILE_URI_PREFIX = "file://"


@dataclass(frozen=True)
class StoredFile:
    """Where and how one dataset's file is stored.

    ``path`` is POSIX and relative to the datastore root, or an absolute ``file://`` URI for
    a file ingested with transfer "direct" (left where it was, never deleted by us).
    """

    dataset_id: uuid.UUID
    path: str
    formatter: str  # import path of the Formatter subclass, see load_formatter
    storage_class: str
    file_size: int
    checksum: str  # "blake2b:<hex>"
    # Where in the file this dataset lives when one file holds several (e.g. "hdu=5" for one
    # CCD of a multi-extension raw); None when the dataset is the whole file.
    locator: str | None = None

    @property
    def is_direct(self) -> bool:
        return self.path.startswith(_FILE_URI_PREFIX)


def file_checksum(path: Path) -> tuple[int, str]:
    """Return ``(size in bytes, "blake2b:<hex>")`` for the file at ``path``."""
    digest = hashlib.blake2b(digest_size=32)
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, f"{CHECKSUM_ALGORITHM}:{digest.hexdigest()}"
