"""How the command line opens a repository for writing: it looks for a registry service.

A running service leaves its pid file in ``REPO/var/run`` (``services.core.runfiles``).
While a live ``obsbus serve registry`` is among them, that service is the registry's only
writer: a command's changes go to it over the bus (``BusWrites``), and commands that can
only write the registry directly are refused. Otherwise they are applied in-process. This
is the one place that decides; the library is told (``Butler.open(..., writes=...)``).
"""

from __future__ import annotations

from pathlib import Path

from ..butler import Butler
from ..clients.writes import BusWrites
from ..core.errors import RegistryServedError
from ..core.runfiles import service_pid
from ..writes import LocalWrites


def open_butler(repo: Path, actor: str | None = None) -> Butler:
    """``repo``'s Butler, writing through its registry service while one serves it, else
    in-process."""
    served = service_pid(repo, "registry") is not None
    return Butler.open(repo, actor=actor, writes=BusWrites.for_registry if served else LocalWrites)


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
