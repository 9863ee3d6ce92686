"""Kafka client cost: CPU per message through obsbus's transport, and librdkafka beside it.

A benchmark, not a test: it prints figures and ratios and asserts no thresholds.

    python bench/kafka_client_bench.py [--messages N] [--size BYTES] [--batch N]

Every raw file costs the services four produced messages (arrival, command, outcome, event)
and three consumed ones (by ingest, the registry and a dashboard), so the Kafka client's CPU
per message weighs directly on the files/s a 2-core machine sustains. Measured on one topic
of this run's own namespace on the local broker (or OBSBUS_KAFKA_BOOTSTRAP), with messages
the size of a registry command:

* obsbus's ``KafkaBus`` (kafka-python, as every service uses it): ``send`` and a ``flush``
  every ``--batch`` messages (a service sends a batch's outputs, then waits for them); then a
  consumer of a new group reading them back ``--batch`` at a time (``poll(max_records=...)``).
* the same with confluent-kafka (librdkafka) when it is importable; it is not an obsbus
  dependency (the design names kafka-python): ``pip install confluent-kafka`` to compare.

CPU is the process's (every thread, kafka-python's sender and IO threads included).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence

from _bus_common import broker_address, delete_topics, log

from services.bus.admin import ensure_topics
from services.bus.topics import Topic
from services.bus.transport import KafkaBus

PARTITIONS = 6
PRODUCED_PER_FILE = 4  # arrival, registry command, outcome, registry event
CONSUMED_PER_FILE = 3  # arrival (ingest), command (registry), outcome (a dashboard)


def cpu_per_message(messages: int, run: Callable[[], None]) -> float:
    """µs of this process's CPU per message for ``run``."""
    started = time.process_time()
    run()
    return 1e6 * (time.process_time() - started) / messages


def consume_cpu(messages: int, take: Callable[[], int], client: str) -> float:
    """µs of CPU per message to consume ``messages`` by calls of ``take`` (how many it got)."""

    def consume() -> None:
        left = messages
        while left > 0:
            got = take()
            if not got:
                raise SystemExit(f"{client} consumer: no message for 5 s")
            left -= got

    return cpu_per_message(messages, consume)


def keys(messages: int) -> list[bytes]:
    """One key per 205 messages, as an exposure's files (one partition per exposure)."""
    return [f"SimCam/{i // 205}".encode() for i in range(messages)]


def kafka_python(bootstrap: str, topic: str, args: argparse.Namespace) -> tuple[float, float]:
    value = os.urandom(args.size)
    bus = KafkaBus(bootstrap, "obsbus-client-bench")
    try:
        for key in keys(200):  # connections and metadata, untimed
            bus.send(topic, key, value)
        bus.flush()

        def produce() -> None:
            for i, key in enumerate(keys(args.messages)):
                bus.send(topic, key, value)
                if i % args.batch == args.batch - 1:
                    bus.flush()
            bus.flush()

        produced = cpu_per_message(args.messages, produce)
        consumer = bus.consumer(f"client-bench-{uuid.uuid4().hex[:8]}", [topic])
        total = args.messages + 200
        try:
            first = consumer.poll(10.0, args.batch)  # joins the group, untimed
            left = total - len(first)
            poll = consumer.poll
            consumed = consume_cpu(left, lambda: len(poll(5.0, args.batch)), "kafka-python")
        finally:
            consumer.close()
    finally:
        bus.close()
    return produced, consumed


def librdkafka(bootstrap: str, topic: str, args: argparse.Namespace) -> tuple[float, float] | None:
    try:
        from confluent_kafka import Consumer, Producer  # type: ignore[import-not-found]
    except ImportError:
        return None
    value = os.urandom(args.size)
    producer = Producer(  # the settings KafkaBus gives kafka-python
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 2}
    )
    for key in keys(200):
        producer.produce(topic, key=key, value=value)
    producer.flush()

    def produce() -> None:
        for i, key in enumerate(keys(args.messages)):
            producer.produce(topic, key=key, value=value)
            producer.poll(0)
            if i % args.batch == args.batch - 1:
                producer.flush()
        producer.flush()

    produced = cpu_per_message(args.messages, produce)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"client-bench-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    total = 2 * (args.messages + 200)  # this topic has kafka-python's messages too
    try:
        left = total
        deadline = time.monotonic() + 10.0
        while left == total and time.monotonic() < deadline:  # joins the group, untimed
            left -= len(consumer.consume(num_messages=args.batch, timeout=1.0))
        consumed = consume_cpu(
            left, lambda: len(consumer.consume(num_messages=args.batch, timeout=5.0)), "librdkafka"
        )
    finally:
        consumer.close()
    return produced, consumed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=20_000, help="messages produced per client")
    p.add_argument("--size", type=int, default=1400, help="bytes per message (a command's)")
    p.add_argument("--batch", type=int, default=16, help="messages per flush and per poll")
    args = p.parse_args(argv)
    if args.messages < 1 or args.size < 1 or args.batch < 1:
        p.error("--messages, --size and --batch must be positive")
    bootstrap = broker_address()
    topic = f"clientbench{uuid.uuid4().hex[:10]}.messages"
    ensure_topics(bootstrap, [Topic(topic, "-", "-", PARTITIONS, retention_ms=3_600_000)])
    python = sys.version.split()[0]
    log(f"broker {bootstrap}, topic {topic} ({PARTITIONS} partitions), Python {python}")
    log(f"{args.messages:,} messages of {args.size:,} bytes, flush and poll every {args.batch}")
    try:
        rows = {"kafka-python (obsbus KafkaBus)": kafka_python(bootstrap, topic, args)}
        other = librdkafka(bootstrap, topic, args)
        if other is None:
            log("confluent-kafka is not installed: `pip install confluent-kafka` to compare")
        else:
            rows["confluent-kafka (librdkafka)"] = other
    finally:
        delete_topics(bootstrap, [topic])
    for name, (produced, consumed) in rows.items():
        per_file = (PRODUCED_PER_FILE * produced + CONSUMED_PER_FILE * consumed) / 1000
        log(
            f"{name}: produce {produced:.1f} µs CPU/message, consume {consumed:.1f} µs; "
            f"per raw file ({PRODUCED_PER_FILE} produced + {CONSUMED_PER_FILE} consumed) "
            f"{per_file:.2f} ms"
        )
    if len(rows) == 2:
        (p1, c1), (p2, c2) = rows.values()
        log(f"kafka-python / librdkafka: produce {p1 / p2:.1f}x, consume {c1 / c2:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
