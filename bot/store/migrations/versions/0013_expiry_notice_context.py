"""The expiry notice and access that ends when its reason does: which expiry a grant's notice was sent
for, which usergroups an auto-approval rested on, and how reading each usergroup has gone lately (so
repeated failures are alerted once, whichever replica sees them).

Written 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0013", "0012"


def upgrade() -> None:
    op.add_column("grant", sa.Column("expiry_notice_for", sa.DateTime(timezone=True), nullable=True))
    op.add_column("access_request", sa.Column("context_usergroups", sa.String(4000), nullable=True))
    op.create_table(
        "usergroup_check",
        sa.Column("usergroup", sa.String(length=32), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=80), nullable=True),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("usergroup_check")
    with op.batch_alter_table("access_request") as batch:
        batch.drop_column("context_usergroups")
    with op.batch_alter_table("grant") as batch:
        batch.drop_column("expiry_notice_for")
