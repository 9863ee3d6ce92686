"""A datastore of plain files under one root directory.

Files are placed by path template, written atomically, and recorded as ``StoredFile`` rows
that hold everything needed to read them back (relative path + formatter import path), so
the registry stores the row and this module never needs a database. All writes go through a
``transaction()`` whose file operations are undone if the ``with`` block fails; the registry
wraps its database transaction in one, which keeps files and rows consistent. A write that
finds the filesystem full or over quota raises ``DatastoreFullError`` and leaves neither a
partial file nor a folder it made.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from services.core.errors import (
    ChecksumError,
    DatastoreError,
    FileConflictError,
    FormatterError,
    ObsbusError,
    PathEscapeError,
    TransferError,
)
from services.datastore.durability import sync_directories, sync_files
from services.datastore.formatters import Formatter, formatter_import_path, load_formatter
from services.datastore.space import full_error, is_full
from services.datastore.storage_classes import (
    compression_suffix,
    formatter_for_file,
    get_storage_class,
)
from services.datastore.templates import DEFAULT_TEMPLATE, PathTemplate

log = logging.getLogger(__name__)

TRANSFER_MODES = ("copy", "move", "hardlink", "symlink", "direct")
CHECKSUM_ALGORITHM = "blake2b"
_CHUNK = 1 << 20  # 1 MiB: bounded memory for multi-GB raw files
_FILE_URI_PREFIX = "file://"

DataId = Mapping[str, str | int]


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
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, f"{CHECKSUM_ALGORITHM}:{digest.hexdigest()}"


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
            _remove_dirs(made)
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


class DatastoreTransaction:
    """File operations that are undone together if the enclosing ``with`` block fails."""

    def __init__(self, datastore: FileDatastore, *, batch_sync: bool = False) -> None:
        self._datastore = datastore
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._pending_removals: list[StoredFile] = []
        self._open = True
        self._batch_sync = batch_sync
        # Copies written but not yet durable or in place: destination -> (temporary, checksum).
        self._staged: dict[Path, tuple[Path, tuple[int, str]]] = {}

    def ingest(
        self,
        source: Path,
        *,
        dataset_id: uuid.UUID,
        dataset_type: str,
        run: str,
        data_id: DataId,
        storage_class: str,
        formatter: str | None = None,
        transfer: str = "copy",
    ) -> StoredFile:
        """Bring an existing file into the datastore by ``transfer`` (see TRANSFER_MODES).

        Re-ingesting identical content to the same place is a no-op (the source is then left
        alone, even for "move"); different content at the destination is refused.
        """
        self._check_open()
        if transfer not in TRANSFER_MODES:
            raise TransferError(
                f"unknown transfer mode {transfer!r}; use one of: {', '.join(TRANSFER_MODES)}"
            )
        source = Path(source)
        if not source.exists():
            raise TransferError(f"cannot ingest {source}: no such file")
        if not source.is_file():
            raise TransferError(f"cannot ingest {source}: not a regular file")
        sc = get_storage_class(storage_class)
        cls = load_formatter(formatter) if formatter else formatter_for_file(sc, source)
        formatter_path = formatter_import_path(cls)

        def stored(path: str, size: int, checksum: str) -> StoredFile:
            return StoredFile(dataset_id, path, formatter_path, sc.name, size, checksum)

        if transfer == "direct":
            resolved = source.resolve()
            return stored(resolved.as_uri(), *file_checksum(resolved))

        ds = self._datastore
        # Keep the compression suffix so e.g. a tile-compressed .fits.fz stays recognisable.
        extension = cls.extension + compression_suffix(source.name)
        relative = ds._relative_path(dataset_type, run, data_id, extension)
        dest = ds._absolute(relative)
        if dest in self._staged:  # the same destination twice in one transaction
            return stored(relative, *_same_as_staged(source, dest, self._staged[dest][1]))
        if os.path.lexists(dest):
            return stored(relative, *_same_content(source, dest))
        made = ds._make_dirs(dest.parent)
        self._track_dirs(made)
        try:
            size, checksum = self._transfer(source, dest, transfer)
        except OSError as exc:
            # The transfer removed its partial file; its empty folders go too, now: the
            # caller may go on and commit the other files of the transaction.
            _remove_dirs(made)
            if is_full(exc):
                raise full_error(ds.root, dest, exc) from exc
            raise TransferError(_transfer_failure(transfer, source, dest, exc)) from exc
        return stored(relative, size, checksum)

    def put(
        self,
        obj: Any,
        *,
        dataset_id: uuid.UUID,
        dataset_type: str,
        run: str,
        data_id: DataId,
        storage_class: str,
        formatter: str | None = None,
    ) -> StoredFile:
        """Write an in-memory object as a new file (atomically: temp file + rename)."""
        self._check_open()
        sc = get_storage_class(storage_class)
        cls = load_formatter(formatter) if formatter else sc.default_formatter
        formatter_path = formatter_import_path(cls)
        ds = self._datastore
        relative = ds._relative_path(dataset_type, run, data_id, cls.extension)
        dest = ds._absolute(relative)
        made = ds._make_dirs(dest.parent)
        self._track_dirs(made)
        tmp = _temp_path(dest)
        try:
            _write(cls(), obj, tmp)
            _fsync(tmp)
            size, checksum = file_checksum(tmp)
            if os.path.lexists(dest):
                _same_content(tmp, dest)  # identical re-put is fine; else this raises
            else:
                os.replace(tmp, dest)
                self._undo.append((f"delete {dest}", lambda: dest.unlink(missing_ok=True)))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            _remove_dirs(made)
            if is_full(exc):
                raise full_error(ds.root, dest, exc) from exc
            raise DatastoreError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return StoredFile(dataset_id, relative, formatter_path, sc.name, size, checksum)

    def remove(self, stored: StoredFile) -> None:
        """Delete ``stored`` when the transaction commits (nothing happens on rollback)."""
        self._check_open()
        self._datastore.local_path(stored)  # refuse bad paths now, not at commit
        self._pending_removals.append(stored)

    # --- internals --------------------------------------------------------------------------

    def _transfer(self, source: Path, dest: Path, transfer: str) -> tuple[int, str]:
        """Do one transfer and register its undo; return (size, checksum) of the result."""
        if transfer == "copy" and self._batch_sync:
            tmp = _temp_path(dest)
            try:
                result = _copy_hashing(source, tmp, sync=False)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._undo.append((f"delete {tmp}", lambda: tmp.unlink(missing_ok=True)))
            self._undo.append((f"delete {dest}", lambda: dest.unlink(missing_ok=True)))
            self._staged[dest] = (tmp, result)
            return result
        if transfer == "copy":
            tmp = _temp_path(dest)
            try:
                result = _copy_hashing(source, tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            self._undo.append((f"delete {dest}", lambda: dest.unlink(missing_ok=True)))
            return result
        if transfer == "move":
            _move(source, dest)
            self._undo.append((f"move {dest} back to {source}", lambda: _move(dest, source)))
        elif transfer == "hardlink":
            os.link(source, dest)
            self._undo.append((f"delete {dest}", lambda: dest.unlink(missing_ok=True)))
        elif transfer == "symlink":
            os.symlink(source.resolve(), dest)
            self._undo.append((f"delete {dest}", lambda: dest.unlink(missing_ok=True)))
        return file_checksum(dest)

    def make_durable(self) -> None:
        """Put the staged copies in place, durably: their data first, then the renames.

        A crash before the renames leaves only hidden temporary files; a rename never exposes
        a partial file. Nothing to do unless ``batch_sync``.
        """
        if not self._staged:
            return
        staged, self._staged = self._staged, {}
        try:
            sync_files([tmp for tmp, _ in staged.values()])
            for dest, (tmp, _) in staged.items():
                os.replace(tmp, dest)
            sync_directories({dest.parent for dest in staged})
        except OSError as exc:
            if is_full(exc):
                raise full_error(self._datastore.root, next(iter(staged)), exc) from exc
            raise DatastoreError(
                f"cannot make {len(staged)} copied file(s) durable under "
                f"{self._datastore.root}: {exc.strerror or exc}"
            ) from exc

    def _track_dirs(self, created: list[Path]) -> None:
        # Registered before the file's own undo, so it runs after it (undo is LIFO).
        if created:
            self._undo.append(
                (f"remove directories under {created[-1]}", lambda: _remove_dirs(created))
            )

    def _check_open(self) -> None:
        if not self._open:
            raise DatastoreError("datastore transaction already finished; open a new one")

    def _rollback(self) -> list[str]:
        """Undo everything, newest first; return what could not be undone."""
        self._open = False
        problems: list[str] = []
        for description, undo in reversed(self._undo):
            try:
                undo()
            except OSError as exc:
                problems.append(f"could not {description}: {exc}")
                log.warning("datastore rollback: could not %s: %s", description, exc)
        self._undo.clear()
        return problems

    def _commit(self) -> None:
        self._open = False
        self._undo.clear()
        for stored in self._pending_removals:
            try:
                self._datastore.remove(stored)
            except (OSError, ObsbusError) as exc:
                # The registry has committed already; a leftover file is only wasted space.
                log.warning("could not delete %s after commit: %s", stored.path, exc)


def _same_content(source: Path, dest: Path) -> tuple[int, str]:
    """(size, checksum) when ``dest`` already holds exactly ``source``'s bytes, else raise."""
    size, checksum = file_checksum(source)
    if dest.is_file() and file_checksum(dest) == (size, checksum):
        return size, checksum
    raise FileConflictError(
        f"{dest} already exists with different content; "
        "remove the old dataset first or use another run"
    )


def _temp_path(dest: Path) -> Path:
    # Same directory (so os.replace is atomic); the real name last keeps its extension,
    # which some writers (astropy) inspect.
    return dest.with_name(f".tmp-{uuid.uuid4().hex}-{dest.name}")


def _same_as_staged(source: Path, dest: Path, staged: tuple[int, str]) -> tuple[int, str]:
    if file_checksum(source) == staged:
        return staged
    raise FileConflictError(
        f"{dest} is being written with different content in this transaction; "
        "two different files cannot be the same dataset"
    )


def _copy_hashing(source: Path, target: Path, *, sync: bool = True) -> tuple[int, str]:
    """Copy and checksum in one pass; fsync (unless the caller syncs a batch later) so the
    rename never exposes a partial file."""
    digest = hashlib.blake2b(digest_size=32)
    size = 0
    with source.open("rb") as src, target.open("xb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        if sync:
            os.fsync(dst.fileno())
    return size, f"{CHECKSUM_ALGORITHM}:{digest.hexdigest()}"


def _move(source: Path, dest: Path) -> None:
    try:
        os.rename(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Another filesystem: copy atomically, then delete the original.
        tmp = _temp_path(dest)
        try:
            shutil.copy2(source, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        source.unlink()


def _remove_dirs(created: list[Path]) -> None:
    """Remove folders we made, deepest first, stopping at one that is not empty."""
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            return  # something else now lives there (or it is gone): leave it


def _fsync(path: Path) -> None:
    with path.open("rb") as stream:
        os.fsync(stream.fileno())


def _write(formatter: Formatter, obj: Any, path: Path) -> None:
    try:
        formatter.write(obj, path)
    except ObsbusError:
        raise
    except Exception as exc:
        if is_full(exc):
            raise  # the disk, not the formatter: the caller says so
        raise FormatterError(
            f"{type(formatter).__name__} could not write {type(obj).__name__}: {exc}"
        ) from exc


def _transfer_failure(transfer: str, source: Path, dest: Path, exc: OSError) -> str:
    if exc.errno == errno.EXDEV:
        return (
            f"cannot {transfer} {source} into {dest.parent}: different filesystems; "
            "use transfer 'copy' or 'symlink'"
        )
    return f"{transfer} of {source} to {dest} failed: {exc.strerror or exc}"
