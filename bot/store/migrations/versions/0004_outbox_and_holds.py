"""Never leave access behind: tokens held only to be revoked, the revocation watchdog, request
origins against replays, and the outbox of what the bot tells people in Slack.

Written 2026-12-01.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0004", "0003"

OPEN = "status IN ('pending', 'sending')"


def upgrade() -> None:
    op.add_column("grant", sa.Column("in_attempt", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("grant", sa.Column("refusal", sa.String(64), nullable=True))
    op.add_column("grant", sa.Column("overdue_alerted_at", sa.DateTime(timezone=True), nullable=True))
    # A plain ADD COLUMN and a unique index: a unique *constraint* would make SQLite rebuild the table,
    # which its foreign keys (votes, grants) refuse as soon as the table holds data.
    op.add_column("access_request", sa.Column("origin", sa.String(64), nullable=True))
    op.create_index("uq_access_request_origin", "access_request", ["origin"], unique=True)
    # `/jit request` counts the requester's open requests against limits.pending_per_requester.
    op.create_index("ix_access_request_requester_status", "access_request", ["requester_slack_id", "status"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("lane", sa.String(80), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(16), nullable=True, index=True),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("secret", sa.LargeBinary, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claim_id", sa.String(32), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    )
    # Partial indexes over open messages only: the delivered history grows, the work does not.
    open_indexes = {"ix_outbox_open_lane": ["lane", "id"], "ix_outbox_open_due": ["status", "next_attempt_at"]}
    for name, columns in open_indexes.items():
        op.create_index(name, "outbox", columns, sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN))


def downgrade() -> None:
    op.drop_index("ix_outbox_open_due", "outbox")
    op.drop_index("ix_outbox_open_lane", "outbox")
    op.drop_table("outbox")
    op.drop_index("ix_access_request_requester_status", "access_request")
    op.drop_index("uq_access_request_origin", "access_request")
    with op.batch_alter_table("access_request") as batch:
        batch.drop_column("origin")
    with op.batch_alter_table("grant") as batch:
        batch.drop_column("overdue_alerted_at")
        batch.drop_column("refusal")
        batch.drop_column("in_attempt")
