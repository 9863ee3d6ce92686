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
   and the watcher's cost per landed file in scan mode (see ``--no-profile``).

Every process started is stopped by its pid (SIGTERM, SIGKILL after 15 s); temporary folders
are removed and the namespace's topics deleted (unless ``--keep-topics``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _bus_common import KAFKA_SCRIPT, PROJECT_ROOT, broker_address, delete_topics, log
from _bus_follow import Tracker
from _bus_profile import profile_handlers
from _bus_report import (
    Burst,
    _decided,
    _landed,
    arrivals_partition,
    file_times,
    percentile,
    report,
    seconds,
)

from services.bus.admin import ensure_topics, wait_for_broker
from services.bus.config import KafkaSettings
from services.bus.topics import (
    RAW_ARRIVALS,
)
from services.butler import Butler
from services.core.timespan import now_ns, ns_to_iso
from services.instruments import load_instrument
from services.instruments.simcam import write_exposure
from services.instruments.simcam.generator import day_obs_of, raw_path, to_tai
from services.instruments.simcam.instrument import DETECTORS

WARM_UP_DETECTORS = (0, 1)
WARM_UP_FIRST_SEQ = 90_000  # warm-up exposures' SEQNUMs (the bursts use 1..K)
STOP_GRACE_S = 15.0


# --- the broker and the machine -------------------------------------------------------------


def broker_pid() -> int | None:
    """The local broker's pid (for its CPU time), if deploy/kafka.sh runs one."""
    status = subprocess.run(["bash", str(KAFKA_SCRIPT), "status"], capture_output=True, text=True)
    found = re.search(r"\bpid (\d+)", status.stdout)
    return int(found.group(1)) if found and status.returncode == 0 else None


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
        if args.dashboard != "off":
            env["OBSBUS_DASHBOARD_PORT"] = "0"
            services.start("dashboard", "dashboard")
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
            arrivals_partition(str(Path(p).parent)): tracker.commands[p].message.issued_by
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
        if args.dashboard == "alternate":  # odd bursts with it, even ones with it stopped
            running = k % 2 == 0
            os.kill(services.procs["dashboard"].pid, signal.SIGCONT if running else signal.SIGSTOP)
            log(f"burst {k + 1}: dashboard {'running' if running else 'stopped (SIGSTOP)'}")
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
    if args.dashboard == "alternate":
        os.kill(services.procs["dashboard"].pid, signal.SIGCONT)
    report(bursts, tracker, owner, workers)
    if args.dashboard == "alternate":
        dashboard_ratio(bursts, tracker)
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


def dashboard_ratio(bursts: Sequence[Burst], tracker: Tracker) -> None:
    """p99 of the bursts with the dashboard running against those with it stopped."""
    files = file_times(bursts, tracker)
    p99 = {
        b.index: percentile(
            seconds([f for f in files if f.burst == b.index], _landed, _decided), 99
        )
        for b in bursts
    }
    with_it = [v for i, v in p99.items() if i % 2 == 1]
    without = [v for i, v in p99.items() if i % 2 == 0]
    if with_it and without:
        a, b = sorted(with_it)[len(with_it) // 2], sorted(without)[len(without) // 2]
        log(
            f"burst p99, median over bursts: dashboard running {a:.3f} s, stopped {b:.3f} s "
            f"(ratio {a / b:.2f})"
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
    p.add_argument(
        "--dashboard",
        default="off",
        choices=["off", "on", "alternate"],
        help="also run `serve dashboard` (alternate: running for odd bursts, SIGSTOPped for "
        "even ones, to compare their p99 in one run)",
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
