"""Kafka administration: wait for a broker and create obsbus's topics as topics.py lists them.

Topics are never auto-created (the local broker disables it): ``ensure_topics`` creates each
missing topic with its partition count, the replication factor and its retention. It is
idempotent and safe to run from several processes at once; an existing topic is left alone,
except that one with fewer partitions than the table is an error (keys would map to other
partitions than every producer expects).

Where the cluster is comes from the environment: ``OBSBUS_KAFKA_BOOTSTRAP`` (default the local
broker of ``deploy/kafka.sh``) and ``OBSBUS_KAFKA_REPLICATION`` (default 1; 3 on the 3-broker
cluster of deploy/cluster/). ``python -m services.bus.admin`` creates the topics there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..core.errors import BusError, ConfigError, ObsbusError
from .topics import ALL_TOPICS, Topic

ENV_BOOTSTRAP = "OBSBUS_KAFKA_BOOTSTRAP"
ENV_REPLICATION = "OBSBUS_KAFKA_REPLICATION"
LOCAL_BOOTSTRAP = "127.0.0.1:19092"  # deploy/kafka.sh's default port

_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error codes
_UNKNOWN_TOPIC = 3
_HINT = "start the local broker with `make kafka` or point OBSBUS_KAFKA_BOOTSTRAP at a cluster"


def bootstrap_from_env() -> str:
    return os.environ.get(ENV_BOOTSTRAP) or LOCAL_BOOTSTRAP


def replication_from_env() -> int:
    text = os.environ.get(ENV_REPLICATION) or "1"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{ENV_REPLICATION}={text!r}: expected a positive whole number")
    return value


@contextmanager
def _admin(bootstrap: str, timeout_s: float) -> Iterator[Any]:
    from kafka import KafkaAdminClient

    ms = max(1000, int(timeout_s * 1000))
    try:
        client = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="obsbus-admin",
            bootstrap_timeout_ms=ms,
            request_timeout_ms=ms,
        )
    except Exception as err:  # kafka-python raises its own types (and OSError) for "no broker"
        raise BusError(
            f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s "
            f"({type(err).__name__}: {err}); {_HINT}"
        ) from err
    try:
        yield client
    finally:
        client.close()


def wait_for_broker(bootstrap: str, timeout_s: float = 60.0) -> None:
    """Return once a broker at ``bootstrap`` answers a metadata request, else raise BusError."""
    deadline = time.monotonic() + timeout_s
    last = "no attempt"
    while True:
        left = deadline - time.monotonic()
        try:
            with _admin(bootstrap, max(1.0, min(left, 10.0))) as client:
                if client.describe_cluster().get("brokers"):
                    return
                last = "the cluster reports no brokers yet"
        except BusError as err:
            last = str(err.__cause__ or err)
        except Exception as err:  # a request that failed after bootstrapping
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() + 0.5 >= deadline:
            raise BusError(
                f"no Kafka broker ready at {bootstrap} after {timeout_s:g} s ({last}); {_HINT}"
            )
        time.sleep(0.5)


def _partition_counts(client: Any, names: list[str]) -> dict[str, int]:
    """Partition count of each of ``names`` that exists."""
    counts: dict[str, int] = {}
    for info in client.describe_topics(names):
        if info.get("error_code", 0) == 0 and info.get("partitions"):
            counts[str(info["name"])] = len(info["partitions"])
        elif info.get("error_code", 0) not in (0, _UNKNOWN_TOPIC):
            raise BusError(f"cannot describe topic {info.get('name')!r}: {_error(info)}")
    return counts


def _error(info: dict[str, Any]) -> str:
    from kafka.errors import for_code

    message = info.get("error_message") or ""
    name = for_code(int(info.get("error_code", -1))).__name__
    return f"{name}: {message}" if message else name


def _check_partitions(topic: Topic, actual: int) -> None:
    if actual < topic.partitions:
        raise BusError(
            f"topic {topic.name} has {actual} partition(s) but obsbus needs {topic.partitions} "
            "(services/bus/topics.py): add partitions with kafka-topics --alter, or delete "
            "and recreate the topic, before running services"
        )


def ensure_topics(
    bootstrap: str,
    topics: Iterable[Topic] = ALL_TOPICS,
    replication_factor: int = 1,
    *,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the missing ``topics``; return the names created (empty if all existed).

    Each is made with its partition count, ``replication_factor`` and ``retention.ms``. Raises
    BusError if the broker is unreachable, refuses a topic (e.g. more replicas than brokers),
    or an existing topic has fewer partitions than ``topics`` says.
    """
    wanted = {t.name: t for t in topics}
    if not wanted:
        return []
    if replication_factor < 1:
        raise ConfigError(f"replication factor {replication_factor}: must be at least 1")
    with _admin(bootstrap, timeout_s) as client:
        existing = _partition_counts(client, list(wanted))
        for name, count in existing.items():
            _check_partitions(wanted[name], count)
        missing = [t for name, t in wanted.items() if name not in existing]
        if not missing:
            return []
        response = client.create_topics(
            {
                t.name: {
                    "num_partitions": t.partitions,
                    "replication_factor": replication_factor,
                    "configs": {"retention.ms": str(t.retention_ms)},
                }
                for t in missing
            },
            timeout_ms=int(timeout_s * 1000),
            raise_errors=False,
        )
        created: list[str] = []
        raced: list[str] = []  # created meanwhile by another process: check them like the rest
        for info in response["topics"]:
            code = info.get("error_code", 0)
            if code == 0:
                created.append(str(info["name"]))
            elif code == _TOPIC_ALREADY_EXISTS:
                raced.append(str(info["name"]))
            else:
                raise BusError(
                    f"Kafka at {bootstrap} refused to create topic {info['name']} "
                    f"({wanted[info['name']].partitions} partitions, replication factor "
                    f"{replication_factor}): {_error(info)}"
                )
        for name, count in _partition_counts(client, raced).items():
            _check_partitions(wanted[name], count)
        if created:
            try:
                client.wait_for_topics(created, timeout_ms=int(timeout_s * 1000))
            except Exception as err:
                raise BusError(
                    f"topics {', '.join(created)} were created at {bootstrap} but have no "
                    f"leaders after {timeout_s:g} s ({type(err).__name__}: {err})"
                ) from err
        return sorted(created)


def main() -> None:
    """``python -m services.bus.admin``: create obsbus's topics where the environment says."""
    bootstrap = bootstrap_from_env()
    try:
        wait_for_broker(bootstrap)
        created = ensure_topics(bootstrap, replication_factor=replication_from_env())
    except ObsbusError as err:
        raise SystemExit(f"obsbus: {err}") from None
    print(f"{bootstrap}: created {', '.join(created) if created else 'nothing (all exist)'}")


if __name__ == "__main__":
    main()
