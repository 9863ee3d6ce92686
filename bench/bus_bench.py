"""Bus benchmark: throughput and latency of raw ingest through the four running services.

A benchmark, not a test: it prints figures and asserts no thresholds (the issue's targets,
p99 < 0.5 s per burst and >= 1,500 files/s sustained on 2 cores, are printed next to them).

    python bench/bus_bench.py [--exposures K] [--interval S] [--ingest-workers N]
                              [--detectors N] [--timeout S] [--keep-topics]
                              [--no-profile | --profile-only] [--top N]
                              [--quiet-load L --quiet-wait S]

What it does:

1. A temporary repository (``Butler.create`` + SimCam registered) and landing folder, a fresh
   topic namespace ``bench<uuid>.`` on the broker of ``OBSBUS_KAFKA_BOOTSTRAP`` (else the
   local one of ``deploy/kafka.sh``), its topics created with ``ensure_topics``.
2. The services as processes, exactly as ``obsbus up`` starts them (``python -m
   services.cli.main serve SERVICE REPO``): registry, calib, N ingest workers (``--name
   ingest-K``, one consumer group) and the watcher on the landing folder.
3. A warm-up: a few 2-detector exposures whose landing folders hash to every partition of
   ``obsbus.raw.arrivals``, so every ingest worker has imported and translated once, and the
   partition -> worker assignment is known (from each RegistryCommand's ``issued_by``).
4. K bursts: one SimCam exposure (205 files, written with ``write_exposure`` into a staging
   folder before the clock starts: the camera's work) lands in the landing folder by one
   rename per file, every ``--interval`` seconds (0: back to back). The landing moment of all
   of a burst's files is the TAI time (``now_ns()``) right after its last rename. A consumer
   in this process follows raw arrivals, registry commands and ingest outcomes (decoding
   only outcomes during the run), and every file's latency is taken to its IngestOutcome's
   ``finished_at_ns``.
5. The ingest and registry handlers in-process, on 205 files each, timed and under cProfile,
   and the watcher's steady-state scan cost (see ``--no-profile``).

Every process started is stopped by its pid (SIGTERM, SIGKILL after 15 s); temporary folders
are removed and the namespace's topics deleted (unless ``--keep-topics``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import math
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.bus import codec
from services.bus.admin import ensure_topics, wait_for_broker
from services.bus.config import KafkaSettings
from services.bus.runner import Incoming, Outgoing
from services.bus.topics import (
    DEAD_LETTERS,
    INGEST_OUTCOMES,
    RAW_ARRIVALS,
    REGISTRY_COMMANDS,
)
from services.bus.transport import Delivery, MemoryBus
from services.butler import Butler
from services.core.timespan import now_ns, ns_to_iso
from services.ingest.service import IngestHandler
from services.ingest.watcher import Watcher
from services.instruments import load_instrument
from services.instruments.simcam import write_exposure
from services.instruments.simcam.generator import day_obs_of, raw_path, to_tai
from services.instruments.simcam.instrument import DETECTORS
from services.registry.service import RegistryHandler

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = PROJECT_ROOT / "deploy" / "kafka.sh"
NS = 1_000_000_000
TARGET_P99_S = 0.5  # the targets (reported, not asserted)
TARGET_FILES_PER_S = 1500.0
WARM_UP_DETECTORS = (0, 1)
WARM_UP_FIRST_SEQ = 90_000  # warm-up exposures' SEQNUMs (the bursts use 1..K)
STOP_GRACE_S = 15.0


def log(text: str) -> None:
    print(text, flush=True)


# --- the broker and the machine -------------------------------------------------------------


def broker_address() -> str:
    """OBSBUS_KAFKA_BOOTSTRAP, else the local broker of deploy/kafka.sh (which must run)."""
    configured = os.environ.get("OBSBUS_KAFKA_BOOTSTRAP")
    if configured:
        return configured
    script = ["bash", str(KAFKA_SCRIPT)]
    if subprocess.run([*script, "status"], capture_output=True).returncode != 0:
        raise SystemExit(
            "bus_bench: no local Kafka broker; start it with `bash deploy/kafka.sh start` "
            "(or set OBSBUS_KAFKA_BOOTSTRAP)"
        )
    address = subprocess.run([*script, "bootstrap"], capture_output=True, text=True, check=True)
    return address.stdout.strip()


def broker_pid() -> int | None:
    """The local broker's pid (for its CPU time), if deploy/kafka.sh runs one."""
    status = subprocess.run(["bash", str(KAFKA_SCRIPT), "status"], capture_output=True, text=True)
    found = re.search(r"\bpid (\d+)", status.stdout)
    return int(found.group(1)) if found and status.returncode == 0 else None


def tai_minus_unix_ns() -> int:
    """TAI - Unix time in ns (whole seconds between leap seconds), to put Kafka timestamps
    (Unix ms) and mtimes on the services' TAI clock (``now_ns()``)."""
    return round((now_ns() - time.time_ns()) / NS) * NS


def code_version() -> str:
    """The commit measured, and whether services/ differs from it (read-only git calls)."""
    git = ["git", "--no-optional-locks", "-C", str(PROJECT_ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "services"]).returncode
    except OSError:
        return "unknown (no git)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" + uncommitted changes in services/" if dirty else "")


def load_1min() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, max_wait_s: float) -> None:
    deadline = time.monotonic() + max_wait_s
    while load_1min() >= max_load and time.monotonic() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
    if load_1min() >= max_load and max_wait_s > 0:
        log(f"machine still busy after waiting {max_wait_s:.0f} s: measuring anyway")


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (Linux /proc), None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> str:
    if not values:
        return "no data"
    return (
        f"p50 {percentile(values, 50):.3f} s  p99 {percentile(values, 99):.3f} s  "
        f"max {max(values):.3f} s"
    )


# --- following the topics -------------------------------------------------------------------


@dataclass
class Seen:
    """One message the tracker consumed: its decoded value, producer timestamp, receipt."""

    value: dict[str, Any]
    sent_ns: int  # the Kafka record timestamp (producer send time), as TAI ns
    received_ns: int  # when this process decoded it live (TAI ns; 0 if read back later)


@dataclass
class Tracker:
    """Follows outcomes and dead letters of the namespace in a thread; ``read_back`` reads
    the arrivals and commands afterwards (their times are the records' Kafka timestamps), so
    the follower's own CPU, which competes with the services for the cores, stays small.
    """

    settings: KafkaSettings
    arrivals: dict[str, Seen] = field(default_factory=dict)  # by file path
    commands: dict[str, Seen] = field(default_factory=dict)
    outcomes: dict[str, Seen] = field(default_factory=dict)
    dead_letters: int = 0
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tracker", daemon=True)
        self._thread.start()
        self._ready.wait(60)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def outcome_count(self, paths: Iterable[str]) -> int:
        with self._lock:
            return sum(p in self.outcomes for p in paths)

    def _run(self) -> None:
        tai_minus_unix = tai_minus_unix_ns()
        topics = [INGEST_OUTCOMES.name, DEAD_LETTERS.name]
        try:
            bus = self.settings.bus("obsbus-bus-bench")
            consumer = bus.consumer(f"bus-bench-{uuid.uuid4().hex[:8]}", topics)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            self._ready.set()
            return
        try:
            first = consumer.poll(0.5, 2000)  # joins the group; reads from offset 0 anyway
            self._ready.set()
            batch = first
            while True:
                for d in batch:
                    self._take(d, d.timestamp_ms * 1_000_000 + tai_minus_unix)
                if self._stop.is_set():
                    break
                batch = consumer.poll(0.2, 2000)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
        finally:
            consumer.close()
            bus.close()

    def _take(self, d: Delivery, sent_ns: int) -> None:
        if d.topic == DEAD_LETTERS.name:
            self.dead_letters += 1
            return
        value = codec.decode(d.value).value
        with self._lock:
            self.outcomes.setdefault(value["file"], Seen(value, sent_ns, now_ns()))

    def read_back(self) -> None:
        """Read the arrivals and commands published so far (from the start of the topics)."""
        tai_minus_unix = tai_minus_unix_ns()
        bus = self.settings.bus("obsbus-bus-bench-read-back")
        topics = [RAW_ARRIVALS.name, REGISTRY_COMMANDS.name]
        ends = {(t, p): end for t in topics for p, end in bus.end_offsets(t).items() if end}
        consumer = bus.consumer(f"bus-bench-read-back-{uuid.uuid4().hex[:8]}", topics)
        reached: dict[tuple[str, int], int] = {}
        try:
            while any(reached.get(tp, 0) < end for tp, end in ends.items()):
                for d in consumer.poll(0.5, 5000):
                    reached[(d.topic, d.partition)] = d.offset + 1
                    seen = Seen(
                        codec.decode(d.value).value,
                        d.timestamp_ms * 1_000_000 + tai_minus_unix,
                        0,  # not received live
                    )
                    self._take_back(d.topic, seen)
        finally:
            consumer.close()
            bus.close()

    def _take_back(self, topic: str, seen: Seen) -> None:
        value = seen.value
        with self._lock:
            if topic == RAW_ARRIVALS.name:
                self.arrivals.setdefault(value["path"], seen)
            else:
                body = value["body"][1] if isinstance(value["body"], tuple) else value["body"]
                if "file" in body:
                    self.commands.setdefault(body["file"], seen)


def wait_for_outcomes(
    tracker: Tracker, paths: Sequence[str], deadline: float, procs: Services
) -> bool:
    while time.monotonic() < deadline:
        if tracker.outcome_count(paths) >= len(paths):
            return True
        if tracker.error is not None:
            raise SystemExit(f"bus_bench: the topic follower failed: {tracker.error}")
        dead = procs.dead()
        if dead:
            raise SystemExit(f"bus_bench: service(s) {', '.join(dead)} stopped\n{procs.logs()}")
        time.sleep(0.05)
    return False


# --- the services as processes --------------------------------------------------------------


class Services:
    """`serve` processes for one repository, in this run's namespace; stopped by pid."""

    def __init__(
        self, repo: Path, landing: Path, logs: Path, env: dict[str, str], transfer: str
    ) -> None:
        self.repo, self.landing, self.log_dir, self.env = repo, landing, logs, env
        self.transfer = transfer
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, kind: str, name: str) -> None:
        argv = [sys.executable, "-m", "services.cli.main", "serve", kind, str(self.repo)]
        argv += ["--name", name]
        if kind == "watcher":
            argv += ["--watch", str(self.landing)]
        if kind == "ingest":
            argv += ["--transfer", self.transfer]
        with (self.log_dir / f"{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                argv, cwd=PROJECT_ROOT, env=self.env, stdout=out, stderr=out
            )

    def dead(self) -> list[str]:
        return sorted(n for n, p in self.procs.items() if p.poll() is not None)

    def status_files(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for path in sorted((self.repo / "var" / "run").glob("*.json")):
            try:
                out[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        return out

    def wait_ready(self, timeout_s: float) -> None:
        """Until every service has written its status file (it has polled once)."""
        deadline = time.monotonic() + timeout_s
        while set(self.procs) - set(self.status_files()):
            if self.dead():
                raise SystemExit(f"bus_bench: {', '.join(self.dead())} stopped\n{self.logs()}")
            if time.monotonic() > deadline:
                missing = sorted(set(self.procs) - set(self.status_files()))
                raise SystemExit(f"bus_bench: {', '.join(missing)} not ready\n{self.logs()}")
            time.sleep(0.2)

    def cpu(self) -> dict[str, float | None]:
        return {name: cpu_seconds(p.pid) for name, p in self.procs.items()}

    def stop(self) -> None:
        """SIGTERM to each pid, SIGKILL to those still running after 15 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


# --- partitions -----------------------------------------------------------------------------


def arrivals_partition(folder: str) -> int:
    """The partition kafka-python's default partitioner gives a RawArrival keyed by folder."""
    from kafka.partitioner.default import murmur2

    return int(murmur2(folder.encode()) & 0x7FFFFFFF) % RAW_ARRIVALS.partitions


def folder_of(landing: Path, seq: int, when: str) -> str:
    """The landing folder (the RawArrival key) of an exposure written at ``when``."""
    day_obs = day_obs_of(to_tai(when))
    return str(raw_path(landing.resolve(), day_obs, seq, DETECTORS[0]).parent)


def warm_up_seqs(landing: Path, when: str) -> list[int]:
    """One SEQNUM per arrivals partition, so every ingest worker gets a warm-up file."""
    chosen: dict[int, int] = {}
    seq = WARM_UP_FIRST_SEQ
    while len(chosen) < RAW_ARRIVALS.partitions:
        chosen.setdefault(arrivals_partition(folder_of(landing, seq, when)), seq)
        seq += 1
    return sorted(chosen.values())


# --- the measured run -----------------------------------------------------------------------


@dataclass
class Burst:
    index: int
    seq: int
    write_start_ns: int
    landed_ns: int  # right after the last rename: every file of the burst is there
    paths: list[str]


def stage(staging: Path, seq: int, detectors: Sequence[int] | None) -> list[Path]:
    """Write an exposure's files before the clock starts (the camera's work, not ours)."""
    return write_exposure(staging, seq, str(ns_to_iso(now_ns())), detectors=detectors)


def land(staging: Path, landing: Path, staged: Sequence[Path]) -> tuple[int, int, list[str]]:
    """Move a staged exposure into the landing folder, each file by one rename (as a camera's
    writer finishes a file under a temporary name and renames it)."""
    start = now_ns()
    paths = []
    for source in staged:
        target = landing / source.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)
        paths.append(str(target.resolve()))
    return start, now_ns(), paths


def run_services(args: argparse.Namespace, tmp: Path) -> None:
    bootstrap = broker_address()
    wait_for_broker(bootstrap, 60)
    namespace = f"bench{uuid.uuid4().hex[:10]}."
    settings = KafkaSettings(bootstrap=bootstrap, namespace=namespace)
    repo, landing = tmp / "repo", tmp / "landing"
    with Butler.create(repo, actor="bus_bench") as butler:
        load_instrument("SimCam").register(butler.registry)
    landing.mkdir()
    topics = settings.topics()
    ensure_topics(bootstrap, topics)
    log(f"broker: {bootstrap}, topic namespace {namespace}")
    env = dict(os.environ)
    env.update(
        OBSBUS_KAFKA_BOOTSTRAP=bootstrap,
        OBSBUS_KAFKA_NAMESPACE=namespace,
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
    )
    services = Services(repo, landing, tmp / "logs", env, args.transfer)
    tracker = Tracker(settings)
    try:
        started = time.monotonic()
        services.start("registry", "registry")
        services.start("calib", "calib")
        workers = [f"ingest-{k}" for k in range(1, args.ingest_workers + 1)]
        for name in workers:
            services.start("ingest", name)
        services.start("watcher", "watcher")
        tracker.start()
        services.wait_ready(90)
        log(
            "services: "
            + ", ".join(f"{n} (pid {p.pid})" for n, p in services.procs.items())
            + f"; all polling after {time.monotonic() - started:.1f} s"
        )
        measure(args, landing, services, tracker, workers)
    finally:
        services.stop()
        tracker.stop()
        counters = services.status_files()
        if counters:
            for name, status in counters.items():
                shown = {
                    k: status[k]
                    for k in ("consumed", "produced", "failed", "dead_lettered", "retried", "lag")
                    if k in status
                } | {
                    k: f"{status[k]:.2f}"
                    for k in ("handle_s", "produce_s", "commit_s")
                    if k in status
                }
                log(f"counters {name}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        if not args.keep_topics:
            delete_topics(bootstrap, [t.name for t in topics])


def measure(
    args: argparse.Namespace,
    landing: Path,
    services: Services,
    tracker: Tracker,
    workers: list[str],
) -> None:
    detectors = None if args.detectors >= len(DETECTORS) else list(range(args.detectors))
    # Warm-up: one small exposure per partition of the arrivals topic.
    warm_start = time.monotonic()
    when = str(ns_to_iso(now_ns()))
    warm: list[str] = []
    for seq in warm_up_seqs(landing, when):
        warm += [str(p) for p in write_exposure(landing, seq, when, detectors=WARM_UP_DETECTORS)]
    if not wait_for_outcomes(tracker, warm, time.monotonic() + 120, services):
        raise SystemExit(f"bus_bench: the warm-up did not finish in 120 s\n{services.logs()}")
    tracker.read_back()
    with tracker._lock:
        owner = {
            arrivals_partition(str(Path(p).parent)): tracker.commands[p].value["issued_by"]
            for p in warm
            if p in tracker.commands
        }
    log(f"warm-up: {len(warm)} files in {time.monotonic() - warm_start:.1f} s")
    log(
        "raw.arrivals partition -> ingest worker: "
        + ", ".join(f"{p}:{owner.get(p, '?')}" for p in range(RAW_ARRIVALS.partitions))
    )
    staging = landing.parent / "staging"
    staged = [stage(staging, k + 1, detectors) for k in range(args.exposures)]
    log(f"staged {sum(map(len, staged))} files in {staging}; each burst lands by renames")
    log(f"load average (1 min) at the first burst: {load_1min():.2f}")

    broker = None if os.environ.get("OBSBUS_KAFKA_BOOTSTRAP") else broker_pid()
    cpu_before = {**services.cpu(), "broker": cpu_seconds(broker)}
    own_before = time.process_time()
    wall_before = time.monotonic()
    bursts: list[Burst] = []
    next_at = time.monotonic()
    for k in range(args.exposures):
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at = time.monotonic() + args.interval
        start, landed, paths = land(staging, landing, staged[k])
        bursts.append(Burst(k + 1, k + 1, start, landed, paths))
    everything = [p for b in bursts for p in b.paths]
    done = wait_for_outcomes(tracker, everything, time.monotonic() + args.timeout, services)
    cpu_after = {**services.cpu(), "broker": cpu_seconds(broker)}
    own_cpu = time.process_time() - own_before
    wall = time.monotonic() - wall_before
    time.sleep(0.5)  # let the follower take any last messages
    tracker.read_back()
    if not done:
        missing = len(everything) - tracker.outcome_count(everything)
        log(f"TIMEOUT: {missing} of {len(everything)} files had no outcome after {args.timeout} s")
    report(bursts, tracker, owner, workers)
    files = max(1, tracker.outcome_count(everything))
    log(
        f"CPU used from the first burst to the last outcome ({wall:.1f} s wall, "
        f"{os.cpu_count()} CPUs; per file = CPU seconds / {files} files):"
    )
    used: dict[str, float] = {}
    for name in [*services.procs, "broker"]:
        before, after = cpu_before.get(name), cpu_after.get(name)
        if before is not None and after is not None:
            used[name] = after - before
    used["bus_bench (landing renames + topic follower)"] = own_cpu
    for name, cpu in used.items():
        log(f"  cpu {name}: {cpu:.2f} s, {1000 * cpu / files:.2f} ms/file")
    total = sum(used.values())
    log(f"  cpu all of the above: {total:.2f} s ({total / wall:.2f} cores busy on average)")
    log(f"load average (1 min) after the bursts: {load_1min():.2f}")
    if tracker.dead_letters:
        log(f"dead letters: {tracker.dead_letters}")


@dataclass
class FileTimes:
    burst: int
    landed: int
    mtime: int | None
    detected: int | None
    ingested: int | None  # the RegistryCommand's issued_at_ns (the ingest handler built it)
    command_sent: int | None
    worker: str | None
    decided: int | None  # IngestOutcome.finished_at_ns (inside the registry's transaction)
    outcome_sent: int | None  # after the registry's commit and flush
    received: int | None
    status: str | None


def file_times(bursts: Sequence[Burst], tracker: Tracker) -> list[FileTimes]:
    tai_minus_unix = tai_minus_unix_ns()
    out = []
    with tracker._lock:
        for b in bursts:
            for path in b.paths:
                arrival = tracker.arrivals.get(path)
                command = tracker.commands.get(path)
                outcome = tracker.outcomes.get(path)
                out.append(
                    FileTimes(
                        burst=b.index,
                        landed=b.landed_ns,
                        mtime=None
                        if arrival is None
                        else arrival.value["mtime_ns"] + tai_minus_unix,
                        detected=None if outcome is None else outcome.value["detected_at_ns"],
                        ingested=None if command is None else command.value["issued_at_ns"],
                        command_sent=None if command is None else command.sent_ns,
                        worker=None if command is None else command.value["issued_by"],
                        decided=None if outcome is None else outcome.value["finished_at_ns"],
                        outcome_sent=None if outcome is None else outcome.sent_ns,
                        received=None if outcome is None else outcome.received_ns,
                        status=None if outcome is None else outcome.value["status"],
                    )
                )
    return out


def seconds(
    files: Sequence[FileTimes],
    begin: Callable[[FileTimes], int | None],
    end: Callable[[FileTimes], int | None],
) -> list[float]:
    out = []
    for f in files:
        b, e = begin(f), end(f)
        if b is not None and e is not None:
            out.append((e - b) / NS)
    return out


def _landed(f: FileTimes) -> int | None:
    return f.landed


def _decided(f: FileTimes) -> int | None:
    return f.decided


STAGES: tuple[
    tuple[str, Callable[[FileTimes], int | None], Callable[[FileTimes], int | None]], ...
] = (
    ("landing->detected (watcher: scan + settle)", lambda f: f.landed, lambda f: f.detected),
    ("file written (mtime)->detected", lambda f: f.mtime, lambda f: f.detected),
    (
        "detected->ingested (arrivals queue + ingest handler)",
        lambda f: f.detected,
        lambda f: f.ingested,
    ),
    (
        "ingested->command sent (rest of the ingest batch)",
        lambda f: f.ingested,
        lambda f: f.command_sent,
    ),
    (
        "command sent->outcome decided (registry queue + apply)",
        lambda f: f.command_sent,
        lambda f: f.decided,
    ),
    (
        "outcome decided->published (registry commit + flush)",
        lambda f: f.decided,
        lambda f: f.outcome_sent,
    ),
    ("published->seen by a consumer", lambda f: f.outcome_sent, lambda f: f.received),
)


def report(
    bursts: Sequence[Burst], tracker: Tracker, owner: dict[int, str], workers: list[str]
) -> None:
    files = file_times(bursts, tracker)
    finished = [f for f in files if f.decided is not None]
    statuses = Counter(f.status for f in finished)
    log(f"files landed: {len(files)} in {len(bursts)} burst(s)")
    log("outcomes: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items(), key=str)))
    if not finished:
        return
    first_landing = min(b.landed_ns for b in bursts)
    first_write = min(b.write_start_ns for b in bursts)
    last = max(f.decided for f in finished if f.decided is not None)
    last_published = max(f.outcome_sent for f in finished if f.outcome_sent is not None)
    log(
        f"sustained throughput (first landing -> last outcome): "
        f"{len(finished) / max((last - first_landing) / NS, 1e-9):.1f} files/s "
        f"(target {TARGET_FILES_PER_S:,.0f})"
    )
    log(f"run length (first landing -> last outcome): {(last - first_landing) / NS:.2f} s")
    log(
        f"sustained throughput (start of the first write -> last outcome published): "
        f"{len(finished) / max((last_published - first_write) / NS, 1e-9):.1f} files/s"
    )
    for b in bursts:
        mine = [f for f in files if f.burst == b.index]
        partition = arrivals_partition(str(Path(b.paths[0]).parent))
        used = Counter(f.worker for f in mine if f.worker is not None)
        log(
            f"burst {b.index}: seq {b.seq}, {len(b.paths)} files, landed in "
            f"{(b.landed_ns - b.write_start_ns) / NS:.2f} s, arrivals partition {partition} "
            f"(owner {owner.get(partition, '?')}); handled by "
            + ", ".join(f"{w} ({n})" for w, n in sorted(used.items()))
        )
        latency = seconds(mine, _landed, _decided)
        if latency:
            log(f"burst {b.index} latency p50: {percentile(latency, 50):.3f} s")
            log(
                f"burst {b.index} latency p99: {percentile(latency, 99):.3f} s "
                f"(target {TARGET_P99_S} s)"
            )
            log(f"burst {b.index} latency max: {max(latency):.3f} s")
        log(
            f"burst {b.index} latency detected->outcome (watcher's detected_at_ns): "
            + spread(seconds(mine, lambda f: f.detected, lambda f: f.decided))
        )
        log(
            f"burst {b.index} latency landing->outcome published (after the registry commit): "
            + spread(seconds(mine, lambda f: f.landed, lambda f: f.outcome_sent))
        )
        for name, begin, end in STAGES:
            log(f"burst {b.index} split {name}: {spread(seconds(mine, begin, end))}")
    met = sum(
        1
        for b in bursts
        if (lat := seconds([f for f in files if f.burst == b.index], _landed, _decided))
        and percentile(lat, 99) < TARGET_P99_S
    )
    log(f"bursts meeting the p99 < {TARGET_P99_S} s target: {met} of {len(bursts)}")
    log("all bursts latency landing->outcome: " + spread(seconds(files, _landed, _decided)))
    per_worker = Counter(f.worker for f in files if f.worker is not None)
    log("files per ingest worker: " + ", ".join(f"{w} {per_worker.get(w, 0)}" for w in workers))


def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Remove this run's namespaced topics (nobody else uses the namespace)."""
    from kafka import KafkaAdminClient

    try:
        client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="obsbus-bus-bench")
        try:
            client.delete_topics(names, timeout_ms=30_000)
        finally:
            client.close()
    except Exception as err:  # cleanup only: say so and go on
        log(f"could not delete the bench topics ({type(err).__name__}: {err})")


# --- in-process profile of the handlers -----------------------------------------------------


def arrival_for(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {
        "arrival_id": str(uuid.uuid4()),
        "path": str(path),
        "folder": str(path.parent),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "detected_at_ns": now_ns(),
        "watcher": "bus-bench",
    }


_OFFSETS = itertools.count()


def incoming(
    topic: str, messages: Sequence[tuple[str | None, str, dict[str, Any]]]
) -> list[Incoming]:
    """What the service loop would hand a handler: encoded, then decoded, like off the wire."""
    out = []
    first = next(_OFFSETS)  # distinct offsets: the registry skips (topic, partition, offset) seen
    for offset, (key, record, value) in enumerate(messages, start=first * 1_000_000):
        data = codec.encode(record, value)
        raw_key = None if key is None else key.encode()
        decoded = codec.decode(data)
        delivery = Delivery(topic, 0, offset, raw_key, data, 0)
        out.append(Incoming(delivery, decoded.record_name, decoded.value))
    return out


@dataclass
class Profiled:
    name: str
    files: int
    wall_s: float  # without the profiler
    stats: pstats.Stats | None


def profile_handlers(tmp: Path, top: int, transfer: str) -> None:
    repo, landing = tmp / "profile-repo", tmp / "profile-landing"
    with Butler.create(repo, actor="bus_bench") as butler:
        load_instrument("SimCam").register(butler.registry)
    when = str(ns_to_iso(now_ns()))
    timed_files = write_exposure(landing, 1, when)  # timed without the profiler
    profiled_files = write_exposure(landing, 2, when)  # profiled
    results: list[Profiled] = []
    with Butler.open(repo, actor="bus_bench") as butler:
        ingest = IngestHandler(butler, transfer=transfer, name="bus-bench")
        registry = RegistryHandler(butler.registry, "bus-bench-registry")
        ingest(incoming(RAW_ARRIVALS.name, [(None, "RawArrival", arrival_for(timed_files[0]))]))
        commands: dict[str, list[Outgoing]] = {}
        for label, files in (("timed", timed_files[1:]), ("profiled", profiled_files)):
            batch = incoming(
                RAW_ARRIVALS.name,
                [(str(p.parent), RAW_ARRIVALS.record, arrival_for(p)) for p in files],
            )
            profiler = cProfile.Profile() if label == "profiled" else None
            t0 = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            commands[label] = ingest(batch)
            for out in commands[label]:  # what the loop does next with each output
                codec.encode(out.record, out.value)
            if profiler is not None:
                profiler.disable()
            wall = time.perf_counter() - t0
            results.append(
                Profiled(
                    "ingest handler (+ encode of its commands)",
                    len(files),
                    wall,
                    None if profiler is None else pstats.Stats(profiler),
                )
            )
        for label in ("timed", "profiled"):
            batch = incoming(
                REGISTRY_COMMANDS.name, [(o.key, o.record, o.value) for o in commands[label]]
            )
            profiler = cProfile.Profile() if label == "profiled" else None
            t0 = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            answers = registry(batch)
            for out in answers:
                codec.encode(out.record, out.value)
            if profiler is not None:
                profiler.disable()
            wall = time.perf_counter() - t0
            results.append(
                Profiled(
                    "registry handler (one batch, one transaction; + encode of its answers)",
                    len(batch),
                    wall,
                    None if profiler is None else pstats.Stats(profiler),
                )
            )
    for r in results:
        if r.stats is None:
            log(f"in-process {r.name}: {r.files} files in {r.wall_s:.2f} s")
            log(f"in-process {r.name}: {1000 * r.wall_s / r.files:.2f} ms/file")
            log(f"in-process {r.name}: {r.files / r.wall_s:.1f} files/s")
    for r in results:
        if r.stats is not None:
            log(
                f"profile of the {r.name}, {r.files} files "
                f"({1000 * r.wall_s / r.files:.2f} ms/file under cProfile):"
            )
            show_profile(r.stats, r.files, top)
    watcher_scan_cost(landing)


def short(filename: str) -> str:
    for marker in ("/site-packages/", str(PROJECT_ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


Row = tuple[tuple[str, int, str], tuple[int, int, float, float, Any]]


def show_profile(stats: pstats.Stats, files: int, top: int) -> None:
    """Top functions by own time, and by cumulative time (obsbus's, then libraries'), per file."""
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in table.values())
    log(f"  total {1000 * total / files:.2f} ms/file (own times summed)")

    def show(title: str, rows: list[Row], column: int) -> None:
        log(f"  {title} (ms/file, share, calls/file, function):")
        for (filename, line, func), numbers in rows[:top]:
            t, calls = numbers[column], numbers[1]
            log(
                f"    {1000 * t / files:7.3f}  {100 * t / total:5.1f}%  {calls / files:7.1f}  "
                f"{short(filename)}:{line}({func})"
            )

    ours = str(PROJECT_ROOT / "services")
    rows = list(table.items())
    show("by own time", sorted(rows, key=lambda kv: kv[1][2], reverse=True), 2)
    by_cumulative = sorted(rows, key=lambda kv: kv[1][3], reverse=True)
    show("obsbus functions by cumulative time", [r for r in by_cumulative if ours in r[0][0]], 3)
    libraries = [
        r
        for r in by_cumulative
        if "/site-packages/" in r[0][0] and r[0][2] not in ("<module>", "<listcomp>")
    ]
    show("library functions by cumulative time", libraries, 3)


def watcher_scan_cost(landing: Path) -> None:
    """Steady-state cost of one watcher scan (every 0.1 s) per file already in the folder."""
    files = sum(1 for _ in landing.rglob("*.fits"))
    watcher = Watcher(MemoryBus({RAW_ARRIVALS.name: RAW_ARRIVALS.partitions}), [landing], "b", 0)
    watcher.scan()  # candidates
    watcher.scan()  # published
    rounds = 20
    t0 = time.perf_counter()
    for _ in range(rounds):
        watcher.scan()
    per_scan = (time.perf_counter() - t0) / rounds
    log(f"watcher steady-state scan of {files} published files: {1000 * per_scan:.2f} ms")
    log(
        f"watcher scan cost per file already landed: {1e6 * per_scan / files:.1f} µs "
        f"(10 scans/s: {100 * 10 * per_scan / files * 1000:.1f}% of a core per 1,000 files)"
    )


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exposures", type=int, default=3, help="bursts (205 files each)")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between bursts")
    p.add_argument("--ingest-workers", type=int, default=2, help="`serve ingest` processes")
    p.add_argument("--detectors", type=int, default=len(DETECTORS), help="files per burst")
    p.add_argument(
        "--transfer",
        default="copy",
        choices=["copy", "hardlink", "direct"],
        help="the ingest workers' datastore transfer (`serve ingest --transfer`)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for outcomes")
    p.add_argument("--no-profile", action="store_true", help="skip the in-process profile")
    p.add_argument(
        "--profile-only", action="store_true", help="only the in-process profile (no broker)"
    )
    p.add_argument("--top", type=int, default=15, help="functions shown per profile")
    p.add_argument("--keep-topics", action="store_true", help="leave the bench topics")
    p.add_argument("--quiet-load", type=float, default=1.5, help="1-min load to wait for")
    p.add_argument("--quiet-wait", type=float, default=0.0, help="max seconds to wait for it")
    args = p.parse_args(argv)
    if args.exposures < 1 or args.ingest_workers < 1 or not 1 <= args.detectors <= 205:
        p.error("need --exposures >= 1, --ingest-workers >= 1, 1 <= --detectors <= 205")
    wait_for_quiet(args.quiet_load, args.quiet_wait)
    log(f"load average (1 min) at start: {load_1min():.2f} ({os.cpu_count()} CPUs)")
    log(f"code: {code_version()}, Python {sys.version.split()[0]}")
    log(f"ingest transfer: {args.transfer}")
    if not args.profile_only:
        log(
            f"{args.exposures} burst(s) of {args.detectors} files, interval {args.interval:g} s, "
            f"{args.ingest_workers} ingest worker(s)"
        )
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="obsbus-bus-bench-"))
    try:
        if not args.profile_only:
            run_services(args, tmp)
        if not args.no_profile:
            profile_handlers(tmp, args.top, args.transfer)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"bench run time: {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
