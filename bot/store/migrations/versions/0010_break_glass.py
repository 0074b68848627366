"""Break-glass: a request opened with /jit breakglass is marked on access_request, and its alert
(until acknowledged, with the re-alert's guard and the alert messages' coordinates) is one row of
break_glass_alert. Additive: existing requests are not break-glass.

Written 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0010", "0009"


def upgrade() -> None:
    op.add_column("access_request", sa.Column("break_glass", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "break_glass_alert",
        sa.Column("request_id", sa.String(length=16), sa.ForeignKey("access_request.id"), primary_key=True),
        sa.Column("alerts", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("next_alert_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_by", sa.String(length=32), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("first_ts", sa.String(length=32), nullable=True),
        sa.Column("last_ts", sa.String(length=32), nullable=True),
    )
    op.create_index(
        "ix_break_glass_alert_due",
        "break_glass_alert",
        ["next_alert_at"],
        sqlite_where=sa.text("acknowledged_at IS NULL"),
        postgresql_where=sa.text("acknowledged_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_break_glass_alert_due", table_name="break_glass_alert")
    op.drop_table("break_glass_alert")
    with op.batch_alter_table("access_request") as batch:
        batch.drop_column("break_glass")
