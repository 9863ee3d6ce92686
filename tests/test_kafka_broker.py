"""A real Kafka broker: topic administration (services/bus/admin.py) and a message round trip.

``make test`` starts the local broker (``deploy/kafka.sh``) and exports ``OBSBUS_TEST_KAFKA``
(its bootstrap address). Without it the tests skip, except under CI (env ``CI`` set), where
skipping Kafka is an error. The broker is shared: every test works on topics with a unique
prefix and deletes them afterwards; only the real topics of topics.py are left in place.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.bus.admin import ensure_topics, wait_for_broker
from services.bus.topics import ALL_TOPICS, KEEP_FOREVER, Topic
from services.core.errors import BusError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "kafka.sh"
ENV = "OBSBUS_TEST_KAFKA"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def bootstrap() -> str:
    value = os.environ.get(ENV)
    if not value:
        reason = f"{ENV} is not set (run `make test`, which starts Kafka)"
        if _in_ci():
            pytest.fail(f"{reason}; CI must not skip the Kafka tests")
        pytest.skip(reason)
    wait_for_broker(value, timeout_s=60)
    return value


@pytest.fixture
def admin(bootstrap: str) -> Iterator[Any]:
    from kafka import KafkaAdminClient

    client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="obsbus-test")
    yield client
    client.close()


@pytest.fixture
def prefix(admin: Any) -> Iterator[str]:
    """A unique topic-name prefix; every topic under it is deleted after the test."""
    value = f"obsbus-test.{uuid.uuid4().hex[:10]}."
    yield value
    mine = [t for t in admin.list_topics() if t.startswith(value)]
    if mine:
        admin.delete_topics(mine)


def _renamed(prefix: str) -> list[Topic]:
    return [dataclasses.replace(t, name=prefix + t.name) for t in ALL_TOPICS]


def _partitions(admin: Any, names: list[str]) -> dict[str, int]:
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}


def _retention(admin: Any, name: str) -> int:
    from kafka.admin import ConfigResource, ConfigResourceType

    configs = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all"
    )
    return int(configs["topic"][name]["retention.ms"]["value"])


def test_script_status_and_bootstrap(bootstrap: str) -> None:
    out = subprocess.run(
        ["bash", str(SCRIPT), "bootstrap"], capture_output=True, text=True, timeout=30, check=True
    )
    if out.stdout.strip() != bootstrap:
        pytest.skip(f"{ENV}={bootstrap} is not the broker of deploy/kafka.sh")
    status = subprocess.run(
        ["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=30, check=False
    )
    assert status.returncode == 0, status.stdout + status.stderr


def test_ensure_topics_creates_each_topic_as_the_table_says(
    bootstrap: str, admin: Any, prefix: str
) -> None:
    topics = [*_renamed(prefix), Topic(prefix + "short-lived", "X", "k", 2, retention_ms=3_600_000)]
    names = [t.name for t in topics]

    assert ensure_topics(bootstrap, topics) == sorted(names)

    assert _partitions(admin, names) == {t.name: t.partitions for t in topics}
    for t in topics:
        assert _retention(admin, t.name) == t.retention_ms, t.name
    assert _retention(admin, prefix + ALL_TOPICS[0].name) == KEEP_FOREVER

    # Idempotent: a second call creates nothing and changes nothing.
    assert ensure_topics(bootstrap, topics) == []
    assert _partitions(admin, names) == {t.name: t.partitions for t in topics}


def test_ensure_topics_real_table_is_idempotent(bootstrap: str, admin: Any) -> None:
    ensure_topics(bootstrap)  # creates what is missing on this broker, if anything
    assert ensure_topics(bootstrap) == []
    names = [t.name for t in ALL_TOPICS]
    actual = _partitions(admin, names)
    for t in ALL_TOPICS:
        assert actual[t.name] >= t.partitions, t.name


def test_fewer_partitions_than_the_table_is_a_clear_error(
    bootstrap: str, admin: Any, prefix: str
) -> None:
    name = prefix + "too-few"
    admin.create_topics({name: {"num_partitions": 1, "replication_factor": 1}})
    admin.wait_for_topics([name])
    wanted = Topic(name, "X", "k", 3)

    with pytest.raises(BusError, match=r"has 1 partition\(s\) but obsbus needs 3") as err:
        ensure_topics(bootstrap, [wanted])
    assert name in str(err.value)
    assert err.value.code == "bus"

    # More partitions than the table is accepted (someone scaled the topic up).
    assert ensure_topics(bootstrap, [dataclasses.replace(wanted, partitions=1)]) == []


def test_too_many_replicas_is_refused_clearly(bootstrap: str, admin: Any, prefix: str) -> None:
    brokers = len(admin.describe_cluster()["brokers"])
    topic = Topic(prefix + "over-replicated", "X", "k", 1)
    with pytest.raises(BusError, match="replication factor"):
        ensure_topics(bootstrap, [topic], replication_factor=brokers + 1)


def test_produce_consume_round_trip(bootstrap: str, prefix: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    topic = Topic(prefix + "round-trip", "X", "k", 2)
    ensure_topics(bootstrap, [topic])
    payload = uuid.uuid4().bytes
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    try:
        meta = producer.send(
            topic.name, key=b"exposure-1", value=payload, headers=[("kind", b"test")]
        ).get(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic.name,
        bootstrap_servers=bootstrap,
        group_id=prefix + "group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    try:
        received = []
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend(records)
        assert len(received) == 1
        (record,) = received
        assert (record.partition, record.offset) == (meta.partition, meta.offset)
        assert (record.key, record.value) == (b"exposure-1", payload)
        assert list(record.headers) == [("kind", b"test")]
        consumer.commit()
    finally:
        consumer.close()


def test_wait_for_broker_gives_up_clearly() -> None:
    """No broker needed: a closed port fails within the timeout, with what to do."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(BusError, match="make kafka"):
        wait_for_broker(f"127.0.0.1:{port}", timeout_s=2)
    assert time.monotonic() - start < 15
