"""Moving bytes: a Kafka bus (kafka-python) and an in-memory bus with the same contract.

Services never touch either directly: ``runner.ServiceLoop`` polls, decodes, retries,
dead-letters and commits around plain handler functions. The in-memory bus lets the same
contract tests and handler tests run without a broker.
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.errors import BusError, ConfigError
from .topics import ALL_TOPICS

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class Delivery:
    """One message as a consumer received it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


class Consumer(Protocol):
    def poll(self, timeout_s: float, max_records: int) -> list[Delivery]: ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record ``next offset to read`` per partition (after the effects are durable)."""

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    def lag(self) -> int:
        """Messages not yet consumed on the assigned partitions."""

    def close(self) -> None: ...


class Bus(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...

    def flush(self) -> None:
        """Block until every sent message is acknowledged (or raise BusError)."""

    def consumer(self, group: str, topics: Iterable[str]) -> Consumer: ...

    def end_offsets(self, topic: str) -> dict[int, int]: ...

    def close(self) -> None: ...


def partition_for(key: bytes | None, partitions: int, counter: int) -> int:
    # Same key, same partition (ordering); keyless messages spread round robin.
    return (zlib.crc32(key) if key is not None else counter) % partitions


# --- in memory -----------------------------------------------------------------------------------


@dataclass
class _Group:
    members: list[MemoryConsumer] = field(default_factory=list)
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class MemoryBus:
    """Topics as lists in memory; consumer groups share partitions like Kafka's do."""

    def __init__(self, partitions: Mapping[str, int]) -> None:
        self._logs: dict[TopicPartition, list[Delivery]] = {
            (t, p): [] for t, n in partitions.items() for p in range(n)
        }
        self._partitions = dict(partitions)
        self._groups: dict[str, _Group] = {}
        self._lock = threading.Condition()
        self._counter = 0

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        with self._lock:
            if topic not in self._partitions:
                raise BusError(f"no topic {topic!r} on the in-memory bus")
            self._counter += 1
            p = partition_for(key, self._partitions[topic], self._counter)
            log = self._logs[(topic, p)]
            log.append(Delivery(topic, p, len(log), key, value, int(time.time() * 1000)))
            self._lock.notify_all()

    def flush(self) -> None:
        return None

    def messages(self, topic: str) -> list[Delivery]:
        """Everything on a topic, partition by partition (for tests and replays)."""
        with self._lock:
            return [d for (t, _), log in sorted(self._logs.items()) if t == topic for d in log]

    def end_offsets(self, topic: str) -> dict[int, int]:
        with self._lock:
            return {p: len(log) for (t, p), log in self._logs.items() if t == topic}

    def consumer(self, group: str, topics: Iterable[str]) -> MemoryConsumer:
        with self._lock:
            consumer = MemoryConsumer(self, group, list(topics))
            g = self._groups.setdefault(group, _Group())
            g.members.append(consumer)
            self._rebalance(g)
            return consumer

    def _rebalance(self, g: _Group) -> None:
        tps = sorted(
            {(t, p) for m in g.members for t in m.topics for p in range(self._partitions[t])}
        )
        for i, member in enumerate(g.members):
            member.assigned = {tp for j, tp in enumerate(tps) if j % len(g.members) == i}
            member.positions = {tp: g.committed.get(tp, 0) for tp in member.assigned}

    def _leave(self, consumer: MemoryConsumer) -> None:
        with self._lock:
            g = self._groups[consumer.group]
            g.members.remove(consumer)
            if g.members:
                self._rebalance(g)

    def close(self) -> None:
        return None


class MemoryConsumer:
    def __init__(self, bus: MemoryBus, group: str, topics: list[str]) -> None:
        self.bus, self.group, self.topics = bus, group, topics
        self.assigned: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}

    def poll(self, timeout_s: float, max_records: int) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        with self.bus._lock:
            while True:
                out: list[Delivery] = []
                for tp in sorted(self.assigned):
                    log = self.bus._logs[tp]
                    take = log[self.positions[tp] : self.positions[tp] + max_records - len(out)]
                    out.extend(take)
                    self.positions[tp] += len(take)
                if out or time.monotonic() >= deadline:
                    return out
                self.bus._lock.wait(max(0.0, deadline - time.monotonic()))

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self.bus._lock:
            self.bus._groups[self.group].committed.update(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self.assigned:  # as kafka-python: a partition given to another member
            raise ValueError(f"unassigned partition {tp}")
        self.positions[tp] = offset

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def lag(self) -> int:
        with self.bus._lock:
            return sum(len(self.bus._logs[tp]) - self.positions[tp] for tp in self.assigned)

    def close(self) -> None:
        self.bus._leave(self)


@contextlib.contextmanager
def kafka_errors(what: str) -> Iterator[None]:
    """kafka-python's errors as BusError: the service loop waits those out."""
    from kafka.errors import KafkaError

    try:
        yield
    except KafkaError as err:
        raise BusError(f"{what}: {err}") from err


# --- Kafka ---------------------------------------------------------------------------------------


class KafkaBus:
    """kafka-python: an idempotent producer (acks=all) and manually committed consumers.

    ``namespace`` prefixes every topic and consumer group on the cluster, so several
    deployments (or test runs) can share one cluster without seeing each other's messages;
    services still use the plain names from topics.py.
    """

    def __init__(
        self,
        bootstrap: str,
        client_id: str,
        namespace: str = "",
        delivery_timeout_s: float = 120.0,
        **security: Any,
    ) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.namespace = namespace
        self._delivery_timeout_s = delivery_timeout_s
        # After a broker restart, reconnect within seconds (kafka-python waits up to 30 s).
        self._security = {"reconnect_backoff_max_ms": 5000, **security}
        self._producer = self._new_producer()
        self._pending: list[Any] = []

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer
        from kafka.errors import KafkaConfigurationError

        timeout_ms = int(self._delivery_timeout_s * 1000)
        wait_ms = max(1000, min(30_000, timeout_ms // 2))
        try:
            return KafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=self.client_id,
                acks="all",
                linger_ms=2,
                # An unacknowledged message fails flush() after this long (then the service
                # sends it again later); until then the producer keeps retrying.
                delivery_timeout_ms=timeout_ms,
                # kafka-python wants delivery >= linger + request timeout.
                request_timeout_ms=wait_ms,
                # Its own defaults wait 30 s to bootstrap and 60 s for a topic's metadata,
                # longer than the delivery timeout itself: no call here waits past it.
                bootstrap_timeout_ms=wait_ms,
                max_block_ms=wait_ms,
                **self._security,
            )
        except KafkaConfigurationError as err:  # no outage: waiting would not help
            raise ConfigError(f"invalid Kafka client settings: {err}") from err
        except Exception as err:  # kafka-python raises its own types for "no broker"
            raise BusError(
                f"cannot reach Kafka at {self.bootstrap} ({type(err).__name__}); is the broker "
                "running? (`bash deploy/kafka.sh start`, or set OBSBUS_KAFKA_BOOTSTRAP)"
            ) from err

    def _fail(self, message: str, err: Exception | None) -> BusError:
        """A send that was not acknowledged: drop the producer with whatever it still holds
        (kafka-python's flush() can wait forever on a batch that expired in an outage) and
        let the next send start a new one (not this call: connecting can take as long again,
        and a failed flush must return within its bound); the caller sends again, or handles
        the messages again."""
        self._pending = []
        _discard(self._producer)
        self._producer = _Unconnected(self)
        return BusError(f"{message}: {err}")

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        try:
            future = self._producer.send(self.namespace + topic, key=key, value=value)
        except MessageSizeTooLargeError:
            raise BusError(
                f"a {len(value):,}-byte message is too large for {topic} (the limit is about "
                "1 MB): write in smaller parts (e.g. split the table)"
            ) from None
        except KafkaError as err:
            raise self._fail(f"Kafka refused a message for {topic}", err) from err
        self._pending.append(future)

    def flush(self) -> None:
        from kafka.errors import KafkaError, KafkaTimeoutError

        # Every message is acknowledged or expired by then. kafka-python's flush(timeout)
        # waits up to ``timeout`` per batch, not in all (CI saw 3 batches x 45 s with two of
        # three brokers down): short flushes until one deadline bound the whole wait.
        deadline = time.monotonic() + self._delivery_timeout_s + 10
        while True:
            try:
                self._producer.flush(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                break
            except KafkaTimeoutError as err:
                if time.monotonic() >= deadline:
                    raise self._fail("Kafka did not acknowledge messages", err) from err
            except KafkaError as err:
                raise self._fail("Kafka did not acknowledge messages", err) from err
        pending, self._pending = self._pending, []
        for future in pending:
            if not future.is_done or future.failed():
                self._pending = pending
                raise self._fail("Kafka refused a message", future.exception)

    def consumer(self, group: str, topics: Iterable[str]) -> KafkaTopicConsumer:
        return KafkaTopicConsumer(self, group, list(topics))

    def end_offsets(self, topic: str) -> dict[int, int]:
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaPartition
        from kafka.errors import KafkaError

        try:
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, **self._security)
        except KafkaError as err:
            raise BusError(f"cannot reach Kafka at {self.bootstrap}: {err}") from err
        try:
            physical = self.namespace + topic
            # The table's partition count: asking the broker for it can wait forever.
            known = {t.name: t.partitions for t in ALL_TOPICS}
            parts = (
                range(known[topic])
                if topic in known
                else consumer.partitions_for_topic(physical) or set()
            )
            ends = consumer.end_offsets(
                [KafkaPartition(physical, p) for p in parts], timeout_ms=10_000
            )
            return {tp.partition: int(off) for tp, off in ends.items()}
        except KafkaError as err:
            raise BusError(f"Kafka did not give the end of {topic}: {err}") from err
        finally:
            consumer.close()

    def close(self) -> None:
        # Bounded: after an outage kafka-python may wait forever on an expired batch; what
        # was not acknowledged by now is sent again by the next run (at least once).
        _discard(self._producer, timeout_s=10)


def _discard(producer: Any, timeout_s: float = 0) -> None:
    """Close a producer whatever it still holds: kafka-python's close() flushes first and
    raises when a batch is stuck; its sender thread is then stopped without waiting."""
    try:
        producer.close(timeout=timeout_s)
    except Exception:  # a stuck batch: nothing more to wait for
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            with contextlib.suppress(Exception):
                sender.force_close()


class _Unconnected:
    """The producer slot while no broker answers: each send tries to connect again."""

    def __init__(self, bus: KafkaBus) -> None:
        self.bus = bus

    def send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        self.bus._producer = self.bus._new_producer()  # BusError while the outage lasts
        return self.bus._producer.send(topic, key=key, value=value)

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


class KafkaTopicConsumer:
    def __init__(self, bus: KafkaBus, group: str, topics: list[str]) -> None:
        from kafka.errors import KafkaError

        self._ns = bus.namespace
        try:
            self._consumer = self._open(bus, group, topics)
        except KafkaError as err:
            raise BusError(f"cannot reach Kafka at {bus.bootstrap}: {err}") from err

    def _open(self, bus: KafkaBus, group: str, topics: list[str]) -> Any:
        from kafka import KafkaConsumer

        return KafkaConsumer(
            *(self._ns + t for t in topics),
            bootstrap_servers=bus.bootstrap,
            group_id=self._ns + group,
            client_id=f"{bus.client_id}-{group}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_poll_interval_ms=300_000,
            **bus._security,
        )

    def poll(self, timeout_s: float, max_records: int) -> list[Delivery]:
        with kafka_errors("Kafka did not answer a poll"):
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out = [
            Delivery(
                r.topic.removeprefix(self._ns), r.partition, r.offset, r.key, r.value, r.timestamp
            )
            for records in batches.values()
            for r in records
        ]
        out.sort(key=lambda d: (d.topic, d.partition, d.offset))
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        from kafka import OffsetAndMetadata
        from kafka import TopicPartition as KafkaPartition

        if not offsets:
            return
        with kafka_errors("Kafka did not take the commit"):
            self._consumer.commit(
                {
                    KafkaPartition(self._ns + t, p): OffsetAndMetadata(o, "", -1)
                    for (t, p), o in offsets.items()
                },
                timeout_ms=30_000,
            )

    def seek(self, tp: TopicPartition, offset: int) -> None:
        from kafka import TopicPartition as KafkaPartition

        self._consumer.seek(KafkaPartition(self._ns + tp[0], tp[1]), offset)

    def assignment(self) -> set[TopicPartition]:
        return {
            (tp.topic.removeprefix(self._ns), tp.partition) for tp in self._consumer.assignment()
        }

    def lag(self) -> int:
        assigned = list(self._consumer.assignment())
        if not assigned:
            return 0
        # The high watermark of the last fetch costs nothing; ask the broker only for
        # partitions not fetched yet (a request each time would load it on every idle poll).
        ends = {tp: self._consumer.highwater(tp) for tp in assigned}
        unknown = [tp for tp, end in ends.items() if end is None]
        with kafka_errors("Kafka did not give the consumer lag"):
            if unknown:
                ends.update(self._consumer.end_offsets(unknown, timeout_ms=2000))
            positions = {tp: self._consumer.position(tp, timeout_ms=2000) for tp in assigned}
        # A position not known yet (the coordinator is away): counted when it is.
        return sum(max(0, ends[tp] - pos) for tp, pos in positions.items() if pos is not None)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # leaving: the broker may be gone
            self._consumer.close(autocommit=False, timeout_ms=5000)
