"""`obsbus supervise`: keeps a repository's services (and the local broker it started) running.

`obsbus up` starts this process; it starts each service (`obsbus serve SERVICE REPO`) and
restarts one that exits or is killed, after a backoff that doubles with each quick crash (a
run longer than ``stable_s`` starts the count again). A service that crashes ``max_crashes``
times within ``window_s`` is left stopped and reported, with its last exit and where its log
is: a crash loop helps nobody at 3 am. Everything it knows is in ``REPO/var/run/up.json``,
rewritten on every change, so `obsbus status` shows live pids, restarts and uptimes. The
local broker (deploy/kafka.sh, when no OBSBUS_KAFKA_BOOTSTRAP is configured) is looked at
every few seconds and started again if it died. On SIGTERM (`obsbus down`) it stops the
services, then the broker if `up` started it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..core.runfiles import STATE_NAME, run_dir
from ..core.timespan import now_ns

log = structlog.get_logger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = PROJECT_ROOT / "deploy" / "kafka.sh"


class RestartPolicy(BaseSettings):
    """How services are restarted (environment ``OBSBUS_RESTART_*``)."""

    model_config = SettingsConfigDict(env_prefix="OBSBUS_RESTART_", frozen=True)

    backoff_s: float = 1.0  # first wait before a restart; doubles per quick crash
    max_backoff_s: float = 30.0
    stable_s: float = 60.0  # a run this long was not a crash loop: backoff starts again
    max_crashes: int = 5  # this many exits within window_s: left stopped, reported
    window_s: float = 300.0
    broker_check_s: float = 5.0  # how often the local broker is looked at


@dataclass
class Child:
    """One supervised service process and what happened to it."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    state: str = "starting"  # running | backoff | failed | stopped
    restarts: int = 0
    started_at_ns: int = 0
    last_exit: str = ""
    reason: str = ""
    restart_at: float = 0.0
    crashes: deque[float] = field(default_factory=deque)
    backoff_s: float = 0.0

    def start(self, env: dict[str, str]) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=out, env=env, start_new_session=True
            )
        self.state, self.started_at_ns = "running", now_ns()

    def summary(self) -> dict[str, Any]:
        return {
            "pid": self.proc.pid if self.proc is not None and self.state == "running" else None,
            "state": self.state,
            "restarts": self.restarts,
            "started_at_ns": self.started_at_ns,
            "last_exit": self.last_exit,
            "reason": self.reason,
            "log": str(self.log_path),
        }


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass
class Supervisor:
    repo: Path
    children: list[Child]
    policy: RestartPolicy
    local_broker: bool = False  # the project's own broker (deploy/kafka.sh): restart it
    broker_started: bool = False  # ... and `up` started it: stop it at the end
    state_extra: dict[str, Any] = field(default_factory=dict)
    broker: dict[str, Any] = field(default_factory=lambda: {"restarts": 0, "state": "unknown"})
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _broker_start: subprocess.Popen[str] | None = None

    def run(self, stop: threading.Event, poll_s: float = 0.2) -> None:
        env = dict(os.environ)
        for child in self.children:
            child.start(env)
            log.info("service started", service=child.name, pid=child.proc and child.proc.pid)
        self.write_state()
        if self.local_broker:
            threading.Thread(target=self._watch_broker, args=(stop,), daemon=True).start()
        try:
            while not stop.wait(poll_s):
                if any(self._check(child, env) for child in self.children):
                    self.write_state()
        finally:
            self.stop_all()

    def _check(self, child: Child, env: dict[str, str]) -> bool:
        """Reap or restart ``child``; True if its state changed."""
        now = time.monotonic()
        if child.state == "backoff" and now >= child.restart_at:
            child.restarts += 1
            child.start(env)
            log.warning(
                "service restarted",
                service=child.name,
                pid=child.proc and child.proc.pid,
                restarts=child.restarts,
            )
            return True
        if child.state != "running" or child.proc is None or child.proc.poll() is None:
            return False
        child.last_exit = describe_exit(child.proc.returncode)
        ran_s = (now_ns() - child.started_at_ns) / 1e9
        if ran_s >= self.policy.stable_s:
            child.backoff_s = 0.0
        child.crashes.append(now)
        while child.crashes and now - child.crashes[0] > self.policy.window_s:
            child.crashes.popleft()
        if len(child.crashes) >= self.policy.max_crashes:
            child.state = "failed"
            child.reason = (
                f"{child.name} stopped {len(child.crashes)} times within "
                f"{self.policy.window_s:.0f} s (last: {child.last_exit}); left stopped: see "
                f"{child.log_path}, then `obsbus down` and `obsbus up` again"
            )
            log.error(
                "service keeps crashing: left stopped", service=child.name, reason=child.reason
            )
            return True
        child.backoff_s = min(
            self.policy.max_backoff_s, max(self.policy.backoff_s, child.backoff_s * 2)
        )
        child.state, child.restart_at = "backoff", now + child.backoff_s
        log.warning(
            "service stopped unexpectedly; restarting",
            service=child.name,
            exit=child.last_exit,
            ran_s=round(ran_s, 1),
            restart_in_s=child.backoff_s,
        )
        return True

    def _watch_broker(self, stop: threading.Event) -> None:
        """The local broker: start it again if it died, on the port the services know."""
        script = ["bash", str(KAFKA_SCRIPT)]
        env = dict(os.environ)
        port = self.state_extra.get("bootstrap", "").rpartition(":")[2]
        if port.isdigit():
            env["OBSBUS_KAFKA_PORT"] = port
        while not stop.wait(self.policy.broker_check_s):
            if subprocess.run([*script, "status"], env=env, capture_output=True).returncode == 0:
                self._set_broker("running")
                continue
            log.warning("local broker is down; starting it again (deploy/kafka.sh start)")
            self._set_broker("restarting")
            with self._lock:
                if stop.is_set():
                    return
                self._broker_start = subprocess.Popen(
                    [*script, "start"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            output, _ = self._broker_start.communicate()
            result = subprocess.CompletedProcess(script, self._broker_start.returncode, output)
            if stop.is_set():
                return
            if result.returncode == 0:
                self.broker["restarts"] += 1
                log.warning("local broker restarted", restarts=self.broker["restarts"])
                self._set_broker("running")
            else:
                log.error("local broker did not start", error=result.stdout.strip()[-300:])
                self._set_broker("down")

    def _set_broker(self, state: str) -> None:
        if self.broker["state"] != state:
            self.broker["state"] = state
            self.write_state()

    def stop_all(self, timeout_s: float = 15.0) -> None:
        with self._lock:  # a broker restart under way would outlive `down`
            if self._broker_start is not None and self._broker_start.poll() is None:
                self._broker_start.terminate()
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            child.proc.terminate()  # SIGTERM: a service finishes its batch and commits
        deadline = time.monotonic() + timeout_s
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service did not stop in time; killing it", service=child.name)
                child.proc.kill()
                child.proc.wait(5)
        for child in self.children:
            if child.state != "failed":
                child.state = "stopped"
        if self.broker_started:
            subprocess.run(["bash", str(KAFKA_SCRIPT), "stop"], capture_output=True)
        log.info("services stopped")

    def write_state(self) -> None:
        with self._lock:
            state = {
                **self.state_extra,
                "supervisor_pid": os.getpid(),
                "broker_started": self.broker_started,
                "local_broker": self.local_broker,
                "broker": dict(self.broker),
                "services": {c.name: c.summary() for c in self.children},
                # Live pids, for `down` and for readers that predate "services".
                "pids": {
                    c.name: c.proc.pid
                    for c in self.children
                    if c.proc is not None and c.proc.poll() is None
                },
            }
            path = run_dir(self.repo) / STATE_NAME
            tmp = path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(state))
                tmp.replace(path)
            except OSError as err:  # a full disk costs `status` its news, not the services
                log.warning("cannot write the state file", path=str(path), error=str(err))


def service_argv(name: str, repo: Path, watch: Path) -> list[str]:
    argv = [sys.executable, "-m", "services.cli.main", "serve", name, str(repo)]
    return [*argv, "--watch", str(watch)] if name == "watcher" else argv


def cmd_supervise(args: Any) -> int:
    from ..core.logging import configure_logging

    configure_logging(json=True)
    repo: Path = args.repo.resolve()
    logs = repo / "var" / "log"
    logs.mkdir(parents=True, exist_ok=True)
    children = [
        Child(name, service_argv(name, repo, args.watch.resolve()), logs / f"{name}.log")
        for name in args.services
    ]
    supervisor = Supervisor(
        repo,
        children,
        RestartPolicy(),
        local_broker=args.local_broker,
        broker_started=args.broker_started,
        state_extra={"watch": str(args.watch.resolve()), "bootstrap": args.bootstrap or ""},
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("supervisor started", repo=str(repo), services=list(args.services))
    try:
        supervisor.run(stop)
    finally:
        (run_dir(repo) / STATE_NAME).unlink(missing_ok=True)
    return 0
