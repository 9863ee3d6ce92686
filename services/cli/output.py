"""How the CLI prints results: a JSON array of flat objects (--json) or an aligned table."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..butler import Butler
from ..core.timespan import Timespan
from ..registry.datasets import DatasetRef


def emit(rows: Sequence[Mapping[str, Any]], as_json: bool, empty: str = "no results") -> None:
    if as_json:
        json.dump([dict(r) for r in rows], sys.stdout, default=str)
        sys.stdout.write("\n")
        return
    if not rows:
        print(f"({empty})", file=sys.stderr)
        return
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def ref_row(
    butler: Butler,
    ref: DatasetRef,
    *,
    collection: str | None = None,
    timespan: Timespan | None = None,
    with_file: bool = True,
) -> dict[str, Any]:
    """The flat object the CLI shows for one dataset."""
    row: dict[str, Any] = {"dataset_type": ref.dataset_type.name, **dict(ref.data_id)}
    row["run"] = ref.run
    if collection is not None:
        row["collection"] = collection
    if timespan is not None:
        row["begin"], row["end"] = timespan.to_iso()
    row["dataset_id"] = str(ref.id)
    if with_file:
        stored = butler.stored_file(ref)
        row["uri"] = butler.datastore.uri(stored)
        row["formatter"] = stored.formatter
    return row
