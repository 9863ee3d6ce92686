"""Find processed bus messages by their id: a command re-sent at a new offset is a repeat.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "bus_processed_message", "bus_processed", ["consumer_group", "message_id"]
    )


def downgrade() -> None:
    op.drop_index("bus_processed_message", "bus_processed")
