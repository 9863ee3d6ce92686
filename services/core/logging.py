"""structlog set-up: JSON lines for services (one event per line, machine-readable)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(*, json: bool = True, level: int = logging.INFO) -> None:
    """Called by service entry points (never at import): where and how logs are written."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
