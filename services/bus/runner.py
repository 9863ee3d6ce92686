"""The one service loop: poll → decode → handle → produce → commit, around plain handlers.

A handler is a function from decoded messages to outgoing messages; it knows nothing of
Kafka. This loop owns everything else, once, for every service:
- undecodable bytes go to the dead-letter topic with their origin and the error;
- a failing batch is retried with bounded exponential backoff, then split message by
  message so one poison message is dead-lettered and the rest go on;
- but in an outage (the broker, or an OutageError: the database unavailable, the datastore
  full), nothing is dead-lettered or committed: the batch is read again once it is over (a
  poison message is one that fails on its own, an outage fails everything);
- outputs are flushed (acknowledged) before offsets are committed, so nothing is lost:
  delivery is at least once, and handlers make the effect exactly once.

Outputs leave as soon as their batch is handled. While messages keep coming (a poll returns
a full batch), the flush and the commit wait until the loop has caught up or
``commit_every_s`` has passed: a burst is handled batch after batch without a round trip to
the broker between them. A crash before the commit means the uncommitted messages are
handled again, which handlers already allow.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from .. import messages
from ..core.errors import (
    BusError,
    ObsbusError,
    OutageError,
    UndecodableMessageError,
)
from ..core.timespan import now_ns
from ..messages import DeadLetter, Record
from .declaration import Declaration
from .outage import Outage
from .topics import DEAD_LETTERS, RECORD_OF
from .transport import Bus, Consumer, Delivery, TopicPartition

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Incoming:
    delivery: Delivery
    message: Record


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: str | None
    message: Record


Handler = Callable[[Sequence[Incoming]], list[Outgoing]]


@dataclass
class Counters:
    consumed: int = 0
    produced: int = 0
    failed: int = 0
    dead_lettered: int = 0
    retried: int = 0
    lag: int = 0
    last_message_ns: int = 0  # when a message was last handled (TAI ns; 0: none yet)
    # Seconds spent so far in each part of the loop: where a slow service waits.
    handle_s: float = 0.0
    produce_s: float = 0.0
    commit_s: float = 0.0


@dataclass
class ServiceLoop:
    name: str
    bus: Bus
    group: str
    topics: Sequence[str]
    handler: Handler
    status_file: Path | None = None
    max_records: int = 500
    retries: int = 4
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    commit_every_s: float = 0.5
    writes: frozenset[str] | None = None  # the topics it may write (None: any)
    counters: Counters = field(default_factory=Counters)
    _consumer: Consumer | None = None
    _uncommitted: list[Delivery] = field(default_factory=list)  # handled, outputs sent
    _last_commit: float = field(default_factory=time.monotonic)

    @classmethod
    def declared(
        cls,
        declaration: Declaration,
        bus: Bus,
        handler: Handler,
        *,
        name: str | None = None,
        status_file: Path | None = None,
    ) -> ServiceLoop:
        """The loop of a declared service (its topics, group and batch size)."""
        assert declaration.group is not None  # a consumer of topics
        return cls(
            name or declaration.name,
            bus,
            declaration.group,
            [t.name for t in declaration.reads],
            handler,
            status_file=status_file,
            max_records=declaration.max_records,
            writes=declaration.topics_written,
        )

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = self.bus.consumer(self.group, self.topics)
        return self._consumer

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        log.info("service started", service=self.name, topics=list(self.topics), pid=os.getpid())
        last_status = 0.0
        outage = Outage(self.name, max_backoff_s=self.max_backoff_s)
        while not stop.is_set():
            try:
                self.step(poll_s)
                if time.monotonic() - last_status > 1.0:
                    self.counters.lag = self.consumer.lag()
                    self.write_status()
                    last_status = time.monotonic()
            except BusError as err:  # no broker to read from or commit to: wait, not exit
                self.write_status()
                outage.wait(err, stop)
                continue
            outage.ok()
        if self._consumer is not None:
            try:
                self.settle()
            except BusError as err:  # uncommitted: handled again after the restart
                log.warning("stopping without a commit", service=self.name, error=str(err))
            self.consumer.close()
        self.write_status()
        log.info("service stopped", service=self.name)

    def step(self, poll_s: float = 0.5) -> int:
        """One poll and everything it brings; returns how many messages were handled."""
        deliveries = self.consumer.poll(poll_s, self.max_records)
        if not deliveries:
            self.settle()
            self.counters.lag = self.consumer.lag()
            return 0
        incoming: list[Incoming] = []
        outputs: list[Outgoing] = []
        for d in deliveries:
            try:
                message = _decode(d)
            except UndecodableMessageError as err:
                outputs.append(self._dead_letter(d, err))
                continue
            incoming.append(Incoming(d, message))
        started = time.perf_counter()
        try:
            outputs.extend(self._handle(incoming))
        except OutageError as err:
            # The earlier batches took effect: once committed, only this one is read again.
            earlier = list(self._uncommitted)
            try:
                committed = self.settle()
            except BusError:
                committed = False
            self._rewind(deliveries if committed else [*earlier, *deliveries], err)
            return 0
        handled = time.perf_counter()
        self.counters.handle_s += handled - started
        if self.writes is not None:
            undeclared = {o.topic for o in outputs} - self.writes
            if undeclared:  # a programming error: the declaration must say what it writes
                raise RuntimeError(f"{self.name} wrote undeclared topics {sorted(undeclared)}")
        encoded = [
            (o.topic, None if o.key is None else o.key.encode(), o.message.encode())
            for o in outputs
        ]
        try:
            for topic, key, value in encoded:
                self.bus.send(topic, key, value)
        except BusError as err:  # not sent: handle again (handlers are idempotent)
            self._rewind([*self._uncommitted, *deliveries], err)
            return 0
        self.counters.produce_s += time.perf_counter() - handled
        self._uncommitted.extend(deliveries)
        self.counters.consumed += len(deliveries)
        self.counters.last_message_ns = now_ns()
        self.counters.produced += len(outputs)
        caught_up = len(deliveries) < self.max_records
        if caught_up or time.monotonic() - self._last_commit >= self.commit_every_s:
            self.settle()
        return len(deliveries)

    def settle(self) -> bool:
        """Wait for the outputs sent so far to be acknowledged, then commit their inputs;
        False if they were not acknowledged (they are read again). A failed commit raises
        BusError and keeps them, for the next settle to commit."""
        if not self._uncommitted:
            self._last_commit = time.monotonic()
            return True
        started = time.perf_counter()
        try:
            self.bus.flush()
        except BusError as err:  # not acknowledged: handle again (handlers are idempotent)
            self._rewind(self._uncommitted, err)
            return False
        flushed = time.perf_counter()
        self.counters.produce_s += flushed - started
        # A partition given to another member since (a rebalance) is not ours to commit: its
        # new owner reads those messages again, which handlers allow.
        owned = self.consumer.assignment()
        # A failed commit keeps the deliveries: the next settle commits them (or, after a
        # restart, they are handled again, which handlers allow).
        self.consumer.commit(
            {tp: o for tp, o in _next_offsets(self._uncommitted).items() if tp in owned}
        )
        self.counters.commit_s += time.perf_counter() - flushed
        self._uncommitted = []
        self._last_commit = time.monotonic()
        return True

    def _rewind(self, deliveries: Sequence[Delivery], err: Exception) -> None:
        """Read these messages again later: their effects did not happen (or not surely)."""
        self._uncommitted = []
        first: dict[TopicPartition, int] = {}
        for d in deliveries:
            tp = (d.topic, d.partition)
            first[tp] = min(first.get(tp, d.offset), d.offset)
        owned = self.consumer.assignment()  # the others' new owners read them from the commit
        for tp, offset in first.items():
            if tp in owned:
                self.consumer.seek(tp, offset)
        log.warning("outage: will read the batch again", service=self.name, error=str(err))
        time.sleep(self.max_backoff_s)

    def _handle(self, batch: list[Incoming]) -> list[Outgoing]:
        if not batch:
            return []
        try:
            return self._with_retries(batch)
        except OutageError:
            raise  # an outage, not a poison message
        except Exception as err:
            if len(batch) == 1:
                self.counters.failed += 1
                return [self._dead_letter(batch[0].delivery, err)]
        out: list[Outgoing] = []  # isolate the poison message: one at a time
        for item in batch:
            out.extend(self._handle([item]))
        return out

    def _with_retries(self, batch: list[Incoming]) -> list[Outgoing]:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return self.handler(batch)
            except Exception as err:
                first = batch[0].delivery
                log.warning(
                    "handler failed",
                    service=self.name,
                    attempt=attempt + 1,
                    topic=first.topic,
                    partition=first.partition,
                    offset=first.offset,
                    messages=len(batch),
                    error=f"{type(err).__name__}: {err}",
                )
                if attempt == self.retries:
                    raise
                self.counters.retried += 1
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    def _dead_letter(self, d: Delivery, err: Exception) -> Outgoing:
        self.counters.dead_lettered += 1
        code = err.code if isinstance(err, ObsbusError) else "unexpected"
        log.error(
            "dead-lettered",
            service=self.name,
            topic=d.topic,
            partition=d.partition,
            offset=d.offset,
            key=None if d.key is None else d.key.decode(errors="replace"),
            error=str(err),
        )
        return Outgoing(
            DEAD_LETTERS.name,
            None if d.key is None else d.key.decode(errors="replace"),
            DeadLetter(
                topic=d.topic,
                partition=d.partition,
                offset=d.offset,
                key=d.key,
                value=d.value,
                error=f"{type(err).__name__}: {err}",
                error_code=code,
                service=self.name,
                failed_at_ns=now_ns(),
            ),
        )

    def write_status(self) -> None:
        """Counters for `obsbus status` (a small JSON file the service rewrites each second)."""
        if self.status_file is None:
            return
        status = {
            "service": self.name,
            "pid": os.getpid(),
            "updated_at_ns": now_ns(),
            **asdict(self.counters),
        }
        write_status_file(self.status_file, status)


def write_status_file(path: Path, status: dict[str, Any]) -> None:
    """Replace a status file whole; a full disk costs the status, never the service."""
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(status))
        tmp.replace(path)
    except OSError as err:
        log.warning("cannot write the status file", path=str(path), error=str(err))


def _decode(d: Delivery) -> Record:
    """A delivery's message, if it is one of the records its topic carries."""
    message = messages.decode(d.value)
    expected = RECORD_OF.get(d.topic)
    if expected is not None and expected != message.RECORD:
        raise UndecodableMessageError(
            f"message is a {message.RECORD}, but {d.topic} carries {expected} (wrong topic?)"
        )
    return message


def _next_offsets(deliveries: Sequence[Delivery]) -> dict[TopicPartition, int]:
    out: dict[TopicPartition, int] = {}
    for d in deliveries:
        tp = (d.topic, d.partition)
        out[tp] = max(out.get(tp, 0), d.offset + 1)
    return out
