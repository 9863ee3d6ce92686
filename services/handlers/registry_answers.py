"""What the registry service answers for each command, from what applying it did.

Applying a command (registry.py) gives an ``Applied`` (rows changed), an ``IngestResult``
(raw ingest) or a ``Rejected`` (the reason); this module turns that into the messages of
three topics: the RegistryEvent every command gets, the IngestOutcome of a raw file, the
CalibrationOutcome of a blessing request.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bus.runner import Incoming, Outgoing
from ..bus.topics import CALIB_OUTCOMES, INGEST_OUTCOMES, REGISTRY_EVENTS, exposure_key
from ..core.errors import ObsbusError
from ..core.timespan import now_ns
from ..messages import (
    CalibrationOutcome,
    DetectorSwap,
    IngestOutcome,
    RawArrival,
    RegistryCommand,
    RegistryEvent,
)
from ..registry.command_types import blessing_of, type_of
from ..registry.commands import Command, IngestRaw, IngestResult


@dataclass(frozen=True)
class Applied:
    changed: int  # rows (for a suite: validity ranges)


@dataclass(frozen=True)
class Rejected:
    error: ObsbusError


Result = Applied | IngestResult | Rejected


def answers(item: Incoming, command: RegistryCommand, result: Result) -> list[Outgoing]:
    key = None if item.delivery.key is None else item.delivery.key.decode()
    cmd = command.body
    if isinstance(result, Rejected):
        return _rejected(command, key, result.error)
    if isinstance(result, IngestResult):
        assert isinstance(cmd, IngestRaw)
        return _ingested(command, cmd, key, result)
    command_type = type_of(cmd)
    message = command_type.summarize(cmd, result.changed)
    ids = command_type.dataset_ids(cmd)
    out = [_event(command.command_id, key, command_type.answer, message, dataset_ids=ids)]
    blessing = blessing_of(cmd)
    if blessing is not None:
        out.append(
            _calib_outcome(
                *blessing,
                "blessed",
                None,
                f"{result.changed} validity range(s) certified",
                result.changed,
            )
        )
    return out


def _ingested(
    command: RegistryCommand, cmd: IngestRaw, key: str | None, result: IngestResult
) -> list[Outgoing]:
    exposure = int(cmd.datasets[0].data_id["exposure"])
    swaps = tuple(DetectorSwap(**s) for s in result.swaps)
    outcome = IngestOutcome(
        cmd.file,
        result.status,
        instrument=cmd.instrument,
        exposure=exposure,
        detectors=tuple(int(r.data_id["detector"]) for r in cmd.datasets),
        dataset_ids=tuple(str(r.id) for r in cmd.datasets),
        swaps=swaps,
    )
    kind = "datasets-registered" if result.status == "ingested" else "already-present"
    event = _event(
        command.command_id,
        key or exposure_key(cmd.instrument, exposure),
        kind,
        f"{len(cmd.datasets)} dataset(s) in {cmd.run}",
        dataset_ids=outcome.dataset_ids,
        file=cmd.file,
        records_inserted=result.records_inserted,
    )
    return [
        event,
        *_swapped(command.command_id, event.key, cmd, exposure, swaps),
        Outgoing(INGEST_OUTCOMES.name, key, outcome.answering(_arrival(cmd))),
    ]


def _swapped(
    command_id: str,
    key: str | None,
    cmd: IngestRaw,
    exposure: int,
    swaps: tuple[DetectorSwap, ...],
) -> list[Outgoing]:
    """One "detector-swapped" event per new device in a slot, for whoever watches swaps.

    A swap is found only when its installation is first recorded, so a repeated raw, a
    later exposure with the same device or a restarted service finds none; a replay
    publishes nothing. Like every answer the event is kept in the inbox: a command
    redelivered after a crash between commit and offset commit sends it again unchanged
    (same command_id, detector and since_ns), which is how a watcher recognises it.
    """
    since = {i.detector: i.since_ns for i in cmd.installations}
    return [
        Outgoing(
            REGISTRY_EVENTS.name,
            key,
            RegistryEvent(
                command_id=command_id,
                kind="detector-swapped",
                message=f"{cmd.instrument} detector {swap.detector}: {swap.old_serial} "
                f"replaced by {swap.new_serial} from exposure {exposure}",
                at_ns=now_ns(),
                file=cmd.file,
                instrument=cmd.instrument,
                detector=swap.detector,
                old_serial=swap.old_serial,
                new_serial=swap.new_serial,
                exposure=exposure,
                since_ns=since[swap.detector],
            ),
        )
        for swap in swaps
    ]


def _rejected(command: RegistryCommand, key: str | None, err: ObsbusError) -> list[Outgoing]:
    cmd: Command = command.body
    file = cmd.file if isinstance(cmd, IngestRaw) else None
    out = [
        _event(command.command_id, key, "command-rejected", str(err), reason=err.code, file=file)
    ]
    if isinstance(cmd, IngestRaw):
        outcome = IngestOutcome(cmd.file, "failed", err.code, str(err))
        out.append(Outgoing(INGEST_OUTCOMES.name, key, outcome.answering(_arrival(cmd))))
    blessing = blessing_of(cmd)
    if blessing is not None:
        out.append(_calib_outcome(*blessing, "rejected", err.code, str(err), 0))
    return out


def _event(
    command_id: str,
    key: str | None,
    kind: str,
    message: str,
    *,
    reason: str | None = None,
    dataset_ids: tuple[str, ...] = (),
    records_inserted: int = 0,
    file: str | None = None,
) -> Outgoing:
    return Outgoing(
        REGISTRY_EVENTS.name,
        key,
        RegistryEvent(
            command_id=command_id,
            kind=kind,
            reason=reason,
            message=message,
            dataset_ids=dataset_ids,
            records_inserted=records_inserted,
            at_ns=now_ns(),
            file=file,
        ),
    )


def _calib_outcome(
    request_id: str,
    collection: str,
    status: str,
    reason: str | None,
    message: str,
    certified: int,
) -> Outgoing:
    return Outgoing(
        CALIB_OUTCOMES.name,
        collection,
        CalibrationOutcome(
            request_id=request_id,
            collection=collection,
            status="blessed" if status == "blessed" else "rejected",
            reason=reason,
            message=message,
            certified=certified,
            at_ns=now_ns(),
        ),
    )


def _arrival(cmd: IngestRaw) -> RawArrival | None:
    """The part of the RawArrival an IngestRaw answers that its outcome repeats."""
    if cmd.arrival_id is None:
        return None
    return RawArrival(cmd.arrival_id, "", "", 0, 0, cmd.detected_at_ns or 0, "")
