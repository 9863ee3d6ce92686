"""The table of registry command types: branch name, class, body conversion, how it is applied.

Each row is one branch of the RegistryCommand body union (schemas/RegistryCommand.v<N>.avsc).
Everything that writes, sends, reads or answers a command looks its type up here, so a new
command type is a new branch in the schema, its class and body pair, and one row below. A
registry service too old to know a branch cannot read it and dead-letters it, rather than
apply part of it (tests/test_schemas.py checks that rule).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..core.errors import InputError
from . import command_bodies as bodies
from .changes import ChangeSet, apply_change_set
from .collections import CollectionType
from .commands import Certify, Command, Decertify, IngestRaw, SetChain
from .registry import Registry
from .suites import CertifySuite, apply_suite

C = TypeVar("C", bound=Command)


@dataclass(frozen=True)
class CommandType(Generic[C]):
    branch: str  # full record name of its branch in the RegistryCommand body union
    command: type[C]
    to_body: Callable[[C], bodies.Body]
    from_body: Callable[[Mapping[str, Any]], Command]
    # Applies it in the caller's transaction; returns how many rows (for a suite: validity
    # ranges) it changed. None: raw ingest, applied in batches by the IngestApplier.
    apply: Callable[[Registry, C], int] | None
    answer: str  # the kind of the RegistryEvent that answers it when applied
    # What that event says of it: a summary of what it did (from the rows it changed), and
    # the ids of the datasets it names (so a dashboard can follow a dataset's changes).
    summary: Callable[[C, int], str] | None = field(default=None)
    dataset_ids: Callable[[C], tuple[str, ...]] = field(default=lambda _cmd: ())

    def summarize(self, cmd: C, changed: int) -> str:
        if self.summary is not None:
            return self.summary(cmd, changed)
        return f"{self.answer}: {changed} row(s)"


def _certify(registry: Registry, cmd: Certify) -> int:
    refs = [registry.get_dataset(uuid.UUID(i)) for i in cmd.dataset_ids]
    # Blessing into a new collection creates it, in the same transaction as the certify.
    registry.register_collection(cmd.collection, CollectionType.CALIBRATION)
    return registry.certify(cmd.collection, refs, cmd.timespan)


def _suite(registry: Registry, cmd: CertifySuite) -> int:
    return apply_suite(registry, cmd).certified


def _decertify(registry: Registry, cmd: Decertify) -> int:
    data_ids = None if cmd.data_ids is None else list(cmd.data_ids)
    return registry.decertify(cmd.collection, cmd.dataset_type, cmd.timespan, data_ids)


def _chain(registry: Registry, cmd: SetChain) -> int:
    registry.register_collection(cmd.parent, CollectionType.CHAINED)
    return len(registry.set_chain(cmd.parent, list(cmd.children)))


COMMAND_TYPES: tuple[CommandType[Any], ...] = (
    CommandType(
        "obsbus.IngestRaw",
        IngestRaw,
        bodies.ingest_body,
        bodies.ingest_from,
        None,
        "datasets-registered",
    ),
    CommandType(
        "obsbus.Certify", Certify, bodies.certify_body, bodies.certify_from, _certify, "certified"
    ),
    CommandType(
        "obsbus.CertifySuite",
        CertifySuite,
        bodies.suite_body,
        bodies.suite_from,
        _suite,
        "certified",
    ),
    CommandType(
        "obsbus.Decertify",
        Decertify,
        bodies.decertify_body,
        bodies.decertify_from,
        _decertify,
        "decertified",
    ),
    CommandType(
        "obsbus.SetChain", SetChain, bodies.chain_body, bodies.chain_from, _chain, "chain-defined"
    ),
    CommandType(
        "obsbus.ChangeSet",
        ChangeSet,
        bodies.change_set_body,
        bodies.change_set_from,
        apply_change_set,
        "changes-applied",
        summary=lambda cmd, changed: f"{cmd.what}: {changed} row(s)",
        dataset_ids=lambda cmd: tuple(str(ref.id) for ref in cmd.datasets),
    ),
)

_BY_CLASS: dict[type, CommandType[Any]] = {t.command: t for t in COMMAND_TYPES}
_BY_BRANCH: dict[str, CommandType[Any]] = {t.branch: t for t in COMMAND_TYPES}


def type_of(cmd: Command) -> CommandType[Any]:
    return _BY_CLASS[type(cmd)]


def branch(name: str) -> CommandType[Any]:
    try:
        return _BY_BRANCH[name]
    except KeyError:
        raise InputError(f"unknown registry command {name!r}") from None


def apply_command(registry: Registry, cmd: Command) -> int:
    """Apply any command but raw ingest (in the caller's transaction); see ``CommandType``."""
    apply = type_of(cmd).apply
    if apply is None:
        raise InputError("raw ingest is applied by an IngestApplier, not apply_command")
    return apply(registry, cmd)


def blessing_of(cmd: Command) -> tuple[str, str] | None:
    """(request id, collection) of the blessing request a command carries out, if any."""
    request_id = getattr(cmd, "request_id", None)
    return None if request_id is None else (request_id, getattr(cmd, "collection", ""))
