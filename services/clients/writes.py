"""The Butler's writer while a registry service serves the repository: over the bus.

``BusWrites`` sends each change as a registry command and waits for the service's answer.
It lives with the other clients of the services, above the bus it speaks, rather than in
``services.writes``: the library (the Butler, ``LocalWrites``) knows only the ``Writes``
protocol and never imports the bus, while whoever opens a Butler (the command line, a
script, a test) can pick this writer without going through the command line. Which writer a
Butler gets is decided by its opener (``services.cli.opening`` for the ``obsbus`` command).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..bus.config import KafkaSettings
from ..bus.request import request
from ..bus.topics import REGISTRY_COMMANDS, REGISTRY_EVENTS, WRITES_KEY
from ..bus.transport import Bus
from ..core.errors import CommandRejectedError
from ..messages import RegistryCommand, RegistryEvent
from ..registry.registry import Registry
from ..writes import Change


@dataclass
class BusWrites:
    """Sends each change as a registry command and waits for the service's answer."""

    issued_by: str
    timeout_s: float = 120.0
    _bus: Bus | None = field(default=None, repr=False)

    @classmethod
    def for_registry(cls, registry: Registry) -> BusWrites:
        """A Butler's writer (a ``WritesFactory``): its commands are issued by its actor."""
        return cls(f"{registry.actor} via obsbus")

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
