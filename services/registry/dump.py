"""A canonical dump of a registry's content, to compare two registries (e.g. live vs replayed).

Surrogate ids (collection, dataset type) are replaced by names, and bookkeeping that records
*when* something was written (ingest dates, certification moments) is left out: two
registries that hold the same facts dump identically, however and whenever they were built.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from .registry import Registry
from .schema import build_metadata

# Moments and actors of writing: true of this registry's history, not of its content.
VOLATILE = {
    "ingest_date",
    "created_at",
    "certified_at",
    "certified_by",
    "decertified_at",
    "decertified_by",
    "defined_at",
    "superseded_at",
    "command",
    "frozen_at",
    "frozen_by",
    "changed_at",
    "changed_by",
}
# When things happened: taken from the commands' issue times when the registry service applied
# them, so a replayed registry has the same history (``history=True`` compares it too). Who
# did it (the service or the replay) and local-only changes (freezing) stay out.
HISTORY = {
    "ingest_date",
    "certified_at",
    "decertified_at",
    "defined_at",
    "superseded_at",
}
# Tables whose "id" is a surrogate number (dimension ids like exposure.id are content).
SURROGATE_IDS = {"collection", "dataset_type", "calib_validity", "collection_chain"}
# Bookkeeping of how the content was written, not content (a replay writes it differently).
SKIPPED_TABLES = {"bus_processed", "record_audit", "registry_generation"}
_NAMED = {
    "collection_id": "collection",
    "run_id": "collection",
    "parent_id": "collection",
    "child_id": "collection",
    "dataset_type_id": "dataset_type",
}


def canonical_dump(registry: Registry, history: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The registry's content; with ``history``, also when each change happened (and the
    decertified ranges and superseded chains that "as of" lookups still see)."""
    tables = build_metadata(registry.universe).tables
    dropped = VOLATILE - HISTORY if history else VOLATILE
    out: dict[str, list[dict[str, Any]]] = {}
    with registry.db.transaction(write=False) as conn:  # one snapshot; a dump is no write
        names = {
            table: dict(conn.execute(select(tables[table].c.id, tables[table].c.name)).all())
            for table in ("collection", "dataset_type")
        }
        live_calibs = tables["calib_validity"].c.decertified_at.is_(None)
        live_chains = tables["collection_chain"].c.superseded_at.is_(None)
        for name, table in sorted(tables.items()):
            if name in SKIPPED_TABLES:
                continue
            stmt = select(table)
            if history:
                pass  # every row: decertified ranges and superseded chains are history
            elif name == "calib_validity":
                stmt = stmt.where(live_calibs)
            elif name == "collection_chain":
                stmt = stmt.where(live_chains)
            rows = []
            for row in conn.execute(stmt).mappings():
                clean = {}
                for column, value in row.items():
                    if column in dropped or (column == "id" and name in SURROGATE_IDS):
                        continue
                    if column in _NAMED:
                        value = names[_NAMED[column]][value]
                    plain = isinstance(value, int | float | str | None)
                    clean[column] = value if plain else str(value)
                rows.append(clean)
            out[name] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
    return out
