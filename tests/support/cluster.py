"""A private 3-broker Kafka cluster for fault tests, run by deploy/cluster/cluster.sh.

Its storage, logs and pid files live in a temporary folder and its six ports are chosen free,
so it clashes neither with the shared broker of ``deploy/kafka.sh`` nor with another run. It
is only ever stopped through the pids the script recorded.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from services.bus.admin import ensure_topics
from tests.conftest import REPO_ROOT
from tests.support import services as services_support
from tests.support.services import Services

SCRIPT = REPO_ROOT / "deploy" / "cluster" / "cluster.sh"
BROKERS = (1, 2, 3)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_java() -> None:
    if shutil.which("java") is None:
        reason = "no java on PATH: the 3-broker cluster needs Java 17"
        if _in_ci():
            pytest.fail(f"{reason}; CI must not skip the cluster tests")
        pytest.skip(reason)


def free_port_base(count: int = 6, attempts: int = 50) -> int:
    """An even port from which ``count`` consecutive ports are free on 127.0.0.1."""
    for _ in range(attempts):
        base = random.randrange(20000, 60000, 2)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports found")


class Cluster:
    """deploy/cluster/cluster.sh on a private folder and private ports."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.env = dict(os.environ)
        self.env.update(
            OBSBUS_CLUSTER_DIR=str(base),
            OBSBUS_CLUSTER_PORT=str(free_port_base()),
            OBSBUS_CLUSTER_PORT_STEP="2",
            OBSBUS_CLUSTER_STOP_GRACE="20",
        )

    def run(self, *args: str, timeout_s: float = 300) -> str:
        result = subprocess.run(
            ["bash", str(SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        assert result.returncode == 0, f"cluster.sh {' '.join(args)}: {result.stderr}"
        return result.stdout

    def start(self) -> None:
        self.run("start")

    def start_broker(self, n: int) -> None:
        self.run("start-broker", str(n))

    def kill(self, n: int) -> None:
        """kill -9 broker ``n`` (by its recorded pid)."""
        self.run("kill", str(n))

    def bootstrap(self) -> str:
        return self.run("bootstrap").strip()

    def running(self) -> list[int]:
        out = subprocess.run(
            ["bash", str(SCRIPT), "status"], env=self.env, capture_output=True, text=True
        ).stdout
        return [n for n in BROKERS if f"broker {n}: running" in out]

    def stop(self) -> None:
        """`cluster.sh stop`, then KILL whatever of ours it left (by the recorded pids)."""
        try:
            self.run("stop", timeout_s=120)
        finally:
            for n in BROKERS:
                pid = self._pid(n)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)

    def _pid(self, n: int) -> int | None:
        """Broker n's recorded pid, if that process is still our broker."""
        folder = self.base / f"broker-{n}"
        try:
            pid = int((folder / "kafka.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError):
            return None
        return pid if f"kafka.Kafka {folder}/server.properties".encode() in cmdline else None

    def log(self, n: int, chars: int = 3000) -> str:
        path = self.base / f"broker-{n}" / "kafka.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # --- what the brokers say ------------------------------------------------------------------

    def describe(self, topics: Iterable[str] | None = None) -> list[dict[str, Any]]:
        from kafka import KafkaAdminClient

        client = KafkaAdminClient(
            bootstrap_servers=self.bootstrap(),
            client_id="pytest-cluster",
            bootstrap_timeout_ms=30_000,
            request_timeout_ms=30_000,
        )
        try:
            return list(client.describe_topics(None if topics is None else list(topics)))
        finally:
            client.close()

    def leaders(self, topics: Iterable[str]) -> Counter[int]:
        """How many partitions of ``topics`` each broker leads."""
        return Counter(int(p["leader_id"]) for t in self.describe(topics) for p in t["partitions"])

    def wait_in_sync(self, timeout_s: float = 120) -> None:
        """Until every partition on the cluster has its three replicas in sync."""
        deadline = time.monotonic() + timeout_s
        while True:
            lagging = [
                f"{t['name']}-{p['partition_index']}"
                for t in self.describe()
                for p in t["partitions"]
                if len(p["isr_nodes"]) < len(BROKERS)
            ]
            if not lagging:
                return
            assert time.monotonic() < deadline, f"not in sync after {timeout_s} s: {lagging}"
            time.sleep(1)


def cluster_services(
    cluster: Cluster, repo: Path, landing: Path, tmp: Path, **env: str
) -> Services:
    """``Services`` on the cluster: topics with 3 replicas, ``env`` added to the processes'."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OBSBUS_KAFKA_REPLICATION", "3")
        for key, value in env.items():
            mp.setenv(key, value)
        # Services creates its namespace's topics itself, with the default replication (1).
        replicated = functools.partial(ensure_topics, replication_factor=3)
        mp.setattr(services_support, "ensure_topics", replicated)
        return Services(repo, landing, tmp, bootstrap=cluster.bootstrap())
