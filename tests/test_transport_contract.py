"""The transport contract, run against the in-memory bus and the real Kafka broker alike.

Everything the service loop relies on: keyed ordering, consumer groups sharing partitions,
commit-then-resume, seek, end offsets, and the loop's dead-lettering and retries.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from services import messages
from services.bus.admin import ensure_topics
from services.bus.config import KafkaSettings
from services.bus.runner import Incoming, Outgoing, ServiceLoop
from services.bus.topics import ALL_TOPICS, DEAD_LETTERS, RAW_ARRIVALS, REGISTRY_EVENTS
from services.bus.transport import Bus, Delivery, MemoryBus
from services.core.errors import DatabaseUnavailableError
from services.messages import DeadLetter, RawArrival, RegistryEvent
from tests.support.bus import raw_arrival

TOPIC = RAW_ARRIVALS.name  # 6 partitions


@pytest.fixture(params=["memory", "kafka"])
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    if request.param == "memory":
        yield MemoryBus({t.name: t.partitions for t in ALL_TOPICS})
        return
    bootstrap = os.environ.get("OBSBUS_TEST_KAFKA")
    if not bootstrap:
        if os.environ.get("CI"):
            pytest.fail("OBSBUS_TEST_KAFKA is not set in CI: the Kafka tests must run")
        pytest.skip("OBSBUS_TEST_KAFKA not set (run `make test`, which starts Kafka)")
    settings = KafkaSettings(bootstrap=bootstrap, namespace=f"c{uuid.uuid4().hex[:10]}.")
    ensure_topics(bootstrap, settings.topics())
    kafka = settings.bus("contract")
    yield kafka
    kafka.close()


def poll_all(consumer: Any, want: int, timeout_s: float = 60) -> list[Delivery]:
    out: list[Delivery] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        out.extend(consumer.poll(0.5, 1000))
    return out


def send(bus: Bus, n: int, key: bytes | None = None, start: int = 0) -> None:
    for i in range(start, start + n):
        bus.send(TOPIC, key if key is not None else str(i).encode(), f"m{i}".encode())
    bus.flush()


def test_one_key_is_one_partition_in_order(bus: Bus) -> None:
    send(bus, 30, key=b"HSC/904024")
    consumer = bus.consumer(f"g{uuid.uuid4().hex}", [TOPIC])
    got = poll_all(consumer, 30)
    consumer.close()
    assert {d.partition for d in got} == {got[0].partition}
    assert [d.value for d in got] == [f"m{i}".encode() for i in range(30)]
    assert sum(bus.end_offsets(TOPIC).values()) == 30


def test_commit_then_a_new_member_resumes_after_it(bus: Bus) -> None:
    group = f"g{uuid.uuid4().hex}"
    send(bus, 20)
    first = bus.consumer(group, [TOPIC])
    got = poll_all(first, 20)
    assert len(got) == 20
    committed: dict[tuple[str, int], int] = {}
    for d in got[:10]:  # commit only half
        committed[(d.topic, d.partition)] = max(
            committed.get((d.topic, d.partition), 0), d.offset + 1
        )
    first.commit(committed)
    first.close()
    expected = {d.value for d in got if d.offset >= committed.get((d.topic, d.partition), 0)}
    second = bus.consumer(group, [TOPIC])
    again = poll_all(second, len(expected), timeout_s=30)
    second.close()
    assert {d.value for d in again} == expected


def test_seek_replays_from_an_offset(bus: Bus) -> None:
    send(bus, 5, key=b"k")
    consumer = bus.consumer(f"g{uuid.uuid4().hex}", [TOPIC])
    got = poll_all(consumer, 5)
    consumer.seek((TOPIC, got[0].partition), 3)
    again = poll_all(consumer, 2)
    consumer.close()
    assert [d.value for d in again] == [b"m3", b"m4"]


def test_lag_counts_what_is_not_consumed_yet(bus: Bus) -> None:
    send(bus, 10, key=b"k")  # one partition
    consumer = bus.consumer(f"g{uuid.uuid4().hex}", [TOPIC])
    got: list[Delivery] = []
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        got = consumer.poll(0.5, 4)
    assert 0 < len(got) <= 4
    assert consumer.lag() == 10 - len(got)
    poll_all(consumer, 10 - len(got))
    assert consumer.lag() == 0
    consumer.close()


def test_the_loop_dead_letters_poison_and_keeps_the_rest(bus: Bus) -> None:
    group = f"g{uuid.uuid4().hex}"

    def handler(batch: Any) -> list[Outgoing]:
        if any(item.message.path == "/poison" for item in batch):
            raise RuntimeError("cannot handle /poison")
        return [Outgoing(REGISTRY_EVENTS.name, None, event(i)) for i in batch]

    for path in ("/a", "/poison", "/b"):
        bus.send(TOPIC, b"folder", arrival(path).encode())
    bus.send(TOPIC, b"folder", b"not avro at all")
    bus.flush()
    loop = ServiceLoop("contract", bus, group, [TOPIC], handler, retries=1, backoff_s=0.01)
    deadline = time.monotonic() + 60
    while loop.counters.consumed < 4 and time.monotonic() < deadline:
        loop.step(0.5)
    loop.consumer.close()
    assert loop.counters.dead_lettered == 2 and loop.counters.retried >= 1
    reader = bus.consumer(f"g{uuid.uuid4().hex}", [DEAD_LETTERS.name, REGISTRY_EVENTS.name])
    out = [messages.decode(d.value) for d in poll_all(reader, 4)]
    reader.close()
    letters = [m for m in out if isinstance(m, DeadLetter)]
    events = [m for m in out if isinstance(m, RegistryEvent)]
    assert sorted(x.error_code for x in letters) == ["undecodable", "unexpected"]
    assert sorted(e.file for e in events) == ["/a", "/b"]


def arrival(path: str) -> RawArrival:
    return dataclasses.replace(raw_arrival(path, size=1), folder="/", watcher="contract")


def event(item: Incoming) -> RegistryEvent:
    assert isinstance(item.message, RawArrival)
    return RegistryEvent(
        command_id=item.message.arrival_id,
        kind="datasets-registered",
        message="",
        at_ns=0,
        file=item.message.path,
    )


def test_a_burst_is_committed_once_the_loop_catches_up() -> None:
    # The loop's own logic, so on the in-memory bus only (Kafka's first poll may return a
    # partial batch, which counts as caught up).
    bus = MemoryBus({t.name: t.partitions for t in ALL_TOPICS})
    group = "g"
    handled: list[str] = []

    def handler(batch: Any) -> list[Outgoing]:
        handled.extend(item.message.path for item in batch)
        return [Outgoing(REGISTRY_EVENTS.name, None, event(i)) for i in batch]

    for i in range(40):
        bus.send(TOPIC, b"one key", arrival(f"/{i}").encode())
    events = bus.consumer("reader", [REGISTRY_EVENTS.name])

    def loop() -> ServiceLoop:
        return ServiceLoop("burst", bus, group, [TOPIC], handler, max_records=16)

    first = loop()
    assert first.step(0) == 16  # a full batch: more are waiting
    assert len(events.poll(0, 100)) == 16  # its outputs left at once...
    first.consumer.close()  # ... but it "crashes" before committing them
    second = loop()
    assert [second.step(0) for _ in range(3)] == [16, 16, 8]  # caught up: committed now
    assert handled == [f"/{i}" for i in [*range(16), *range(40)]]  # the first 16 twice
    second.consumer.close()
    assert loop().step(0) == 0


def test_an_outage_reads_again_only_the_batch_it_stopped() -> None:
    bus = MemoryBus({t.name: t.partitions for t in ALL_TOPICS})
    handled: list[str] = []
    down = {"calls": 0}  # how many more calls meet the outage

    def handler(batch: Any) -> list[Outgoing]:
        if down["calls"]:
            down["calls"] -= 1
            raise DatabaseUnavailableError("database restarting")
        handled.extend(item.message.path for item in batch)
        return []

    for i in range(48):
        bus.send(TOPIC, b"one key", arrival(f"/{i}").encode())
    loop = ServiceLoop(
        "outage", bus, "g", [TOPIC], handler, max_records=16, backoff_s=0, max_backoff_s=0
    )
    assert [loop.step(0), loop.step(0)] == [16, 16]  # full batches: not committed yet
    down["calls"] = loop.retries + 1  # longer than the retries
    assert loop.step(0) == 0  # the third batch meets the outage
    while loop.step(0):
        pass
    assert handled == [f"/{i}" for i in range(48)]  # the first two batches once only


def test_a_partition_taken_by_a_rebalance_is_neither_sought_nor_committed() -> None:
    bus = MemoryBus({t.name: t.partitions for t in ALL_TOPICS})
    for i in range(60):  # spread over the partitions
        bus.send(TOPIC, f"k{i}".encode(), arrival(f"/{i}").encode())
    first = ServiceLoop("a", bus, "g", [TOPIC], lambda batch: [], max_records=16)
    assert first.step(0) == 16  # uncommitted
    second = bus.consumer("g", [TOPIC])  # joins: takes half of the partitions
    mine = first.consumer.assignment()
    assert mine and not mine & second.assignment()
    first._rewind(first._uncommitted, DatabaseUnavailableError("test"))  # no ValueError
    assert first.step(0) > 0
    first.settle()
    committed = bus._groups["g"].committed
    assert committed and set(committed) <= mine
