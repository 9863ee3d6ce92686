"""Initial registry schema: dimension universe version 1, datasets, collections, calibrations.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from services.core.dimensions import default_universe
from services.registry.schema import build_metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UNIVERSE_VERSION = 1
# Tables that later revisions add; the initial schema is everything else.
ADDED_LATER = {"bus_processed", "registry_generation"}


def upgrade() -> None:
    universe = default_universe()
    # Later universe versions get their own migrations; this one builds version 1 only.
    assert universe.version == UNIVERSE_VERSION, "add a migration for the new universe version"
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    metadata = build_metadata(universe)
    metadata.create_all(bind, tables=_initial_tables(metadata))


def downgrade() -> None:
    metadata = build_metadata(default_universe())
    metadata.drop_all(op.get_bind(), tables=_initial_tables(metadata))


def _initial_tables(metadata: sa.MetaData) -> list[sa.Table]:
    return [t for t in metadata.sorted_tables if t.name not in ADDED_LATER]
