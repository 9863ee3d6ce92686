"""Where a repository's running services leave their pid and status files (``REPO/var/run``).

``obsbus serve SERVICE REPO`` writes ``<name>.pid`` while it runs and ``<name>.json`` (its
counters); ``obsbus up`` writes ``up.json`` (every service's pid). Other processes read them
to find the services: ``obsbus status``, ``down``, and writers that must go through the
registry service while it runs.
"""

from __future__ import annotations

from pathlib import Path


def run_dir(repo: Path) -> Path:
    path = repo.resolve() / "var" / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def alive(pid: int) -> bool:
    """Whether ``pid`` is still one of our service processes (pids are reused after exit)."""
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    ours = b"services.cli.main" in cmdline or b"obsbus" in cmdline
    return ours and not stat.split(") ")[-1].startswith(("Z", "X"))


def service_pid(repo: Path, name: str) -> int | None:
    """The pid of the running service ``name`` of ``repo``, or None."""
    path = repo.resolve() / "var" / "run" / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None
