"""What a service declares next to its handler: the topics it reads and writes, its consumer
group and its batch size. `obsbus up`/`serve` build the service loop from it, the service
loop refuses an output to a topic not declared, and the README's topic table lists them."""

from __future__ import annotations

from dataclasses import dataclass

from .topics import DEAD_LETTERS, Topic


@dataclass(frozen=True)
class Declaration:
    name: str  # the service's default name (`obsbus serve NAME REPO`)
    reads: tuple[Topic, ...]  # none: it reads something else (the watcher: folders)
    writes: tuple[Topic, ...]  # besides the dead letters, which every consumer may write
    group: str | None = None  # its consumer group
    max_records: int = 500  # most messages handled in one batch
    doc: str = ""

    @property
    def topics_written(self) -> frozenset[str]:
        return frozenset(t.name for t in (*self.writes, DEAD_LETTERS))
