"""Dimension records known to be in the database, remembered from one batch to the next.

The registry service gets an exposure's 205 raw files as many small batches (ingest sends
one command per file and flushes every 16 files), one transaction each, and every file
carries the same exposure, day_obs, group and visit records and names the same instrument
and detectors (and the device in each slot). Fetching and comparing them again in every
batch was a large share of the service's time; remembering what is known to be there lets
a later batch skip it.

A memory of the database must never make the registry accept what it would refuse. An entry
is true when it is made, and records are never deleted, so it stays true until:

- the transaction or savepoint in which it was learnt rolls back (what it remembers may not
  have been written): the owner clears it then (see ``IngestApplier.forget``);
- a record is changed: ``DimensionRecords.update`` (``InstallationManager.record`` for who
  sat where) counts its calls, and an entry made before one is dropped; the registry service
  also clears it after every command but raw ingest (``IngestApplier.forget_records``).

Kept across transactions, it must also be dropped when another process has written: the
registry service compares the write generation (generation.py) with its own last commit's at
the start of each batch, and again at its end (a commit made while the batch ran).
``obsbus ingest-raws`` simply clears it at each transaction.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

from ..core.errors import UnregisteredDataIdError
from .datasets import DatasetRef
from .installations import InstallationManager
from .records import DimensionRecords, Record

Key = tuple[str, tuple[Any, ...]]  # (element, the values of its key columns)

# Only the exposures being ingested now are asked for again: a few hundred exposures' records
# and every detector of a large camera fit. Bounded so a service running for months does not
# grow (the least recently used entry goes first).
LIMIT = 4096


class KnownRecords:
    """A bounded (least recently used first out) memory of records the database holds.

    An entry is the record exactly as a command carried it when it was synced (syncing an
    equal record again would change nothing), or ``None`` when only the record's existence is
    known (a data ID's value found by the check below).
    """

    def __init__(self, records: DimensionRecords, limit: int = LIMIT) -> None:
        self.records = records
        self.limit = limit
        self._entries: OrderedDict[Key, Record | None] = OrderedDict()
        self._updates = records.updates

    def __len__(self) -> int:
        self._check_updates()
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._updates = self.records.updates

    def key(self, element: str, record: Record) -> Key:
        columns = self.records.universe[element].key_columns
        return element, tuple(record.get(c) for c in columns)  # a missing one: sync says so

    def holds(self, key: Key, record: Record) -> bool:
        """Whether the database holds this record as given (syncing it would be a no-op)."""
        self._check_updates()
        known = self._entries.get(key)
        if known is None or known != record:
            return False
        self._entries.move_to_end(key)
        return True

    def exists(self, key: Key) -> bool:
        self._check_updates()
        if key not in self._entries:
            return False
        self._entries.move_to_end(key)
        return True

    def remember(self, key: Key, record: Record | None = None) -> None:
        """Note that the database holds ``record`` (or, with None, some record) at ``key``."""
        self._check_updates()
        if record is None and self._entries.get(key) is not None:
            self._entries.move_to_end(key)  # keep what is known of its content
            return
        self._entries[key] = record
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def _check_updates(self) -> None:
        # A record updated in this process since (e.g. a correction with a reason): what was
        # remembered of it may be wrong now, and a command carrying the old content must be
        # refused as a conflict again.
        if self.records.updates != self._updates:
            self.clear()


def check_data_ids_registered(
    records: DimensionRecords,
    conn: Connection,
    refs: Sequence[DatasetRef],
    known: KnownRecords | None = None,
) -> None:
    """Every dimension value of a dataset must have its record (the registry's integrity).

    Values ``known`` to exist are not looked up again (a batch of raws of an exposure whose
    records it just synced, on detectors checked before); the ones found are remembered.
    The error's ``index`` is the position of the first offending ref, so callers can name
    their own input (e.g. the row of an ingest table).
    """
    universe = records.universe
    for dim in universe.closure(d for r in refs for d in r.data_id):
        element = universe[dim]
        assert element.key is not None
        columns = element.key_columns
        keys: dict[int, tuple[Any, ...]] = {}  # values of the key columns, by ref
        for i, r in enumerate(refs):
            if dim in r.data_id:
                keys[i] = (*(r.data_id[d] for d in element.requires), r.data_id[dim])
        unknown = {k for k in keys.values() if known is None or not known.exists((dim, k))}
        if not unknown:
            continue
        found = records.fetch_many(conn, dim, [dict(zip(columns, k, strict=True)) for k in unknown])
        for i, k in keys.items():
            if k in unknown and k not in found:
                key = dict(zip(columns, k, strict=True))
                raise UnregisteredDataIdError(
                    f"data ID value {dim}={key[element.key.name]!r} is not registered "
                    f"(no {dim} record for {key}); register it first",
                    index=i,
                )
        if known is not None:
            for k in found:
                known.remember((dim, k))


class KnownInstallations:
    """Which device sat in every slot of an instrument at the start of the last exposures.

    An exposure's files arrive in several batches, each naming a few of its detectors; the
    first asks for every slot at once, the others find their answer here. Only
    ``InstallationManager.record`` changes who sat where: an entry made before one of its
    calls is dropped (the caller remembers again what it has just recorded).
    """

    def __init__(self, installations: InstallationManager, limit: int = 64) -> None:
        self.installations = installations
        self.limit = limit
        self._slots: OrderedDict[tuple[str, int], dict[int, str]] = OrderedDict()
        self._changes = installations.changes

    def clear(self) -> None:
        self._slots.clear()
        self._changes = self.installations.changes

    def get(self, instrument: str, at_ns: int) -> dict[int, str] | None:
        """Serial of the device in every slot that had one at ``at_ns``, if known (a copy)."""
        self._check_changes()
        slots = self._slots.get((instrument, at_ns))
        if slots is None:
            return None
        self._slots.move_to_end((instrument, at_ns))
        return dict(slots)

    def remember(self, instrument: str, at_ns: int, slots: dict[int, str]) -> None:
        """``slots``: every slot's device at ``at_ns`` (a slot absent had none), now."""
        self._check_changes()
        self._slots[(instrument, at_ns)] = dict(slots)
        self._slots.move_to_end((instrument, at_ns))
        while len(self._slots) > self.limit:
            self._slots.popitem(last=False)

    def _check_changes(self) -> None:
        # A device recorded in a slot since: a stay may have been cut or moved, at any time.
        if self.installations.changes != self._changes:
            self.clear()
