"""Registry commands: the changes the registry applies, as plain data.

The registry service receives these from Kafka (the only way anything is written there);
``obsbus ingest-raws`` builds the same commands and applies them in-process. Applying a
command is idempotent: a replay or a retry of one already applied changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.errors import FileConflictError, InstrumentNotRegisteredError
from ..core.timespan import Timespan
from ..datastore.stored import StoredFile
from .changes import ChangeSet
from .datasets import DatasetRef, DatasetType
from .known import KnownInstallations, KnownRecords
from .registry import Registry
from .suites import CertifySuite

Record = dict[str, Any]


@dataclass(frozen=True)
class Installation:
    """A device (by serial) seen in a detector slot from a moment on."""

    instrument: str
    detector: int
    serial: str
    since_ns: int


@dataclass(frozen=True)
class IngestRaw:
    """One raw file: its exposure's records, its datasets and where the datastore put it."""

    run: str
    file: str  # the source path, for outcomes
    records: tuple[tuple[str, Record], ...]  # (element, record), in dependency order
    installations: tuple[Installation, ...]
    datasets: tuple[DatasetRef, ...]
    stored: tuple[StoredFile, ...]  # one per dataset, same order
    arrival_id: str | None = None  # the RawArrival it answers, if it came from the watcher
    detected_at_ns: int | None = None

    @property
    def instrument(self) -> str:
        return str(self.datasets[0].data_id["instrument"])


@dataclass(frozen=True)
class Certify:
    collection: str
    dataset_ids: tuple[str, ...]
    timespan: Timespan
    request_id: str | None = None  # the blessing request it carries out, if any


@dataclass(frozen=True)
class Decertify:
    collection: str
    dataset_type: str
    timespan: Timespan
    data_ids: tuple[Mapping[str, Any], ...] | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class SetChain:
    parent: str
    children: tuple[str, ...]


Command = IngestRaw | Certify | CertifySuite | Decertify | SetChain | ChangeSet


@dataclass
class IngestResult:
    """What applying one IngestRaw did."""

    status: Literal["ingested", "already-present"]
    records_inserted: int = 0
    swaps: list[dict[str, Any]] = field(default_factory=list)


class IngestApplier:
    """Applies IngestRaw commands; remembers which records the database holds.

    An exposure's 205 files each carry the same exposure records: syncing them once instead
    of once per file is most of the registry's speed. What it remembers (records, data ID
    values and who sat in which slot; see known.py) is dropped by ``forget`` (a rollback),
    ``forget_records`` and ``new_batch``; the registry service keeps it from one batch to
    the next while no one else writes (see RegistryHandler).
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.known = KnownRecords(registry.records)
        self.installed = KnownInstallations(registry.installations)
        self._instruments: set[str] = set()
        self._dataset_types: set[DatasetType] = set()
        registry.db.on_rollback(self.forget)

    def forget(self) -> None:
        """Call when a (sub)transaction this applier worked in was rolled back.

        The registry's own caches (dataset type ids, collections) are dropped too: what they
        learnt inside the rolled-back savepoint is not in the database.
        """
        self.registry.datasets.forget()
        self.registry.collections.forget()
        # What this applier learnt inside a failed transaction may not be in the database.
        self._instruments.clear()
        self._dataset_types.clear()
        self.forget_records()

    def new_batch(self) -> None:
        """Call at the start of each transaction unless this process knows no one else wrote
        since its last (the registry service: the write generation): another writer may have
        changed records in between."""
        self.forget_records()

    def forget_records(self) -> None:
        """Call after anything but this applier may have changed records (e.g. a command that
        is not a raw ingest): a record remembered as it was must be compared again."""
        self.known.clear()
        self.installed.clear()

    def apply(self, cmd: IngestRaw) -> IngestResult:
        return self.apply_many([cmd])[0]

    def apply_many(self, cmds: Sequence[IngestRaw]) -> list[IngestResult]:
        """Apply several IngestRaw commands together (in the caller's transaction).

        An exposure's files share their records, and their datasets go in with one insert:
        per-file costs stay small. Raises on the first rejected command; callers that need
        to isolate it apply the commands one by one.
        """
        registry, known = self.registry, self.known
        results = [IngestResult("ingested") for _ in cmds]
        for cmd, result in zip(cmds, results, strict=True):
            self._check_registered(cmd.instrument)
            for ref in cmd.datasets:
                if ref.dataset_type not in self._dataset_types:  # e.g. "raw", on first use
                    registry.register_dataset_type(ref.dataset_type)
                    self._dataset_types.add(ref.dataset_type)
            for element, record in cmd.records:
                key = known.key(element, record)
                if known.holds(key, record):
                    continue  # in the database as given: syncing it again changes nothing
                inserted = registry.sync_dimension_record(element, record) == "inserted"
                result.records_inserted += inserted
                known.remember(key, record)
        self._record_installations(cmds, results)
        refs = [ref for cmd in cmds for ref in cmd.datasets]
        outcomes = registry.insert_datasets(refs, known)
        stored: list[StoredFile] = []
        for cmd, result in zip(cmds, results, strict=True):
            mine, outcomes = outcomes[: len(cmd.datasets)], outcomes[len(cmd.datasets) :]
            if "inserted" not in mine:
                self._check_same_file(cmd)
                result.status, result.swaps = "already-present", []
                continue
            stored.extend(s for s, o in zip(cmd.stored, mine, strict=True) if o == "inserted")
        # Only files of datasets inserted just now: none can have its file record yet.
        registry.store_files(stored, datasets_new=True)
        return results

    def _check_registered(self, instrument: str) -> None:
        if instrument in self._instruments:
            return
        if self.registry.fetch_dimension_record("instrument", {"name": instrument}) is None:
            raise InstrumentNotRegisteredError(
                f"instrument {instrument} is not registered in this repository; run "
                f"`obsbus register-instrument REPO {instrument}` first"
            )
        self._instruments.add(instrument)
        self.known.remember(("instrument", (instrument,)))

    def _record_installations(
        self, cmds: Sequence[IngestRaw], results: Sequence[IngestResult]
    ) -> None:
        """Record the device each header names in its slot; a new one is a swap to report."""
        registry = self.registry
        by_time: dict[tuple[str, int], list[tuple[Installation, IngestResult]]] = {}
        for cmd, result in zip(cmds, results, strict=True):
            for inst in cmd.installations:
                by_time.setdefault((inst.instrument, inst.since_ns), []).append((inst, result))
        # In time order, whatever order the batch's files came in: a device recorded at a
        # later exposure first would be taken for one seen out of order ("moved" earlier), and
        # a device that comes back to its slot would be lost.
        for (instrument, since), group in sorted(by_time.items(), key=lambda kv: kv[0]):
            installed = self.installed.get(instrument, since)
            if installed is None:  # every slot: the exposure's next batches name the others
                installed = registry.installed_detectors(instrument, None, since)
            for inst, result in group:
                previous = installed.get(inst.detector)
                if previous == inst.serial:
                    continue
                outcome = registry.record_installation(
                    instrument, inst.detector, inst.serial, since
                )
                installed[inst.detector] = inst.serial
                if outcome == "swapped":
                    result.swaps.append(
                        {
                            "detector": inst.detector,
                            "old_serial": previous,
                            "new_serial": inst.serial,
                        }
                    )
            # True now for every slot: the ones just recorded hold their new device then.
            self.installed.remember(instrument, since, installed)

    def _check_same_file(self, cmd: IngestRaw) -> None:
        """A repeat is a no-op only if it is the same file; a different one is a conflict."""
        stored = self.registry.stored_file(cmd.datasets[0].id)
        if stored.checksum != cmd.stored[0].checksum:
            raise FileConflictError(
                f"{cmd.file}: {cmd.run} already holds a different raw for "
                f"{cmd.datasets[0].data_id} ({stored.path})"
            )
