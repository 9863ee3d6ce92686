"""The ingest service's handler: raw arrivals in, registry commands (or failures) out.

For each arrival: read and translate the header, pick the formatter per data ID, put the
file into the datastore, and send one IngestRaw registry command. A file that cannot be
ingested becomes a failed IngestOutcome at once. The registry service, the only writer of the
registry, answers each command with the file's final outcome.

A full datastore is an outage, not a bad file. A file that meets it is told once (a failed
outcome, ``datastore_full``) and its arrival is sent again to the arrivals topic (same id, so
it becomes the same command); when only files already told about meet it, the handler raises
DatastoreFullError, an OutageError, and the service loop reads the batch again later. So the
dashboards see the outage at once, and every file is ingested once space is back.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..bus.declaration import Declaration
from ..bus.runner import Incoming, Outgoing
from ..bus.topics import INGEST_OUTCOMES, RAW_ARRIVALS, REGISTRY_COMMANDS, exposure_key
from ..butler import Butler
from ..core.errors import DatastoreFullError, ObsbusError
from ..datastore.transaction import DatastoreTransaction
from ..ingest.headers import HeaderTranslator, configure_offline_translation
from ..ingest.raws import PreparedFile, prepare, raw_refs, to_command, transfer_file
from ..messages import IngestOutcome, RawArrival, RegistryCommand

log = structlog.get_logger(__name__)

SERVICE = Declaration(
    "ingest",
    reads=(RAW_ARRIVALS,),
    # Arrivals again: a file that met a full datastore is read again later.
    writes=(REGISTRY_COMMANDS, INGEST_OUTCOMES, RAW_ARRIVALS),
    group="obsbus-ingest",
    # Small batches: each file's command leaves as soon as its few neighbours are done
    # (a 500-file batch would hold an exposure's first file until the last is ingested).
    max_records=16,
    doc="raw arrivals in: header, data ID, formatter, datastore; a registry command out",
)

WHEN_SPACE_IS_BACK = (
    "then nothing else: the file stays in the landing folder and is ingested by itself once "
    "there is space (the arrivals behind it wait until then)"
)

_COMMAND_IDS = uuid.UUID("6f1c7c3e-2f0b-5d9a-9a51-0b5e2d1c4a77")  # uuid5 namespace


def command_id(arrival: RawArrival) -> str:
    """The registry command id of the IngestRaw answering ``arrival``."""
    return str(uuid.uuid5(_COMMAND_IDS, arrival.arrival_id))


@dataclass(frozen=True)
class _Handled:
    """One arrival, handled: its output, or the full-disk error that stopped its transfer."""

    arrival: RawArrival
    output: Outgoing | None = None
    full: DatastoreFullError | None = None
    prepared: PreparedFile | None = None

    def made_full(self, err: DatastoreFullError) -> _Handled:
        """As if its copy had met ``err`` (a batch not made durable has none in place)."""
        if self.output is None or self.output.topic != REGISTRY_COMMANDS.name:
            return self
        return dataclasses.replace(self, output=None, full=err.then_do(WHEN_SPACE_IS_BACK))


class _NotDurableError(Exception):
    def __init__(self, handled: list[_Handled], error: DatastoreFullError) -> None:
        super().__init__(str(error))
        self.handled, self.error = handled, error


class IngestHandler:
    def __init__(self, butler: Butler, *, transfer: str = "copy", name: str = "ingest") -> None:
        configure_offline_translation()
        self.butler = butler
        self.transfer = transfer
        self.name = name
        self.translator = HeaderTranslator()
        self._told_full: set[str] = set()  # arrival ids told "datastore_full", not yet landed

    def __call__(self, batch: Sequence[Incoming]) -> list[Outgoing]:
        try:
            # The batch's copies are made durable together, before any command is sent.
            with self.butler.datastore.transaction(batch_sync=True) as files:
                handled = [self._handle(_arrival(item), files) for item in batch]
                self._wait_unless_news(handled)  # raising undoes the batch's files
                try:
                    files.make_durable()
                except DatastoreFullError as err:
                    raise _NotDurableError(handled, err) from err
        except _NotDurableError as lost:
            handled = [h.made_full(lost.error) for h in lost.handled]
            self._wait_unless_news(handled)
        return [out for h in handled for out in self._outputs(h)]

    def handle(self, arrival: RawArrival, files: DatastoreTransaction) -> Outgoing:
        """One arrival's message on its own: its command, or its failed outcome."""
        handled = self._handle(arrival, files)
        return handled.output if handled.output is not None else self._full_outcome(handled)

    def _handle(self, arrival: RawArrival, files: DatastoreTransaction) -> _Handled:
        path = Path(arrival.path)
        prepared = None
        try:
            prepared = prepare(path, self.translator)
            run = prepared.instrument.raw_run()
            refs = raw_refs(self.butler.registry, prepared, run)
            stored = transfer_file(files, prepared, refs, self.transfer)
        except DatastoreFullError as err:
            return _Handled(arrival, full=err.then_do(WHEN_SPACE_IS_BACK), prepared=prepared)
        except Exception as err:  # every file gets an outcome, whatever went wrong
            code = err.code if isinstance(err, ObsbusError) else "unexpected"
            failed = IngestOutcome(
                str(path),
                "failed",
                code,
                f"{path}: {err}" if not isinstance(err, ObsbusError) else str(err),
            )
            return _Handled(
                arrival,
                Outgoing(INGEST_OUTCOMES.name, arrival.folder, failed.answering(arrival)),
            )
        command = dataclasses.replace(
            to_command(prepared, run, refs, stored),
            arrival_id=arrival.arrival_id,
            detected_at_ns=arrival.detected_at_ns,
        )
        return _Handled(
            arrival,
            Outgoing(
                REGISTRY_COMMANDS.name,
                exposure_key(prepared.instrument.name, prepared.exposure["id"]),
                # One command id per arrival: an arrival handled again after a crash sends the
                # same command, which the registry answers again instead of applying twice.
                RegistryCommand.new(command, self.name, command_id(arrival)),
            ),
            prepared=prepared,
        )

    def _wait_unless_news(self, handled: list[_Handled]) -> None:
        """Raise the outage when every file that met a full disk was told about already:
        nothing new to say, so the batch is read again later instead of sent round again."""
        full = [(h.arrival.arrival_id, h.full) for h in handled if h.full is not None]
        if full and all(arrival_id in self._told_full for arrival_id, _ in full):
            raise full[0][1]

    def _outputs(self, handled: _Handled) -> list[Outgoing]:
        arrival_id = handled.arrival.arrival_id
        if handled.full is None:
            if arrival_id in self._told_full:
                self._told_full.discard(arrival_id)
                if not self._told_full:
                    log.info("datastore has space again: ingest goes on")
            return [] if handled.output is None else [handled.output]
        out = [] if arrival_id in self._told_full else [self._full_outcome(handled)]
        if not self._told_full:
            log.warning("datastore full: ingest waits for space", error=str(handled.full))
        self._told_full.add(arrival_id)
        # The arrival again, keyed like the watcher's (same partition): it is read again
        # after the arrivals already waiting there.
        out.append(Outgoing(RAW_ARRIVALS.name, handled.arrival.path, handled.arrival))
        return out

    @staticmethod
    def _full_outcome(handled: _Handled) -> Outgoing:
        """The one failed outcome a file gets for a full disk, keyed like its later answer
        (the registry's, by exposure) so that they stay in order."""
        prepared, full = handled.prepared, handled.full
        assert prepared is not None and full is not None  # a transfer follows a prepare
        outcome = IngestOutcome(
            handled.arrival.path,
            "failed",
            full.code,
            str(full),
            instrument=prepared.instrument.name,
            exposure=prepared.exposure["id"],
        )
        return Outgoing(
            INGEST_OUTCOMES.name,
            exposure_key(prepared.instrument.name, prepared.exposure["id"]),
            outcome.answering(handled.arrival),
        )


def _arrival(item: Incoming) -> RawArrival:
    assert isinstance(item.message, RawArrival)  # the arrivals topic holds nothing else
    return item.message
