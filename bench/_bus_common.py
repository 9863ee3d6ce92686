"""What the bus benchmarks (bus_bench and its modules, kafka_client_bench) share."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from services.core.timespan import now_ns

NS = 1_000_000_000
PROJECT_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = PROJECT_ROOT / "deploy" / "kafka.sh"


def log(text: str) -> None:
    """The bench's output: figures on stdout (it is a benchmark, not a service)."""
    print(text, flush=True)


def tai_minus_unix_ns() -> int:
    """TAI - Unix time in ns (whole seconds between leap seconds), to put Kafka timestamps
    (Unix ms) and mtimes on the services' TAI clock (``now_ns()``)."""
    return round((now_ns() - time.time_ns()) / NS) * NS


def broker_address() -> str:
    """OBSBUS_KAFKA_BOOTSTRAP, else the local broker of deploy/kafka.sh (which must run)."""
    configured = os.environ.get("OBSBUS_KAFKA_BOOTSTRAP")
    if configured:
        return configured
    script = ["bash", str(KAFKA_SCRIPT)]
    if subprocess.run([*script, "status"], capture_output=True).returncode != 0:
        raise SystemExit(
            "no local Kafka broker for the bench; start it with `bash deploy/kafka.sh start` "
            "(or set OBSBUS_KAFKA_BOOTSTRAP)"
        )
    address = subprocess.run([*script, "bootstrap"], capture_output=True, text=True, check=True)
    return address.stdout.strip()


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
