"""A datastore of plain files under one root directory.

Files are placed by path template, written atomically, and recorded as ``StoredFile`` rows
(``stored.py``) that hold everything needed to read them back (relative path + formatter
import path), so the registry stores the row and this module never needs a database. All
writes go through a ``transaction()`` (``transaction.py``) whose file operations are undone if
the ``with`` block fails; the registry wraps its database transaction in one, which keeps files
and rows consistent. A write that finds the filesystem full or over quota raises
``DatastoreFullError`` and leaves neither a partial file nor a folder it made.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from services.core.errors import (
    ChecksumError,
    DatastoreError,
    FormatterError,
    ObsbusError,
    PathEscapeError,
)
from services.datastore.file_ops import remove_dirs
from services.datastore.formatters import load_formatter
from services.datastore.space import full_error, is_full
from services.datastore.stored import CHECKSUM_ALGORITHM, StoredFile, file_checksum
from services.datastore.templates import DEFAULT_TEMPLATE, PathTemplate
from services.datastore.transaction import TRANSFER_MODES, DatastoreTransaction

DataId = Mapping[str, str | int]


class FileDatastore:
    """Files under ``root``, placed by path templates keyed by dataset type name.

    ``templates`` may hold a ``"default"`` entry to replace the built-in default template.
    """

    TRANSFER_MODES: ClassVar[tuple[str, ...]] = TRANSFER_MODES

    def __init__(self, root: Path, templates: Mapping[str, str] | None = None) -> None:
        self.root = Path(root).resolve()
        parsed = {name: PathTemplate(text) for name, text in (templates or {}).items()}
        self._default_template = parsed.pop("default", PathTemplate(DEFAULT_TEMPLATE))
        self._templates = parsed

    def __repr__(self) -> str:
        return f"FileDatastore({str(self.root)!r})"

    def template_for(self, dataset_type: str) -> PathTemplate:
        return self._templates.get(dataset_type, self._default_template)

    @contextmanager
    def transaction(self, *, batch_sync: bool = False) -> Iterator[DatastoreTransaction]:
        """Group file operations; if the block raises, all of them are undone.

        ``batch_sync``: copies are made durable together (one filesystem sync for all of them,
        then their renames) when the block ends or at ``make_durable()``, instead of one fsync
        per file: several times faster for many small files. Call ``make_durable()`` before
        committing registry rows that point at the files.
        """
        txn = DatastoreTransaction(self, batch_sync=batch_sync)
        try:
            yield txn
            txn.make_durable()
        except BaseException as exc:
            for problem in txn._rollback():
                exc.add_note(f"datastore rollback incomplete: {problem}")
            raise
        else:
            txn._commit()

    # --- reading and checking ---------------------------------------------------------------

    def local_path(self, stored: StoredFile) -> Path:
        """The absolute filesystem path of a stored file (checked to stay inside the root)."""
        if stored.is_direct:
            parsed = urlparse(stored.path)
            if parsed.netloc not in ("", "localhost"):
                raise DatastoreError(f"{stored.path!r} is not a local file URI")
            return Path(url2pathname(parsed.path))
        return self._absolute(stored.path)

    def uri(self, stored: StoredFile) -> str:
        """An absolute ``file://`` URI for the stored file."""
        return stored.path if stored.is_direct else self.local_path(stored).as_uri()

    def read(
        self,
        stored: StoredFile,
        component: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        """Read a dataset (or one component, with the parameters it needs) using only what
        ``stored`` records."""
        formatter = load_formatter(stored.formatter)(stored.locator, parameters)
        formatter.check_component(component)
        formatter.check_parameters(component)
        path = self._existing_file(stored)
        try:
            return formatter.read(path, component)
        except ObsbusError:
            raise
        except Exception as exc:
            raise FormatterError(
                f"{type(formatter).__name__} could not read {path}: {exc}"
            ) from exc

    def verify(self, stored: StoredFile) -> None:
        """Raise ``ChecksumError`` unless the file still has the recorded size and checksum."""
        path = self._existing_file(stored)
        algorithm = stored.checksum.partition(":")[0]
        if algorithm != CHECKSUM_ALGORITHM:
            raise ChecksumError(
                f"cannot verify {path}: unsupported checksum {stored.checksum!r} "
                f"(expected '{CHECKSUM_ALGORITHM}:<hex>')"
            )
        size, checksum = file_checksum(path)
        if size != stored.file_size:
            raise ChecksumError(
                f"{path} is {size} bytes but {stored.file_size} were stored: "
                "the file was changed or truncated after ingest"
            )
        if checksum != stored.checksum:
            raise ChecksumError(
                f"{path} has checksum {checksum}, not the stored {stored.checksum}: "
                "the file was changed after ingest"
            )

    def remove(self, stored: StoredFile) -> None:
        """Delete a stored file now (missing is fine). Direct-ingested files are never deleted.

        Inside a transaction prefer ``DatastoreTransaction.remove``, which waits for commit.
        """
        if stored.is_direct:
            return
        path = self.local_path(stored)
        path.unlink(missing_ok=True)
        self._prune_empty_dirs(path.parent)

    # --- helpers for DatastoreTransaction ---------------------------------------------------

    def _relative_path(self, dataset_type: str, run: str, data_id: DataId, extension: str) -> str:
        template = self.template_for(dataset_type)
        return template.render(run=run, dataset_type=dataset_type, data_id=data_id) + extension

    def _absolute(self, relative: str) -> Path:
        """``root / relative``, refusing anything that could land outside the root."""
        pure = PurePosixPath(relative)
        if pure.is_absolute() or not pure.parts or any(p in (".", "..") for p in pure.parts):
            raise PathEscapeError(
                f"refusing datastore path {relative!r}: it must be relative, without '..'"
            )
        path = self.root.joinpath(*pure.parts)
        # Resolve only the directory: the file itself may be a symlink we made (transfer
        # "symlink") and legitimately point outside; a symlinked directory may not.
        if not path.parent.resolve().is_relative_to(self.root):
            raise PathEscapeError(f"refusing datastore path {relative!r}: it leaves {self.root}")
        return path

    def _existing_file(self, stored: StoredFile) -> Path:
        path = self.local_path(stored)
        if not path.is_file():
            raise DatastoreError(f"file of dataset {stored.dataset_id} is missing: {path}")
        return path

    def _make_dirs(self, directory: Path) -> list[Path]:
        """Create ``directory`` and missing parents; return those created below the root."""
        missing: list[Path] = []
        current = directory
        while not current.exists() and current != self.root:
            missing.append(current)
            current = current.parent
        made: list[Path] = []
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for path in reversed(missing):
                path.mkdir(exist_ok=True)
                made.insert(0, path)
        except OSError as exc:
            remove_dirs(made)
            if is_full(exc):
                raise full_error(self.root, directory, exc) from exc
            raise DatastoreError(f"cannot create directory in {self.root}: {exc}") from exc
        return made  # deepest first: the order to remove them in

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self.root and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or gone): stop
            directory = directory.parent
