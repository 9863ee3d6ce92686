"""Where a user's registry changes go: straight into the registry, or to the registry service.

While a registry service serves the repository it is the only writer (it owns the database,
and its command topic is what a replay rebuilds the registry from), so the command line and
the library send their changes to it as registry commands and wait for its answer. Otherwise
they apply them here, in one transaction. Either way the same function applies them
(``services.registry.command_types.apply_command``), so the result is the same.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .bus.config import KafkaSettings
from .bus.request import request
from .bus.topics import REGISTRY_COMMANDS, REGISTRY_EVENTS, WRITES_KEY
from .bus.transport import Bus
from .core.errors import CommandRejectedError, NoAnswerError, RegistryServedError
from .core.runfiles import service_pid
from .messages import RegistryCommand, RegistryEvent
from .registry.changes import ChangeSet
from .registry.command_types import apply_command
from .registry.commands import Certify, Decertify, SetChain
from .registry.registry import Registry

Change = ChangeSet | Certify | Decertify | SetChain


class Writes(Protocol):
    def apply(self, change: Change) -> None: ...


@dataclass
class LocalWrites:
    registry: Registry

    def apply(self, change: Change) -> None:
        with self.registry.transaction():
            apply_command(self.registry, change)


@dataclass
class BusWrites:
    """Sends each change as a registry command and waits for the service's answer."""

    issued_by: str
    timeout_s: float = 120.0
    _bus: Bus | None = field(default=None, repr=False)

    def apply(self, change: Change) -> None:
        if self._bus is None:
            self._bus = KafkaSettings().bus(f"obsbus-writes-{os.getpid()}")
        command = RegistryCommand.new(change, self.issued_by)
        answer = request(
            self._bus,
            REGISTRY_COMMANDS,
            WRITES_KEY,
            command,
            REGISTRY_EVENTS,
            RegistryEvent,
            lambda event: event.command_id == command.command_id,
            timeout_s=self.timeout_s,
            waiting_for="registry service",
        )
        if answer.kind == "command-rejected":
            raise CommandRejectedError(answer.message, answer.reason)

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()


def apply_or_hold(writes: Writes, change: Change) -> NoAnswerError | None:
    """Apply ``change``; if it was sent to the registry service but not answered, return the
    error instead of raising it, so the caller keeps the files the change points at (the
    service may still apply it) and raises it once its datastore transaction is committed."""
    try:
        writes.apply(change)
    except NoAnswerError as err:
        return err
    return None


def registry_service_serves(repo: Path) -> bool:
    """Whether a registry service (``obsbus serve registry`` / ``obsbus up``) runs for it."""
    return service_pid(repo, "registry") is not None


def require_no_registry_service(repo: Path, command: str, instead: str = "") -> None:
    """Refuse a command that writes the registry directly while a registry service serves it
    (it would be a second writer, and its changes would be missing from a replay)."""
    pid = service_pid(repo, "registry")
    if pid is not None:
        raise RegistryServedError(
            f"a registry service (pid {pid}) serves {repo} and is its only writer; "
            f"`obsbus {command}` writes the registry directly: "
            + (instead or f"stop the services first (`obsbus down {repo}`)")
        )


def writes_for(repo: Path, registry: Registry, actor: str | None = None) -> Writes:
    if registry_service_serves(repo):
        return BusWrites(f"{actor or getpass.getuser()} via obsbus")
    return LocalWrites(registry)
