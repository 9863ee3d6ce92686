"""Where the Kafka cluster is and how to talk to it: configuration only (pydantic settings).

Environment variables ``OBSBUS_KAFKA_*`` point the services at an existing cluster; when
``OBSBUS_KAFKA_BOOTSTRAP`` is unset, ``obsbus up`` starts the local single-node broker
(deploy/kafka.sh) and uses it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from .topics import ALL_TOPICS, Topic
from .transport import KafkaBus

LOCAL_BOOTSTRAP = "127.0.0.1:19092"


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBSBUS_KAFKA_")

    bootstrap: str | None = None  # host:port[,host:port...]; None = the local broker
    replication: int = 1  # replication factor of the topics obsbus creates
    namespace: str = ""  # prefix of every topic and consumer group (several setups, one cluster)
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None  # e.g. SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    # How long a sent message may stay unacknowledged (broker down, or too few in-sync
    # replicas) before the service is told and sends it again later.
    delivery_timeout_s: float = 120.0

    def resolved_bootstrap(self) -> str:
        return self.bootstrap or LOCAL_BOOTSTRAP

    def bus(self, client_id: str) -> KafkaBus:
        return KafkaBus(
            self.resolved_bootstrap(),
            client_id,
            self.namespace,
            self.delivery_timeout_s,
            **self.client_options(),
        )

    def topics(self) -> list[Topic]:
        """The topic table with this deployment's namespace applied (for creating them)."""
        return [dataclasses.replace(t, name=self.namespace + t.name) for t in ALL_TOPICS]

    def client_options(self) -> dict[str, Any]:
        """Security settings in kafka-python's terms (only those that are set)."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        for name in ("sasl_mechanism", "ssl_cafile"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        if self.sasl_username is not None:
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options
