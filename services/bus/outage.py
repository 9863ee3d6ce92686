"""Waiting out a broker outage: bounded backoff, one log line when it starts, one when it ends.

A service that loses its broker does not exit (its supervisor would only restart it into the
same outage, and give up after a few tries): it keeps what it has not sent, waits with a
backoff that doubles up to ``max_backoff_s``, and tries again, for as long as the outage lasts.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


@dataclass
class Outage:
    service: str
    what: str = "broker"  # what is away, for the log lines
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    _since: float | None = None
    _delay: float = 0.0
    _attempts: int = 0

    @property
    def active(self) -> bool:
        return self._since is not None

    def wait(self, err: Exception, stop: threading.Event) -> None:
        """The broker failed us: log (the first time, then every retry at debug level) and
        wait before the next try, or until ``stop``."""
        self._attempts += 1
        if self._since is None:
            self._since = time.monotonic()
            log.warning(
                f"{self.what} unavailable: keeping unsent messages and retrying",
                service=self.service,
                error=str(err),
            )
        self._delay = min(self.max_backoff_s, max(self.backoff_s, self._delay * 2))
        log.info(
            f"still waiting for the {self.what}",
            service=self.service,
            attempt=self._attempts,
            down_s=round(time.monotonic() - self._since, 1),
            retry_in_s=self._delay,
        )
        stop.wait(self._delay)

    def ok(self) -> None:
        """The broker answered: log the end of an outage, if there was one."""
        if self._since is None:
            return
        log.warning(
            f"{self.what} available again",
            service=self.service,
            down_s=round(time.monotonic() - self._since, 1),
            attempts=self._attempts,
        )
        self._since, self._delay, self._attempts = None, 0.0, 0


def broker_reachable(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """Whether any bootstrap address accepts a TCP connection (no Kafka request: cheap, and
    honest about what it knows — an open port, not a healthy cluster)."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False
