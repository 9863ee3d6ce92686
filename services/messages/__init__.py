"""Every message obsbus sends, as one frozen, typed class per record of ``schemas/``.

- ``codec``: the Avro single-object encoding, with the ``schemas`` package as its registry.
- ``record``: the base class (``to_value``/``from_value``, ``encode``/``decode``).
- ``events``: RawArrival, IngestOutcome, RegistryEvent, CalibrationOutcome, DeadLetter.
- ``blessing``: BlessingRequest.
- ``commands``: RegistryCommand (its body types: services/registry/command_types.py).

``RECORDS`` below is the table of record classes by record name: ``decode`` of any message
gives an instance of its class. A new event type is a schema file, a class and a line here
(README, "Adding an event type").
"""

from __future__ import annotations

from . import codec
from .blessing import BlessingRequest, CalibrationItem, ValidityChange
from .codec import Message
from .commands import RegistryCommand
from .events import (
    CalibrationOutcome,
    DeadLetter,
    DetectorSwap,
    IngestOutcome,
    RawArrival,
    RegistryEvent,
)
from .record import Record

RECORDS: dict[str, type[Record]] = {
    cls.RECORD: cls
    for cls in (
        RawArrival,
        IngestOutcome,
        RegistryCommand,
        RegistryEvent,
        BlessingRequest,
        CalibrationOutcome,
        DeadLetter,
    )
}


def from_message(message: Message) -> Record:
    """The typed record a decoded message holds."""
    return RECORDS[message.record_name].from_message(message)


def decode(data: bytes) -> Record:
    """Any obsbus message as its typed record; raises UndecodableMessageError otherwise."""
    return from_message(codec.decode(data))


__all__ = [
    "RECORDS",
    "BlessingRequest",
    "CalibrationItem",
    "CalibrationOutcome",
    "DeadLetter",
    "DetectorSwap",
    "IngestOutcome",
    "RawArrival",
    "Record",
    "RegistryCommand",
    "RegistryEvent",
    "ValidityChange",
    "decode",
    "from_message",
]
