"""The daily digest's lease: one row per local day whose digest was queued, keyed by the day, so
replicas and restarts post each day's digest once. Self-contained (one new table, nothing else
touched), after the audit forwarding table (0008).

Written 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0009", "0008"


def upgrade() -> None:
    op.create_table(
        "digest_day",
        sa.Column("day", sa.String(length=10), primary_key=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("ts", sa.String(length=32), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("digest_day")
