"""Reminders and escalation of pending requests: how many reminders were sent, when the reminder job
looks at a request next (indexed: the job asks for the due ones every few seconds), and when and to
whom it was escalated. Columns only, all nullable or defaulted, so rows from before need nothing.

Written 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0012", "0011"


def upgrade() -> None:
    op.add_column("access_request", sa.Column("reminders_sent", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("access_request", sa.Column("next_reminder_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("access_request", sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("access_request", sa.Column("escalated_to", sa.String(4000), nullable=True))
    op.create_index("ix_access_request_next_reminder_at", "access_request", ["next_reminder_at"])


def downgrade() -> None:
    op.drop_index("ix_access_request_next_reminder_at", table_name="access_request")
    with op.batch_alter_table("access_request") as batch:
        batch.drop_column("escalated_to")
        batch.drop_column("escalated_at")
        batch.drop_column("next_reminder_at")
        batch.drop_column("reminders_sent")
