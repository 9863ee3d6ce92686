"""A summit night on a real 3-broker cluster (replication 3, min.insync.replicas 2) that loses
brokers: the services run as real processes, and the cluster is a private one started by
deploy/cluster/cluster.sh in a temporary folder (stopped by its pids at the end).

- Losing one broker (kill -9, mid-exposure) loses nothing: every file is registered exactly
  once, the registry is what an in-process ingest-raws of the same files builds, and a replay
  of the command topic is identical (``check_night``).
- Losing two (no quorum, too few in-sync replicas) makes a write through obsbus fail loudly
  (BusError once the delivery timeout has passed) instead of being dropped; what was
  acknowledged before is still there. Files landed meanwhile are registered once a broker
  comes back, by the same service processes, which waited instead of exiting.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from services.bus.admin import ensure_topics
from services.bus.config import KafkaSettings
from services.bus.topics import INGEST_OUTCOMES, RAW_ARRIVALS, REGISTRY_COMMANDS, Topic
from services.bus.transport import KafkaBus
from services.core.errors import BusError
from services.instruments.simcam import write_exposure
from tests.support.cluster import Cluster, cluster_services, require_java
from tests.support.services import Services, check_night, new_repo

pytestmark = pytest.mark.timeout(900)

DETECTORS = 40  # files per exposure: enough to be mid-exposure when a broker dies
SERVICES = ("ingest", "registry", "watcher")
# How long an unacknowledged message may wait before a producer is told (services and the
# writer below): short, so that losing two brokers fails loudly within the test.
DELIVERY_TIMEOUT_S = 35.0
REGISTERED_WITHIN_S = 240.0  # every wait is bounded
READ_S = 60.0  # one look at the outcomes topic


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_java()
    running = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        started = time.monotonic()
        running.start()
        print(f"cluster of 3 up in {time.monotonic() - started:.1f} s")
        yield running
    finally:
        running.stop()


@pytest.fixture
def healthy(cluster: Cluster) -> Cluster:
    """The cluster with its three brokers (a test before may have left some down)."""
    cluster.start()
    cluster.wait_in_sync()
    return cluster


@pytest.fixture
def services(healthy: Cluster, tmp_path: Path) -> Iterator[Services]:
    landing = tmp_path / "landing"
    landing.mkdir()
    running = cluster_services(
        healthy,
        new_repo(tmp_path / "repo"),
        landing,
        tmp_path,
        OBSBUS_KAFKA_DELIVERY_TIMEOUT_S=str(DELIVERY_TIMEOUT_S),
    )
    for info in healthy.describe(t.name for t in running.settings.topics()):
        assert {len(p["replica_nodes"]) for p in info["partitions"]} == {3}, info
    yield running
    running.stop()


def land(services: Services, seq: int) -> list[Path]:
    """SimCam exposure ``seq`` of the night (a minute apart), DETECTORS files."""
    start = f"2024-11-26T03:{seq:02d}:00"
    return write_exposure(services.landing, seq, start, detectors=range(DETECTORS))


def outcomes_until(
    services: Services, done: Callable[[set[str]], bool], timeout_s: float
) -> set[str]:
    """The files that have an ingest outcome, once ``done(files)`` (or after timeout_s).

    Each look is a new consumer reading from the beginning, for READ_S at most: a consumer
    that kafka-python left without partitions (seen after a broker returned, rarely) or
    whose poll failed on the dead broker (it picked that node to find the group
    coordinator) does not use up the whole bound."""
    deadline = time.monotonic() + timeout_s
    files: set[str] = set()
    while not done(files) and time.monotonic() < deadline:
        window = max(1.0, min(READ_S, deadline - time.monotonic()))
        try:
            messages = services.messages(
                INGEST_OUTCOMES.name, lambda out: done({o["file"] for o in out}), window
            )
        except BusError:
            time.sleep(1)
            continue
        assert {o["status"] for o in messages} <= {"ingested"}, services.logs()
        files |= {o["file"] for o in messages}  # outcomes are only ever added
    return files


def wait_registered(services: Services, files: Sequence[Path]) -> float:
    """Seconds until every file has its outcome (all ``ingested``); fails after the bound."""
    started = time.monotonic()
    wanted = {str(f) for f in files}
    got = outcomes_until(services, lambda have: have >= wanted, REGISTERED_WITHIN_S)
    missing = wanted - got
    assert not missing, (
        f"{len(missing)} of {len(wanted)} files have no outcome after "
        f"{REGISTERED_WITHIN_S:g} s\n{services.logs()}"
    )
    return time.monotonic() - started


def busiest(cluster: Cluster, services: Services, among: Sequence[int]) -> list[int]:
    """``among``, the broker leading most of the night's partitions first."""
    topics = [services.settings.namespace + t.name for t in (RAW_ARRIVALS, REGISTRY_COMMANDS)]
    leads = cluster.leaders([*topics, services.settings.namespace + INGEST_OUTCOMES.name])
    return sorted(among, key=lambda n: (-leads[n], n))


def test_one_broker_killed_mid_night_loses_nothing(
    healthy: Cluster, services: Services, tmp_path: Path
) -> None:
    services.start(*SERVICES)
    files = land(services, 1)
    print(f"exposure 1 registered in {wait_registered(services, files):.1f} s")
    second = land(services, 2)
    files += second
    mid = {str(f) for f in second}
    outcomes_until(services, lambda have: len(have & mid) >= 5, 120)  # part of it through

    victim = busiest(healthy, services, (1, 2, 3))[0]
    healthy.kill(victim)
    assert victim not in healthy.running()
    files += land(services, 3)
    time.sleep(3)
    files += land(services, 4)
    took = wait_registered(services, files)
    print(f"broker {victim} killed mid-exposure 2; all 4 exposures registered {took:.1f} s later")

    assert services.alive() == sorted(SERVICES), services.logs()
    # With the broker still down: the replay reads the command topic from the two others.
    check_night(services, files, tmp_path)


def test_two_brokers_lost_writes_fail_loudly_and_the_night_resumes(
    healthy: Cluster, services: Services, tmp_path: Path
) -> None:
    services.start(*SERVICES)
    files = land(services, 11)
    wait_registered(services, files)
    processes = dict(services.procs)

    # A writer through obsbus, with a topic of its own, made while the cluster is whole (a
    # producer made during the outage would first need a producer id: see the end).
    namespace = services.settings.namespace
    probe = Topic("pytest.probe", "none", "bytes", 3)
    ensure_topics(healthy.bootstrap(), [Topic(namespace + probe.name, "none", "bytes", 3)], 3)
    writer = KafkaSettings(
        bootstrap=healthy.bootstrap(), namespace=namespace, delivery_timeout_s=DELIVERY_TIMEOUT_S
    ).bus("pytest-writer")
    acknowledged = [b"before the outage"]
    writer.send(probe.name, b"k", acknowledged[0])
    writer.flush()

    down = busiest(healthy, services, (1, 2, 3))[:2]
    for n in down:
        healthy.kill(n)
    lost = time.monotonic()
    files += land(services, 12)  # lands while two are down

    result: dict[str, Any] = {}

    def write() -> None:
        started = time.monotonic()
        try:
            for i in range(5):
                writer.send(probe.name, f"k{i}".encode(), f"during the outage {i}".encode())
            writer.flush()
            result["acknowledged"] = True  # then it must be readable afterwards
        except Exception as err:  # checked below: it must be a BusError
            result["error"] = err
        result["after_s"] = time.monotonic() - started

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    thread.join(DELIVERY_TIMEOUT_S + 30)
    # Never acknowledged by one broker of three (acks=all, min.insync.replicas=2).
    assert not result.get("acknowledged"), f"a write was acknowledged during the outage: {result}"
    # Loud: BusError once the delivery timeout has passed. Checked at the end of the test, so
    # that the recovery is checked either way.
    blocked = thread.is_alive()
    where = "".join(traceback.format_stack(sys._current_frames()[thread.ident])) if blocked else ""
    if "error" in result:
        assert isinstance(result["error"], BusError), repr(result["error"])
    print(f"two brokers down: the write {'still blocks' if blocked else 'failed'} ({result})")

    files += land(services, 13)  # more files, after the services' own sends timed out
    time.sleep(max(0.0, lost + DELIVERY_TIMEOUT_S + 15 - time.monotonic()))
    # Longer without a quorum than their delivery timeout: the services wait, they do not exit.
    assert services.alive() == sorted(SERVICES), services.logs()

    healthy.start_broker(down[0])
    back = time.monotonic()
    took = wait_registered(services, files)
    print(
        f"brokers {down} down {back - lost:.1f} s; broker {down[0]} back: every file "
        f"registered {took:.1f} s later"
    )
    # Recovered by themselves: the very processes started before the outage.
    assert services.alive() == sorted(SERVICES), services.logs()
    assert all(services.procs[n] is p and p.poll() is None for n, p in processes.items())

    thread.join(60)  # a write still blocked ends once a broker is back, one way or the other
    assert not thread.is_alive(), "the write still blocks with two of three brokers up"
    if result.get("acknowledged"):  # acknowledged after the broker came back: must be there
        acknowledged += [f"during the outage {i}".encode() for i in range(5)]
    try:
        seen = read_values(writer, probe.name, len(acknowledged), 60)
        assert set(acknowledged) <= seen, f"acknowledged but lost: {set(acknowledged) - seen}"
    finally:
        writer.close()
    check_night(services, files, tmp_path)

    # Why this is not obvious (kafka-python 3.0.12): once a batch that was already sent
    # expires, kafka-python drops the idempotent producer's id and then only asks for a new
    # one (which needs the controllers' quorum), never expiring the other batches, so its
    # flush() can block until a broker returns; a producer made during the outage blocks the
    # same way. KafkaBus.flush bounds the wait itself (services/bus/transport.py): one
    # deadline for all batches (kafka-python's flush timeout is per batch), and a failed
    # flush does not connect again (that is the next send's wait, also bounded).
    assert not blocked, (
        f"send+flush with two of three brokers down blocked past "
        f"{DELIVERY_TIMEOUT_S + 30:g} s (delivery timeout {DELIVERY_TIMEOUT_S:g} s), in\n{where}"
    )


def read_values(bus: KafkaBus, topic: str, at_least: int, timeout_s: float) -> set[bytes]:
    consumer = bus.consumer(f"pytest-{uuid.uuid4().hex[:8]}", [topic])
    values: set[bytes] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < at_least and time.monotonic() < deadline:
            with contextlib.suppress(BusError):  # see outcomes_until
                values.update(d.value for d in consumer.poll(0.5, 100))
        # Messages whose write failed may be there too (at least once): never fewer.
        with contextlib.suppress(BusError):
            values.update(d.value for d in consumer.poll(2.0, 100))
    finally:
        consumer.close()
    return values
