"""When a registry change happens, for its history columns (ingest dates, certification times).

Normally now. While the registry service applies a command, the command's issue time
(``issued_at_ns``): a registry replayed from the command topic then has the same history as
the live one, so "as of" lookups answer the same on both.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from ..core.timespan import now_ns

_AT: ContextVar[int | None] = ContextVar("registry_change_time", default=None)
_DATASETS: ContextVar[Mapping[uuid.UUID, int] | None] = ContextVar(
    "dataset_change_times", default=None
)


def change_time() -> int:
    at = _AT.get()
    return now_ns() if at is None else at


def dataset_time(dataset_id: uuid.UUID, default: int) -> int:
    """When ``dataset_id`` was added: its own command's time in a batch of several."""
    times = _DATASETS.get()
    return default if times is None else times.get(dataset_id, default)


@contextmanager
def changes_made_at(at: int, datasets: Mapping[uuid.UUID, int] | None = None) -> Iterator[None]:
    token = _AT.set(at)
    dataset_token = _DATASETS.set(datasets)
    try:
        yield
    finally:
        _DATASETS.reset(dataset_token)
        _AT.reset(token)
