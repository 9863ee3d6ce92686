"""A change set: registry changes that land together or not at all.

What a user's write is (``ingest-files``, ``register-dataset-type``, a curated write) said as
data: dataset types to define, collections to create, datasets with their stored files,
certifications and chain changes. The command line and the library build one and either apply
it here, in one transaction, or — when a registry service serves the repository, as the only
writer — send it as a registry command; the service applies it with this same function, and a
replay of the command topic applies it again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from ..core.errors import CollectionExistsError, DatastoreError, UnregisteredDataIdError
from ..core.timespan import Timespan
from ..datastore.stored import StoredFile
from .collections import CollectionType
from .datasets import DatasetRef, DatasetType
from .registry import Registry

ChainMode = Literal["redefine", "extend", "prepend", "remove"]


@dataclass(frozen=True)
class NewCollection:
    name: str
    type: CollectionType
    doc: str | None = None
    must_be_new: bool = False  # refuse the whole change set if it exists (a new run, a label)


@dataclass(frozen=True)
class Certification:
    collection: str
    dataset_ids: tuple[str, ...]
    timespan: Timespan


@dataclass(frozen=True)
class ChainChange:
    parent: str
    children: tuple[str, ...]
    mode: ChainMode = "redefine"


@dataclass(frozen=True)
class ChangeSet:
    what: str  # one line for events and logs, e.g. "ingest-files bias into SimCam/calib/masters"
    dataset_types: tuple[DatasetType, ...] = ()
    collections: tuple[NewCollection, ...] = ()
    datasets: tuple[DatasetRef, ...] = ()
    stored: tuple[StoredFile, ...] = ()  # one per dataset that has a file, any order
    certifications: tuple[Certification, ...] = ()
    chains: tuple[ChainChange, ...] = ()


def apply_change_set(registry: Registry, changes: ChangeSet) -> int:
    """Apply every change in one transaction; returns how many rows it added or changed.

    Applying it again changes nothing (every step is idempotent), which is what a redelivered
    or replayed command needs; ``must_be_new`` collections are the exception by design, and
    the registry service never applies one command twice.
    """
    count = 0
    with registry.transaction():
        for dataset_type in changes.dataset_types:
            count += registry.register_dataset_type(dataset_type)
        existing = {c.name: c.type for c in registry.query_collections()}
        for new in changes.collections:
            if new.must_be_new and new.name in existing:
                raise CollectionExistsError(
                    f"collection {new.name!r} already exists ({existing[new.name].value}); "
                    "this write makes a new one and never adds to an existing one: choose "
                    "another name"
                )
            count += registry.register_collection(new.name, new.type, new.doc)
        by_type: dict[str, list[int]] = {}
        for i, ref in enumerate(changes.datasets):  # the bulk insert takes one shape at a time
            by_type.setdefault(ref.dataset_type.name, []).append(i)
        inserted = set()
        for positions in by_type.values():
            group = [changes.datasets[i] for i in positions]
            try:
                outcomes = registry.insert_datasets(group)
            except UnregisteredDataIdError as err:
                if err.index is None:
                    raise
                # Say which dataset of the change set it was, not which of its type.
                raise UnregisteredDataIdError(str(err), positions[err.index]) from err
            inserted |= {r.id for r, o in zip(group, outcomes, strict=True) if o == "inserted"}
        count += len(inserted)
        check_files(changes)
        # A dataset already there keeps its file record (a repeat of the same change).
        registry.store_files([s for s in changes.stored if s.dataset_id in inserted])
        added = {str(ref.id): ref for ref in changes.datasets}
        for cert in changes.certifications:
            wanted = [added.get(i) or registry.get_dataset(uuid.UUID(i)) for i in cert.dataset_ids]
            count += registry.certify(cert.collection, wanted, cert.timespan)
        for chain in changes.chains:
            registry.set_chain(chain.parent, list(chain.children), chain.mode)
            count += 1
    return count


def check_files(changes: ChangeSet) -> None:
    """Every dataset added comes with exactly one file, and every file with its dataset."""
    ids = sorted(str(ref.id) for ref in changes.datasets)
    files = sorted(str(s.dataset_id) for s in changes.stored)
    if ids != files:
        odd = sorted(set(ids) ^ set(files)) or ["a dataset with two files"]
        raise DatastoreError(
            f"a change set must give each dataset it adds one file: {', '.join(odd[:3])}"
        )
