"""Where a repository's running services leave their pid and status files (``REPO/var/run``).

``obsbus serve SERVICE REPO`` writes ``<name>.pid`` while it runs and ``<name>.json`` (its
counters); ``obsbus supervise`` (started by ``obsbus up``) writes ``up.json`` (every
service's live pid, restarts and state). Other processes read them
to find the services: ``obsbus status``, ``down``, and the command line's writing commands,
which must go through the registry service while it runs (``services.cli.opening``; the
library reads none of these files).
"""

from __future__ import annotations

from pathlib import Path

STATE_NAME = "up.json"  # the supervisor's: every service's pid, restarts and state


def run_dir(repo: Path) -> Path:
    path = repo.resolve() / "var" / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def alive(pid: int, service: str | None = None, verb: str = "serve") -> bool:
    """Whether ``pid`` is still one of our processes (``obsbus serve SERVICE ...``, or
    ``obsbus supervise ...`` with ``verb="supervise"``; pids are reused after exit), and runs
    ``service`` if one is named."""
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    word = verb.encode()
    if stat.split(") ")[-1].startswith(("Z", "X")) or word not in argv:
        return False
    ours = any(a.endswith(b"obsbus") for a in argv) or b"services.cli.main" in argv
    following = argv[argv.index(word) + 1 : argv.index(word) + 2]
    return ours and (service is None or following == [service.encode()])


def service_pid(repo: Path, service: str) -> int | None:
    """The pid of a running ``service`` (registry, ingest, ...) of ``repo``, whatever name it
    was started under (``--name``), or None."""
    for path in sorted((repo.resolve() / "var" / "run").glob("*.pid")):
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        if alive(pid, service):
            return pid
    return None
