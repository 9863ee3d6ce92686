"""The ingest service's handler: raw arrivals in, registry commands (or failures) out.

For each arrival: read and translate the header, pick the formatter per data ID, put the
file into the datastore, and send one IngestRaw registry command. A file that cannot be
ingested becomes a failed IngestOutcome at once. The registry service, the only writer of the
registry, answers each command with the file's final outcome.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..bus.messages import registry_command
from ..bus.runner import Incoming, Outgoing
from ..bus.topics import INGEST_OUTCOMES, REGISTRY_COMMANDS
from ..butler import Butler
from ..core.errors import ObsbusError
from ..core.timespan import now_ns
from ..datastore.datastore import DatastoreTransaction
from .headers import HeaderTranslator, configure_offline_translation
from .raws import IngestOutcome, prepare, raw_refs, to_command, transfer_file

_COMMAND_IDS = uuid.UUID("6f1c7c3e-2f0b-5d9a-9a51-0b5e2d1c4a77")  # uuid5 namespace


def command_id(arrival: dict[str, Any]) -> str:
    """The registry command id of the IngestRaw answering ``arrival``."""
    return str(uuid.uuid5(_COMMAND_IDS, arrival["arrival_id"]))


def exposure_key(instrument: str, exposure: int) -> str:
    """Message key of everything about one exposure (one partition, in order)."""
    return f"{instrument}/{exposure}"


def outcome_value(outcome: IngestOutcome, arrival: dict[str, Any] | None = None) -> dict[str, Any]:
    """An IngestOutcome message value."""
    return {
        **outcome.to_json(),
        "arrival_id": None if arrival is None else arrival["arrival_id"],
        "detected_at_ns": None if arrival is None else arrival["detected_at_ns"],
        "finished_at_ns": now_ns(),
    }


class IngestHandler:
    def __init__(self, butler: Butler, *, transfer: str = "copy", name: str = "ingest") -> None:
        configure_offline_translation()
        self.butler = butler
        self.transfer = transfer
        self.name = name
        self.translator = HeaderTranslator()

    def __call__(self, batch: Sequence[Incoming]) -> list[Outgoing]:
        # The batch's copies are made durable together, before any command is sent.
        with self.butler.datastore.transaction(batch_sync=True) as files:
            return [self.handle(item.value, files) for item in batch]

    def handle(self, arrival: dict[str, Any], files: DatastoreTransaction) -> Outgoing:
        path = Path(arrival["path"])
        try:
            prepared = prepare(path, self.translator)
            run = prepared.instrument.raw_run()
            refs = raw_refs(self.butler.registry, prepared, run)
            stored = transfer_file(files, prepared, refs, self.transfer)
        except Exception as err:  # every file gets an outcome, whatever went wrong
            code = err.code if isinstance(err, ObsbusError) else "unexpected"
            failed = IngestOutcome(
                str(path),
                "failed",
                code,
                f"{path}: {err}" if not isinstance(err, ObsbusError) else str(err),
            )
            return Outgoing(
                INGEST_OUTCOMES.name,
                arrival["folder"],
                INGEST_OUTCOMES.record,
                outcome_value(failed, arrival),
            )
        command = to_command(prepared, run, refs, stored)
        return Outgoing(
            REGISTRY_COMMANDS.name,
            exposure_key(prepared.instrument.name, prepared.exposure["id"]),
            REGISTRY_COMMANDS.record,
            # One command id per arrival: an arrival handled again after a crash sends the
            # same command, which the registry answers again instead of applying twice.
            registry_command(command, self.name, arrival=arrival, command_id=command_id(arrival)),
        )
