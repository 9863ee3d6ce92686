"""Datastore transactions: file operations undone together if the ``with`` block fails.

``FileDatastore.transaction()`` opens one; ingest (by transfer mode) and put go through it,
each registering how to undo itself, and removals wait for commit. Separate from the
datastore, which places, reads and checks files, because this is the write path: the undo
log, the staged copies of ``batch_sync`` and making them durable.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.core.errors import (
    DatastoreError,
    FileConflictError,
    FormatterError,
    ObsbusError,
    TransferError,
)
from services.datastore.durability import sync_directories, sync_files
from services.datastore.file_ops import (
    copy_hashing,
    fsync_file,
    move_file,
    remove_dirs,
    same_content,
    temp_path,
)
from services.datastore.formatters import Formatter, formatter_import_path, load_formatter
from services.datastore.space import full_error, is_full
from services.datastore.storage_classes import (
    compression_suffix,
    formatter_for_file,
    get_storage_class,
)
from services.datastore.stored import StoredFile, file_checksum

if TYPE_CHECKING:
    # Only for annotations: the datastore imports this module to open transactions.
    from services.datastore.datastore import DataId, FileDatastore

__all__ = ["TRANSFER_MODES", "DatastoreTransaction"]

log = logging.getLogger(__name__)

TRANSFER_MODES = ("copy", "move", "hardlink", "symlink", "direct")


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
            return stored(relative, *same_content(source, dest))
        made = ds._make_dirs(dest.parent)
        self._track_dirs(made)
        try:
            size, checksum = self._transfer(source, dest, transfer)
        except OSError as exc:
            # The transfer removed its partial file; its empty folders go too, now: the
            # caller may go on and commit the other files of the transaction.
            remove_dirs(made)
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
        tmp = temp_path(dest)
        try:
            _write(cls(), obj, tmp)
            fsync_file(tmp)
            size, checksum = file_checksum(tmp)
            if os.path.lexists(dest):
                same_content(tmp, dest)  # identical re-put is fine; else this raises
            else:
                os.replace(tmp, dest)
                self._undo.append((f"delete {dest}", lambda: dest.unlink(missing_ok=True)))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            remove_dirs(made)
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
            tmp = temp_path(dest)
            try:
                result = copy_hashing(source, tmp, sync=False)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._undo.append((f"delete {tmp}", lambda: tmp.unlink(missing_ok=True)))
            self._undo.append((f"delete {dest}", lambda: dest.unlink(missing_ok=True)))
            self._staged[dest] = (tmp, result)
            return result
        if transfer == "copy":
            tmp = temp_path(dest)
            try:
                result = copy_hashing(source, tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            self._undo.append((f"delete {dest}", lambda: dest.unlink(missing_ok=True)))
            return result
        if transfer == "move":
            move_file(source, dest)
            self._undo.append((f"move {dest} back to {source}", lambda: move_file(dest, source)))
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
                (f"remove directories under {created[-1]}", lambda: remove_dirs(created))
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


def _same_as_staged(source: Path, dest: Path, staged: tuple[int, str]) -> tuple[int, str]:
    if file_checksum(source) == staged:
        return staged
    raise FileConflictError(
        f"{dest} is being written with different content in this transaction; "
        "two different files cannot be the same dataset"
    )


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
