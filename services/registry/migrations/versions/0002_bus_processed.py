"""Record consumed bus messages with their effect (exactly-once effect for the services).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bus_processed",
        sa.Column("consumer_group", sa.String(128), primary_key=True),
        sa.Column("topic", sa.String(128), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("offset", sa.BigInteger, primary_key=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("processed_at", sa.BigInteger, nullable=False),
        sa.Column("outputs", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bus_processed")
