"""Forwarding the audit trail to a webhook: one outbox row per audit event, written in the event's own
transaction, so that an event the database holds is an event the receiver will get.

Self-contained (it only adds a table): if another 0008 lands first, renumbering this one is all a
merge needs.

Written 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0008", "0007"

OPEN = "status <> 'sent'"


def upgrade() -> None:
    op.create_table(
        "audit_forward",
        # The audit event's seq: the queue's order is the chain's order.
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("refusals", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claim_id", sa.String(32), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    )
    # The head of the queue is the lowest unsent seq; the sent history costs the lookup nothing.
    op.create_index(
        "ix_audit_forward_open", "audit_forward", ["seq"], sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN)
    )


def downgrade() -> None:
    op.drop_index("ix_audit_forward_open", "audit_forward")
    op.drop_table("audit_forward")
