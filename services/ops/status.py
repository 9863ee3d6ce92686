"""Every service's state, as `obsbus status` prints it and the dashboard shows it.

Two sources, both under ``REPO/var/run``: the supervisor's ``up.json`` (pid, restarts, state
of each service it keeps running) and each service's ``<name>.json`` (its counters, lag and
last message). Without a live supervisor its last word may be stale: the pids tell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..bus.config import KafkaSettings
from ..bus.outage import broker_reachable
from ..core.runfiles import STATE_NAME, alive, run_dir
from ..core.timespan import now_ns, ns_to_iso


def status_rows(repo: Path) -> list[dict[str, Any]]:
    """One row per service, then the supervisor and the broker (if `up` ran)."""
    state = read_state(repo)
    statuses = service_statuses(repo)
    supervised = state["services"] if supervisor_alive(state) else {}
    rows = [
        _service_row(n, supervised.get(n, {}), statuses.get(n, {}))
        for n in sorted(set(state["services"]) | set(statuses))
    ]
    if "supervisor_pid" in state:
        rows.append(_supervisor_row(state))
        rows.append(_broker_row(state))
    return rows


def read_state(repo: Path) -> dict[str, Any]:
    """What the supervisor last wrote (``up.json``), or {} when nothing was started."""
    try:
        state: dict[str, Any] = json.loads((run_dir(repo) / STATE_NAME).read_text())
    except (OSError, ValueError):
        state = {}
    state.setdefault("services", {})
    return state


def supervisor_alive(state: dict[str, Any]) -> bool:
    pid = state.get("supervisor_pid")
    return pid is not None and alive(int(pid), verb="supervise")


def service_statuses(repo: Path) -> dict[str, dict[str, Any]]:
    """Each service's own status file (``<name>.json``: its counters and lag), by name."""
    out = {}
    for path in run_dir(repo).glob("*.json"):
        if path.name != STATE_NAME:
            try:
                out[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    return out


def _service_row(name: str, sup: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    pid = sup.get("pid") if sup else s.get("pid")
    running = pid is not None and alive(int(pid))
    started = sup.get("started_at_ns")
    last = s.get("last_message_ns") or None
    state = sup.get("state", "running") if sup else "running"
    if state == "running" and not running:
        state = "down"  # its supervisor is gone too, or it was never supervised
    return {
        "service": name,
        "state": state,
        "pid": pid if running else None,
        "restarts": sup.get("restarts"),
        "up_s": round((now_ns() - started) / 1e9) if running and started else None,
        "last_message": None if not last else str(ns_to_iso(last))[:19],
        "last_message_ns": last,
        "consumed": s.get("consumed"),
        "produced": s.get("produced"),
        "failed": s.get("failed"),
        "dead_lettered": s.get("dead_lettered"),
        "lag": s.get("lag"),
        # Seconds spent handling, producing (until acknowledged) and committing.
        **{k: _seconds(s.get(k)) for k in ("handle_s", "produce_s", "commit_s")},
        "reason": sup.get("reason") or sup.get("last_exit") or None,
    }


def _supervisor_row(state: dict[str, Any]) -> dict[str, Any]:
    running = supervisor_alive(state)
    return {
        "service": "supervisor",
        "state": "running" if running else "stopped",
        "pid": state.get("supervisor_pid") if running else None,
        "reason": None
        if running
        else "not running: services are not restarted; `obsbus down` then `obsbus up`",
    }


def _broker_row(state: dict[str, Any]) -> dict[str, Any]:
    bootstrap = state.get("bootstrap") or KafkaSettings().resolved_bootstrap()
    reachable = broker_reachable(bootstrap)
    return {
        "service": "broker",
        "state": "reachable" if reachable else "unreachable",
        # Only a broker `up` started is supervised (restarted when it dies).
        "restarts": state["broker"]["restarts"] if state.get("local_broker") else None,
        "reason": f"{bootstrap}" + ("" if reachable else ": no broker answers there"),
    }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
