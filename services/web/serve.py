"""Running the dashboard: its reader threads and the HTTP server, until asked to stop."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import structlog
import uvicorn

from ..butler import Butler
from ..core.errors import ConfigError
from .app import create_app
from .dashboard import Dashboard

log = structlog.get_logger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: any free one), bound before serving so the address is
    known at once (written to the status file, printed by `up`)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"the dashboard cannot listen on {host}:{port} ({err.strerror}); choose another "
            "with --port (or OBSBUS_DASHBOARD_PORT for `obsbus up`)"
        ) from err
    sock.listen(128)
    return sock


class DashboardServer:
    """The dashboard service as `obsbus serve dashboard` runs it."""

    def __init__(
        self,
        dashboard: Dashboard,
        host: str,
        port: int,
        nice: int = 0,
        butler: Butler | None = None,
    ) -> None:
        self.dashboard, self.nice, self.butler = dashboard, nice, butler
        self.sock = bind(host, port)
        bound_host, bound_port = self.sock.getsockname()[:2]
        self.url = f"http://{bound_host}:{bound_port}/"
        dashboard.url = self.url

    def run(self, stop: threading.Event) -> None:
        if self.nice:
            os.nice(self.nice)
        config = uvicorn.Config(
            create_app(self.dashboard, self.butler),
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        threads = [
            threading.Thread(target=self.dashboard.read, args=(stop,), daemon=True),
            threading.Thread(target=self.dashboard.watch_services, args=(stop,), daemon=True),
            threading.Thread(target=_exit_on, args=(stop, server), daemon=True),
        ]
        for t in threads:
            t.start()
        log.info("dashboard serving", url=self.url)
        try:
            server.run(sockets=[self.sock])  # SIGTERM/SIGINT end it, then reach our handlers
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            self.sock.close()
            if self.butler is not None:
                self.butler.close()


def _exit_on(stop: threading.Event, server: uvicorn.Server) -> None:
    stop.wait()
    server.should_exit = True


def status_url(status_file: Path, pid: int | None) -> str | None:
    """The address a dashboard's status file gives, if that dashboard is process ``pid``
    (not one that ran before)."""
    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
    url = status.get("url")
    return url if isinstance(url, str) and status.get("pid") == pid else None
