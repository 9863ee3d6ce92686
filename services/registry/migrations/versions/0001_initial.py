"""Initial registry schema: dimension universe version 1, datasets, collections, calibrations.

Revision ID: 0001
Revises:
"""

from alembic import op

from services.core.dimensions import default_universe
from services.registry.schema import build_metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UNIVERSE_VERSION = 1


def upgrade() -> None:
    universe = default_universe()
    # Later universe versions get their own migrations; this one builds version 1 only.
    assert universe.version == UNIVERSE_VERSION, "add a migration for the new universe version"
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    build_metadata(universe).create_all(bind)


def downgrade() -> None:
    build_metadata(default_universe()).drop_all(op.get_bind())
