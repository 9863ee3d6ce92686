"""Every Kafka topic obsbus uses, in one table: name, record type, key, partitions, retention.

Names are ``obsbus.<domain>.<event>``. Keys are chosen for ordering: all messages about one
exposure share a key, so they land on one partition and stay in order. Event and command
topics keep everything (retention -1): they are the source for replaying the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

KEEP_FOREVER = -1


@dataclass(frozen=True)
class Topic:
    name: str
    record: str  # Avro record name of every value (schemas/<record>.v<N>.avsc)
    key: str  # what the message key is, for people reading the docs
    partitions: int
    retention_ms: int = KEEP_FOREVER
    doc: str = ""


RAW_ARRIVALS = Topic(
    "obsbus.raw.arrivals",
    "RawArrival",
    "path of the file (an exposure's files spread over the ingest workers)",
    6,
    doc="A complete raw file appeared in a watched landing folder.",
)
INGEST_OUTCOMES = Topic(
    "obsbus.ingest.outcomes",
    "IngestOutcome",
    "instrument/exposure (or the landing folder if the file could not be read)",
    6,
    doc="What happened to each raw file: ingested, already-present or failed with a reason.",
)


def exposure_key(instrument: str, exposure: int) -> str:
    """Message key of everything about one exposure (one partition, in order)."""
    return f"{instrument}/{exposure}"


# The key of every registry command but raw ingest (certifications, chains, change sets): one
# partition keeps them in the order they were sent, which decides e.g. a chain's order.
WRITES_KEY = "obsbus/writes"

REGISTRY_COMMANDS = Topic(
    "obsbus.registry.commands",
    "RegistryCommand",
    f"instrument/exposure for raw ingest; {WRITES_KEY!r} for every other command (in order)",
    6,
    doc="Changes for the registry service (its only input); replaying it rebuilds a registry.",
)
REGISTRY_EVENTS = Topic(
    "obsbus.registry.events",
    "RegistryEvent",
    "same key as the command it answers",
    6,
    doc="What the registry did: datasets registered, records inserted, command rejected.",
)
BLESSING_REQUESTS = Topic(
    "obsbus.calib.blessing-requests",
    "BlessingRequest",
    "target CALIBRATION collection",
    3,
    doc="Requests to certify calibrations into a CALIBRATION collection for a validity range.",
)
CALIB_OUTCOMES = Topic(
    "obsbus.calib.outcomes",
    "CalibrationOutcome",
    "target CALIBRATION collection",
    3,
    doc="Blessed or rejected, with the reason, per blessing request.",
)
DEAD_LETTERS = Topic(
    "obsbus.dead-letters",
    "DeadLetter",
    "the original message's key",
    1,
    doc="Messages a service could not handle, with their origin and the error.",
)

ALL_TOPICS = (
    RAW_ARRIVALS,
    INGEST_OUTCOMES,
    REGISTRY_COMMANDS,
    REGISTRY_EVENTS,
    BLESSING_REQUESTS,
    CALIB_OUTCOMES,
    DEAD_LETTERS,
)

RECORD_OF = {t.name: t.record for t in ALL_TOPICS}


def topic(name: str) -> Topic:
    for t in ALL_TOPICS:
        if t.name == name:
            return t
    from ..core.errors import InputError

    raise InputError(f"no topic {name!r}; topics: {', '.join(t.name for t in ALL_TOPICS)}")
