"""Services as real processes on the real broker, and the checks every fault test ends with.

Each ``Services`` has its own topic namespace on the broker, so tests never see each other's
messages. ``check_night`` is what "nothing lost, nothing duplicated" means after a fault: every
file registered exactly once, the registry identical to an in-process ``ingest-raws`` of the
same files, and a replay of the command topic identical to the live registry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from services import messages
from services.bus.admin import ensure_topics
from services.bus.config import KafkaSettings
from services.butler import Butler
from services.instruments import load_instrument
from services.registry.dump import canonical_dump
from tests.conftest import REPO_ROOT

INSTRUMENTS = ("SimCam", "HSC", "DECam")


def new_repo(path: Path, **db: Any) -> Path:
    """A repository with the instruments every service test uses."""
    with Butler.create(path, **db) as butler:
        for name in INSTRUMENTS:
            load_instrument(name).register(butler.registry)
    return path


def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("OBSBUS_TEST_KAFKA")
    if not bootstrap:
        if os.environ.get("CI"):
            pytest.fail("OBSBUS_TEST_KAFKA is not set in CI: the Kafka tests must run")
        pytest.skip("OBSBUS_TEST_KAFKA not set (run `make test`, which starts Kafka)")
    return bootstrap


class Services:
    """`obsbus serve` processes for one repository, in one topic namespace."""

    def __init__(self, repo: Path, landing: Path, tmp: Path, bootstrap: str | None = None) -> None:
        self.repo, self.landing, self.tmp = repo, landing, tmp
        self.env = dict(os.environ)
        self.env["OBSBUS_KAFKA_BOOTSTRAP"] = bootstrap or kafka_bootstrap()
        self.env["OBSBUS_KAFKA_NAMESPACE"] = f"t{uuid.uuid4().hex[:10]}."
        self.env["PYTHONPATH"] = str(REPO_ROOT)
        self.settings = KafkaSettings(
            bootstrap=self.env["OBSBUS_KAFKA_BOOTSTRAP"],
            namespace=self.env["OBSBUS_KAFKA_NAMESPACE"],
        )
        ensure_topics(self.settings.resolved_bootstrap(), self.settings.topics())
        self.bus = self.settings.bus("pytest")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, *names: str) -> None:
        for name in names:
            self.start_as(name, name)

    def start_as(self, service: str, name: str) -> None:
        """One ``serve SERVICE`` process under its own instance name (several ingest workers)."""
        argv = [sys.executable, "-m", "services.cli.main", "serve", service, str(self.repo)]
        argv += ["--name", name]
        if service == "watcher":
            argv += ["--watch", str(self.landing)]
        with (self.tmp / f"{name}.log").open("ab") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log)

    def kill9(self, *names: str) -> None:
        for name in names:
            self.procs[name].send_signal(signal.SIGKILL)
            self.procs[name].wait(30)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.bus.close()

    def alive(self) -> list[str]:
        return sorted(n for n, p in self.procs.items() if p.poll() is None)

    def messages(
        self,
        topic: str,
        until: int | Callable[[list[dict[str, Any]]], bool],
        timeout_s: float = 240,
    ) -> list[dict[str, Any]]:
        """Decoded messages of a topic from the beginning, once there are ``until`` of them
        (or once ``until(messages)`` is true)."""
        done = until if callable(until) else lambda out: len(out) >= until
        consumer = self.bus.consumer(f"pytest-{uuid.uuid4().hex[:8]}", [topic])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        try:
            while not done(out) and time.monotonic() < deadline:
                out.extend(messages.decode(d.value).to_value() for d in consumer.poll(0.5, 1000))
        finally:
            consumer.close()
        return out

    def replay(self, into: Path) -> None:
        """`obsbus replay` of this namespace's command topic into the repository ``into``."""
        result = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "replay", str(into)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.tmp.glob("*.log"))


def reference_dump(files: Sequence[Path], tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """The registry an in-process ``ingest-raws`` of ``files`` builds (copy transfer)."""
    from services.ingest.raws import RawIngester

    with Butler.open(new_repo(tmp / f"reference-{uuid.uuid4().hex[:6]}")) as butler:
        outcomes = list(RawIngester(butler).ingest(sorted(files)))
        assert {o.status for o in outcomes} == {"ingested"}
        return canonical_dump(butler.registry)


def night_findings(services: Services, files: Sequence[Path], tmp: Path) -> list[str]:
    """What is wrong after a night (empty: nothing): one raw per file, the registry as an
    in-process ingest of the same files builds it, a replay of the command topic identical."""
    findings = []
    with Butler.open(services.repo) as butler:
        raws = butler.registry.query_datasets("raw", ["SimCam/raw/all"])
        if len(raws) != len(files):
            findings.append(f"{len(raws)} raws registered for {len(files)} files")
        live = canonical_dump(butler.registry)
        live_history = canonical_dump(butler.registry, history=True)
    if live != reference_dump(files, tmp):
        findings.append("the registry differs from an in-process ingest-raws of the files")
    fresh = new_repo(tmp / f"replayed-{uuid.uuid4().hex[:6]}")
    services.replay(fresh)
    with Butler.open(fresh) as butler:
        if canonical_dump(butler.registry, history=True) != live_history:
            findings.append("a replay of the command topic differs from the live registry")
    return findings


def check_night(services: Services, files: Sequence[Path], tmp: Path) -> None:
    """Nothing lost, nothing duplicated (see ``night_findings``)."""
    assert night_findings(services, files, tmp) == [], services.logs()


class Supervised(Services):
    """`obsbus up --detach` for one repository: the supervisor and its four services.

    ``env`` changes are applied before ``up``; killing a service goes by the live pid the
    supervisor recorded, and ``stop`` is `obsbus down`.
    """

    def up(self, **env: str | None) -> dict[str, Any]:
        """`obsbus up --detach`, with ``env`` changed for it (None: unset) and the services."""
        changed = {k: v for k, v in {**self.env, **env}.items() if v is not None}
        self.obsbus("up", str(self.repo), "--watch", str(self.landing), "--detach", env=changed)
        return self.state()

    def obsbus(self, *args: str, timeout_s: float = 240, env: dict[str, str] | None = None) -> str:
        argv = [sys.executable, "-m", "services.cli.main", *args]
        result = subprocess.run(
            argv, env=env or self.env, capture_output=True, text=True, timeout=timeout_s
        )
        assert result.returncode == 0, result.stderr + self.logs()
        return result.stdout

    def state(self) -> dict[str, Any]:
        path = self.repo / "var" / "run" / "up.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def pid(self, name: str) -> int:
        pid = self.state()["services"][name]["pid"]
        assert pid is not None, f"{name} is not running: {self.state()['services'][name]}"
        return int(pid)

    def kill9(self, *names: str) -> None:
        for name in names:
            os.kill(self.pid(name), signal.SIGKILL)

    def wait_until(self, check: Callable[[dict[str, Any]], bool], timeout_s: float = 120) -> None:
        """Until ``check(up.json)`` holds."""
        deadline = time.monotonic() + timeout_s
        while not check(self.state()):
            assert time.monotonic() < deadline, f"timed out: {self.state()}\n{self.logs()}"
            time.sleep(0.2)

    def alive(self) -> list[str]:
        services = self.state().get("services", {})
        return sorted(n for n, s in services.items() if s["state"] == "running")

    def stop(self) -> None:
        if self.state():
            self.obsbus("down", str(self.repo))
        self.bus.close()

    def logs(self) -> str:
        return "\n".join(
            p.name + ": " + p.read_text(errors="replace")[-3000:]
            for p in sorted((self.repo / "var" / "log").glob("*.log"))
        )


def land_exposure(landing: Path, seq: int, detectors: int) -> list[Path]:
    """SimCam exposure ``seq`` of a test night (one minute apart), ``detectors`` files."""
    from services.instruments.simcam import write_exposure

    start = f"2024-11-26T{1 + seq // 60:02d}:{seq % 60:02d}:00"
    return write_exposure(landing, seq, start, detectors=range(detectors))


def all_outcomes(services: Services, files: Sequence[Path]) -> list[dict[str, Any]]:
    """The ingest outcomes, once every file has one (repeats included)."""
    from services.bus.topics import INGEST_OUTCOMES

    wanted = {str(f) for f in files}
    outcomes = services.messages(
        INGEST_OUTCOMES.name, lambda out: {o["file"] for o in out} >= wanted
    )
    assert {o["file"] for o in outcomes} >= wanted, services.logs()
    return outcomes


def free_port_pair() -> int:
    """A free port whose successor is free too (a broker's client and controller ports)."""
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
