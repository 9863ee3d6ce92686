"""`obsbus up/down/status`: the broker, the four services as processes, and a simulated night.

Each service runs as its own process (`obsbus serve SERVICE REPO`); their pids, logs and
counters live under REPO/var/. `up` without --detach shows live progress and stops
everything cleanly on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
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

from ..bus import codec
from ..bus.admin import ensure_topics, wait_for_broker
from ..bus.config import KafkaSettings
from ..bus.runner import ServiceLoop
from ..bus.topics import BLESSING_REQUESTS, INGEST_OUTCOMES, RAW_ARRIVALS, REGISTRY_COMMANDS
from ..bus.transport import Bus
from ..butler import Butler
from ..core.config import CONFIG_NAME
from ..core.errors import BusError, ConfigError
from ..core.runfiles import alive, run_dir

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = PROJECT_ROOT / "deploy" / "kafka.sh"
SERVICE_NAMES = ("registry", "calib", "ingest", "watcher")


class _Runnable:
    """A service ready to run until ``stop`` is set."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def run(self, stop: threading.Event) -> None:
        self.target.run(stop)


def service(
    kind: str,
    name: str,
    repo: Path,
    bus: Bus,
    watch: list[Path],
    transfer: str,
    watch_mode: str = "auto",
) -> _Runnable:
    """Build one of the four services (the handlers are plain functions; see their modules)."""
    status = run_dir(repo) / f"{name}.json"
    if kind == "watcher":
        from ..ingest.watcher import Watcher

        if not watch:
            raise ConfigError("the watcher needs --watch DIR")
        return _Runnable(Watcher(bus, watch, name, status_file=status, mode=watch_mode))
    butler = Butler.open(repo, actor=f"obsbus {kind} service ({name})")
    if kind == "ingest":
        from ..ingest.service import IngestHandler

        handler: Any = IngestHandler(butler, transfer=transfer, name=name)
        topics, group = [RAW_ARRIVALS.name], "obsbus-ingest"
        # Small batches: each file's command leaves as soon as its few neighbours are done
        # (a 500-file batch would hold an exposure's first file until the last is ingested).
        return _Runnable(
            ServiceLoop(name, bus, group, topics, handler, status_file=status, max_records=16)
        )
    elif kind == "registry":
        from ..registry.service import RegistryHandler

        handler = RegistryHandler(butler.registry, "obsbus-registry")
        topics, group = [REGISTRY_COMMANDS.name], "obsbus-registry"
    else:
        from ..calib.service import CalibHandler

        handler = CalibHandler(butler.registry, name)
        topics, group = [BLESSING_REQUESTS.name], "obsbus-calib"
    return _Runnable(ServiceLoop(name, bus, group, topics, handler, status_file=status))


def _start_broker() -> bool:
    """Start the local broker unless one is configured; True if this call started it.

    The local broker's address is put in OBSBUS_KAFKA_BOOTSTRAP for this process and the
    services it starts (deploy/kafka.sh may have moved to a free port).
    """
    settings = KafkaSettings()
    if settings.bootstrap:
        wait_for_broker(settings.bootstrap, 60)
        return False
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
    return started


def cmd_up(args: argparse.Namespace) -> int:
    repo: Path = args.repo.resolve()
    if not (repo / CONFIG_NAME).exists():
        from ..instruments import load_instrument

        with Butler.create(repo, actor=args.actor) as butler:
            for name in ("SimCam", "HSC", "DECam"):
                load_instrument(name).register(butler.registry)
        print(f"created repository {repo} with SimCam, HSC and DECam", flush=True)
    running = _recorded_pids(repo)
    if any(alive(pid) for pid in running.values()):
        raise ConfigError(
            f"services already run for {repo} (pids {sorted(running.values())}); "
            "`obsbus down REPO` stops them"
        )
    watch = (args.watch or repo / "landing").resolve()
    watch.mkdir(parents=True, exist_ok=True)
    started_broker = _start_broker()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        settings = KafkaSettings()
        ensure_topics(settings.resolved_bootstrap(), settings.topics(), settings.replication)
        logs = repo / "var" / "log"
        logs.mkdir(parents=True, exist_ok=True)
        for name in SERVICE_NAMES:
            argv = [sys.executable, "-m", "services.cli.main", "serve", name, str(repo)]
            if name == "watcher":
                argv += ["--watch", str(watch)]
            with (logs / f"{name}.log").open("ab") as log:
                procs[name] = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    except BaseException:
        for proc in procs.values():  # leave nothing running behind a failed start
            proc.terminate()
        if started_broker:
            subprocess.run(["bash", str(KAFKA_SCRIPT), "stop"], capture_output=True)
        raise
    (run_dir(repo) / "up.json").write_text(
        json.dumps(
            {
                "pids": {n: p.pid for n, p in procs.items()},
                "broker_started": started_broker,
                "watch": str(watch),
            }
        )
    )
    print(
        f"services started ({', '.join(f'{n} pid {p.pid}' for n, p in procs.items())}); "
        f"watching {watch}; logs in {logs}",
        flush=True,
    )
    if args.detach:
        return 0
    try:
        return _follow(args, repo, watch, procs)
    finally:
        _stop(repo)


def _follow(
    args: argparse.Namespace, repo: Path, watch: Path, procs: dict[str, subprocess.Popen[bytes]]
) -> int:
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
    try:
        while not stop.is_set():
            landed += simulator.step()
            for d in outcomes.poll(0.2, 1000):
                counts[codec.decode(d.value).value["status"]] += 1
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise BusError(f"service(s) {', '.join(dead)} stopped; see {repo}/var/log/")
            if time.monotonic() - last_print > 1.0:
                lag = sum(int(s.get("lag", 0)) for s in _statuses(repo).values())
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
        from ..core.timespan import now_ns, ns_to_iso
        from ..instruments.simcam import write_exposure

        files = write_exposure(self.watch, self.seq, str(ns_to_iso(now_ns())))
        self.seq += 1
        self.left -= 1
        self.next_at = time.monotonic() + self.interval
        return len(files)


def _statuses(repo: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in run_dir(repo).glob("*.json"):
        if path.name != "up.json":
            try:
                out[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    return out


def _recorded_pids(repo: Path) -> dict[str, int]:
    state_file = run_dir(repo) / "up.json"
    if not state_file.exists():
        return {}
    pids: dict[str, int] = json.loads(state_file.read_text())["pids"]
    return pids


def _stop(repo: Path) -> list[str]:
    state_file = run_dir(repo) / "up.json"
    if not state_file.exists():
        return []
    state = json.loads(state_file.read_text())
    pids: dict[str, int] = state["pids"]
    for pid in pids.values():
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.1)
    for pid in pids.values():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    if state.get("broker_started"):
        subprocess.run(["bash", str(KAFKA_SCRIPT), "stop"], capture_output=True)
    state_file.unlink()
    return list(pids)


def cmd_down(args: argparse.Namespace) -> int:
    stopped = _stop(args.repo)
    print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .output import emit

    pids = {}
    state_file = run_dir(args.repo) / "up.json"
    if state_file.exists():
        pids = json.loads(state_file.read_text())["pids"]
    statuses = _statuses(args.repo)
    rows = []
    for name in sorted(set(pids) | set(statuses)):
        s = statuses.get(name, {})
        pid = pids.get(name, s.get("pid"))
        rows.append(
            {
                "service": name,
                "pid": pid,
                "running": pid is not None and alive(int(pid)),
                "consumed": s.get("consumed"),
                "produced": s.get("produced"),
                "failed": s.get("failed"),
                "dead_lettered": s.get("dead_lettered"),
                "lag": s.get("lag"),
                # Seconds spent handling, producing (until acknowledged) and committing.
                **{k: _seconds(s.get(k)) for k in ("handle_s", "produce_s", "commit_s")},
            }
        )
    emit(rows, args.json, "no services have run in this repository")
    return 0


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
