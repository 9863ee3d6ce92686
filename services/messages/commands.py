"""The registry command: the only input of the registry service, and what a replay reads.

The body is one registry command (services.registry.commands), in its own branch of the
body union; services/registry/command_types.py is the table of branches.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from ..core.timespan import now_ns
from ..registry.command_types import branch, type_of
from ..registry.commands import Command
from .record import Record


@dataclass(frozen=True)
class RegistryCommand(Record):
    RECORD: ClassVar[str] = "RegistryCommand"

    command_id: str  # the same command sent again keeps it: applied once, answered again
    issued_at_ns: int  # the history columns take it (a replay writes the same history)
    issued_by: str
    body: Command

    @classmethod
    def new(cls, body: Command, issued_by: str, command_id: str | None = None) -> Self:
        """A command issued now (``command_id``: chosen by the caller when a repeat of the
        same request must be recognised, e.g. one per raw arrival)."""
        return cls(command_id or str(uuid.uuid4()), now_ns(), issued_by, body)

    def to_value(self) -> dict[str, Any]:
        kind = type_of(self.body)
        return {
            "command_id": self.command_id,
            "issued_at_ns": self.issued_at_ns,
            "issued_by": self.issued_by,
            "body": (kind.branch, kind.to_body(self.body)),
        }

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> Self:
        name, fields = value["body"]
        return cls(
            value["command_id"],
            value["issued_at_ns"],
            value["issued_by"],
            branch(name).from_body(fields),
        )
