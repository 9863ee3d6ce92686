"""`obsbus up/down/status`: the broker, the four services as processes, and a simulated night.

Each service runs as its own process (`obsbus serve SERVICE REPO`), kept running by a
supervisor process (`obsbus supervise`, see supervisor.py) that `up` starts; pids, logs and
counters live under REPO/var/. `up` without --detach shows live progress and stops
everything cleanly on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from ..bus.admin import ensure_topics, wait_for_broker
from ..bus.config import KafkaSettings
from ..bus.runner import Handler, ServiceLoop
from ..bus.topics import INGEST_OUTCOMES
from ..bus.transport import Bus
from ..butler import Butler
from ..core.config import CONFIG_NAME
from ..core.errors import BusError, ConfigError
from ..core.runfiles import STATE_NAME, alive, run_dir
from ..core.timespan import now_ns, ns_to_iso
from ..messages import IngestOutcome
from ..ops.status import read_state, service_statuses, status_rows, supervisor_alive
from ..web.config import DashboardSettings
from ..web.serve import DashboardServer, status_url
from .supervisor import KAFKA_SCRIPT, describe_exit

SERVICE_NAMES = ("registry", "calib", "ingest", "watcher", "dashboard")


class Runnable:
    """A service ready to run until ``stop`` is set."""

    def __init__(self, target: Any, butler: Butler | None = None) -> None:
        self.target, self.butler = target, butler

    def run(self, stop: threading.Event) -> None:
        try:
            self.target.run(stop)
        finally:
            if self.butler is not None:  # its database connections, closed cleanly
                self.butler.close()


def service(
    kind: str,
    name: str,
    repo: Path,
    bus: Bus,
    watch: list[Path],
    transfer: str,
    watch_mode: str = "auto",
    dashboard: DashboardSettings | None = None,
) -> Runnable:
    """Build one of the four services from its declaration (services/handlers/)."""
    status = run_dir(repo) / f"{name}.json"
    if kind == "dashboard":
        return Runnable(_dashboard(repo, bus, name, status, dashboard or DashboardSettings()))
    if kind == "watcher":
        from ..handlers.watcher import Watcher

        if not watch:
            raise ConfigError("the watcher needs --watch DIR")
        return Runnable(Watcher(bus, watch, name, status_file=status, mode=watch_mode))
    # In-process writes (not `opening.open_butler`): the registry service is the registry's
    # writer, and the others send what they write to it themselves, never via butler.writes.
    butler = Butler.open(repo, actor=f"obsbus {kind} service ({name})")
    handler: Handler
    if kind == "ingest":
        from ..handlers import ingest

        declaration = ingest.SERVICE
        handler = ingest.IngestHandler(butler, transfer=transfer, name=name)
    elif kind == "registry":
        from ..handlers import registry

        declaration = registry.SERVICE
        assert declaration.group is not None
        handler = registry.RegistryHandler(butler.registry, declaration.group)
    else:
        from ..handlers import calib

        declaration = calib.SERVICE
        handler = calib.CalibHandler(butler.registry, name)
    loop = ServiceLoop.declared(declaration, bus, handler, name=name, status_file=status)
    return Runnable(loop, butler)


def _dashboard(
    repo: Path, bus: Bus, name: str, status: Path, settings: DashboardSettings
) -> DashboardServer:
    from ..web.dashboard import Dashboard

    board = Dashboard(
        bus, repo, settings.hours * 3600, settings.quiet_s, name=name, status_file=status
    )
    from ..web.readonly import open_read_only

    # The API's reads never write: the database refuses them (services/web/readonly.py).
    butler = open_read_only(repo)
    return DashboardServer(board, settings.host, settings.port, settings.nice, butler)


def _start_broker() -> tuple[bool, bool]:
    """Start the local broker unless one is configured: (local broker used, this call
    started it).

    The local broker's address is put in OBSBUS_KAFKA_BOOTSTRAP for this process and the
    services it starts (deploy/kafka.sh may have moved to a free port).
    """
    settings = KafkaSettings()
    if settings.bootstrap:
        wait_for_broker(settings.bootstrap, 60)
        return False, False
    script = ["bash", str(KAFKA_SCRIPT)]
    started = False
    if subprocess.run([*script, "status"], capture_output=True).returncode != 0:
        print("starting the local Kafka broker (deploy/kafka.sh)...", flush=True)
        result = subprocess.run([*script, "start"], capture_output=True, text=True)
        if result.returncode != 0:
            raise BusError(
                f"could not start the local Kafka broker: {result.stderr.strip()[-300:]}"
            )
        started = True
    address = subprocess.run([*script, "bootstrap"], capture_output=True, text=True)
    os.environ["OBSBUS_KAFKA_BOOTSTRAP"] = address.stdout.strip()
    return True, started


def cmd_up(args: argparse.Namespace) -> int:
    repo: Path = args.repo.resolve()
    if not (repo / CONFIG_NAME).exists():
        from ..instruments import load_instrument

        with Butler.create(repo, actor=args.actor) as butler:
            for name in ("SimCam", "HSC", "DECam"):
                load_instrument(name).register(butler.registry)
        print(f"created repository {repo} with SimCam, HSC and DECam", flush=True)
    _refuse_if_running(repo)
    watch = (args.watch or repo / "landing").resolve()
    watch.mkdir(parents=True, exist_ok=True)
    local_broker, started_broker = _start_broker()
    try:
        settings = KafkaSettings()
        ensure_topics(settings.resolved_bootstrap(), settings.topics(), settings.replication)
        state = _start_supervisor(
            repo, watch, (local_broker, started_broker), settings.resolved_bootstrap()
        )
    except BaseException:
        _stop(repo)  # leave nothing running behind a failed start (Ctrl-C included)
        if started_broker:
            subprocess.run(["bash", str(KAFKA_SCRIPT), "stop"], capture_output=True)
        raise
    pids = ", ".join(f"{n} pid {s['pid']}" for n, s in state["services"].items())
    print(
        f"services started ({pids}), supervised (pid {state['supervisor_pid']}); watching "
        f"{watch}; logs in {repo / 'var' / 'log'}",
        flush=True,
    )
    url = _dashboard_url(repo)
    print(f"dashboard: {url or 'not answering yet; see `obsbus status`'}", flush=True)
    if args.detach:
        return 0
    try:
        return _follow(args, repo, watch)
    finally:
        _stop(repo)


def _dashboard_url(repo: Path, timeout_s: float = 10.0) -> str | None:
    """The dashboard's address once it listens (its status file says; port 0 is any)."""
    pid = read_state(repo)["services"].get("dashboard", {}).get("pid")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        url = status_url(run_dir(repo) / "dashboard.json", pid)
        if url:
            return url
        time.sleep(0.1)
    return None


def _refuse_if_running(repo: Path) -> None:
    state = read_state(repo)
    running = [pid for pid in _recorded_pids(state).values() if alive(pid)]
    if supervisor_alive(state) or running:
        raise ConfigError(
            f"services already run for {repo} (pids {sorted(running)}); "
            "`obsbus down REPO` stops them"
        )
    (run_dir(repo) / STATE_NAME).unlink(missing_ok=True)  # left by a supervisor killed -9


def _start_supervisor(
    repo: Path,
    watch: Path,
    broker: tuple[bool, bool],
    bootstrap: str,
    timeout_s: float = 60,
) -> dict[str, Any]:
    """Start `obsbus supervise` in its own session; its state once every service runs."""
    argv = [sys.executable, "-m", "services.cli.main", "supervise", str(repo)]
    argv += ["--watch", str(watch), "--bootstrap", bootstrap]
    argv += ["--local-broker"] if broker[0] else []
    argv += ["--broker-started"] if broker[1] else []
    logs = repo / "var" / "log"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "supervisor.log").open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = read_state(repo)
        if state.get("supervisor_pid") == proc.pid and len(state["services"]) == len(SERVICE_NAMES):
            return state
        if proc.poll() is not None:
            raise BusError(
                f"the supervisor stopped at start ({describe_exit(proc.returncode)}); "
                f"see {logs / 'supervisor.log'}"
            )
        time.sleep(0.1)
    proc.terminate()  # it stops what it started
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    raise BusError(f"the services did not start within {timeout_s:.0f} s; see {logs}")


def _follow(args: argparse.Namespace, repo: Path, watch: Path) -> int:
    """Land the simulated night (if asked) and show progress until done or Ctrl-C."""
    settings = KafkaSettings()
    bus = settings.bus("obsbus-up")
    outcomes = bus.consumer(f"obsbus-up-{uuid.uuid4().hex[:8]}", [INGEST_OUTCOMES.name])
    outcomes.poll(1.0, 1)
    for tp in outcomes.assignment():
        outcomes.seek(tp, bus.end_offsets(tp[0]).get(tp[1], 0))
    counts: Counter[str] = Counter()
    landed = 0
    simulator = _Simulator(watch, args.simulate, args.interval)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    last_print = 0.0
    reported: dict[str, tuple[int, str]] = {}
    try:
        while not stop.is_set():
            landed += simulator.step()
            for d in outcomes.poll(0.2, 1000):
                counts[IngestOutcome.decode(d.value).status] += 1
            state = read_state(repo)
            for name, s in state.get("services", {}).items():
                seen = (s["restarts"], s["state"])
                if reported.get(name, (0, "running")) != seen:
                    print(_restart_line(name, s), flush=True)
                reported[name] = seen
            if not supervisor_alive(state):
                raise BusError(f"the supervisor stopped; see {repo}/var/log/supervisor.log")
            if time.monotonic() - last_print > 1.0:
                lag = sum(int(s.get("lag", 0)) for s in service_statuses(repo).values())
                print(
                    f"landed {landed}  ingested {counts['ingested']}  already-present "
                    f"{counts['already-present']}  failed {counts['failed']}  lag {lag}",
                    flush=True,
                )
                last_print = time.monotonic()
            if args.exit_when_done and simulator.done and sum(counts.values()) >= landed:
                print(
                    f"done: {landed} files landed, {counts['ingested']} ingested, "
                    f"{counts['failed']} failed",
                    flush=True,
                )
                return 1 if counts["failed"] else 0
    except KeyboardInterrupt:
        print("stopping...", flush=True)
    finally:
        outcomes.close()
        bus.close()
    return 0


def _restart_line(name: str, s: dict[str, Any]) -> str:
    if s["state"] == "failed":
        return f"{name}: {s['reason']}"
    if s["state"] == "backoff":
        return f"{name} stopped ({s['last_exit']}); restarting (restart {s['restarts'] + 1})"
    return f"{name} running again (pid {s['pid']}, restarts {s['restarts']})"


class _Simulator:
    """Lands SimCam exposures (205 files each) in the watched folder at a cadence."""

    def __init__(self, watch: Path, exposures: int, interval_s: float) -> None:
        self.watch, self.left, self.interval = watch, exposures, interval_s
        self.seq = 1 + len([p for p in watch.glob("*/*") if p.is_dir()])
        self.next_at = time.monotonic()

    @property
    def done(self) -> bool:
        return self.left == 0

    def step(self) -> int:
        if self.left == 0 or time.monotonic() < self.next_at:
            return 0
        from ..instruments.simcam import write_exposure

        files = write_exposure(self.watch, self.seq, str(ns_to_iso(now_ns())))
        self.seq += 1
        self.left -= 1
        self.next_at = time.monotonic() + self.interval
        return len(files)


def _recorded_pids(state: dict[str, Any]) -> dict[str, int]:
    return {n: int(p) for n, p in state.get("pids", {}).items()}


def _stop(repo: Path) -> list[str]:
    """Stop the supervisor (it stops the services, then the broker it started); whatever it
    left running (it was killed -9, say) is stopped by its recorded pid."""
    state = read_state(repo)
    if "supervisor_pid" not in state:
        return []
    if supervisor_alive(state):
        _terminate([int(state["supervisor_pid"])], 40, verb="supervise")
    _terminate([p for p in _recorded_pids(state).values() if alive(p)], 15)
    if state.get("broker_started"):
        subprocess.run(["bash", str(KAFKA_SCRIPT), "stop"], capture_output=True)
    (run_dir(repo) / STATE_NAME).unlink(missing_ok=True)
    return list(state["services"])


def _terminate(pids: list[int], timeout_s: float, verb: str = "serve") -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # gone since it was looked at
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p, verb=verb) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if alive(pid, verb=verb):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def cmd_down(args: argparse.Namespace) -> int:
    stopped = _stop(args.repo)
    print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .output import emit

    rows = status_rows(args.repo)
    if not args.json:  # the table has the readable time only
        rows = [{k: v for k, v in r.items() if k != "last_message_ns"} for r in rows]
    emit(rows, args.json, "no services have run in this repository")
    return 0
