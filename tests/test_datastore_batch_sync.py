"""Copies made durable together (``transaction(batch_sync=True)``): in place only once synced."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from services.core.errors import FileConflictError
from services.datastore import FileDatastore, durability, file_checksum
from services.datastore.stored import StoredFile
from services.datastore.transaction import DatastoreTransaction


def sources(tmp_path: Path, n: int) -> list[Path]:
    folder = tmp_path / "incoming"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"file{i}.yaml"
        path.write_text(f"value: {i}\n")
        paths.append(path)
    return paths


def copy(txn: DatastoreTransaction, source: Path, detector: int) -> StoredFile:
    args: dict[str, Any] = {
        "dataset_id": uuid.uuid4(),
        "dataset_type": "thing",
        "run": "run",
        "data_id": {"instrument": "X", "detector": detector},
        "storage_class": "StructuredDataDict",
    }
    return txn.ingest(source, transfer="copy", **args)


def visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".tmp-*"))


def test_copies_appear_when_made_durable(tmp_path: Path) -> None:
    ds = FileDatastore(tmp_path / "repo")
    files = sources(tmp_path, 3)
    with ds.transaction(batch_sync=True) as txn:
        stored = [copy(txn, f, i) for i, f in enumerate(files)]
        assert visible(ds.root) == [] and len(hidden(ds.root)) == 3
        txn.make_durable()
        assert len(visible(ds.root)) == 3 and hidden(ds.root) == []
    for s, f in zip(stored, files, strict=True):
        assert ds.local_path(s).read_text() == f.read_text()
        assert (s.file_size, s.checksum) == file_checksum(ds.local_path(s))


def test_the_end_of_the_block_makes_them_durable(tmp_path: Path) -> None:
    ds = FileDatastore(tmp_path / "repo")
    with ds.transaction(batch_sync=True) as txn:
        stored = copy(txn, sources(tmp_path, 1)[0], 0)
    assert ds.local_path(stored).read_text() == "value: 0\n"
    assert hidden(ds.root) == []


@pytest.mark.parametrize("synced", [False, True])
def test_rollback_leaves_nothing(tmp_path: Path, synced: bool) -> None:
    ds = FileDatastore(tmp_path / "repo")
    with pytest.raises(RuntimeError), ds.transaction(batch_sync=True) as txn:
        for i, f in enumerate(sources(tmp_path, 2)):
            copy(txn, f, i)
        if synced:
            txn.make_durable()
        raise RuntimeError("the registry refused")
    assert list(ds.root.rglob("*")) == []


def test_same_destination_twice(tmp_path: Path) -> None:
    ds = FileDatastore(tmp_path / "repo")
    first, second = sources(tmp_path, 2)
    twin = tmp_path / "twin.yaml"
    twin.write_bytes(first.read_bytes())
    with ds.transaction(batch_sync=True) as txn:
        a = copy(txn, first, 0)
        assert copy(txn, twin, 0).checksum == a.checksum  # identical content: the same file
        with pytest.raises(FileConflictError, match="different content in this transaction"):
            copy(txn, second, 0)
    assert len(visible(ds.root)) == 1


def test_without_syncfs_each_file_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = durability._fsync

    def spy(path: Path, flags: int) -> None:
        synced.append(path)
        real(path, flags)

    monkeypatch.setattr(durability, "_syncfs", lambda: None)
    monkeypatch.setattr(durability, "_fsync", spy)
    ds = FileDatastore(tmp_path / "repo")
    with ds.transaction(batch_sync=True) as txn:
        for i, f in enumerate(sources(tmp_path, 3)):
            copy(txn, f, i)
    assert len([p for p in synced if p.name.startswith(".tmp-")]) == 3  # the data
    assert len([p for p in synced if p.is_dir()]) == 1  # the folder holding the renames
    assert len(visible(ds.root)) == 3
