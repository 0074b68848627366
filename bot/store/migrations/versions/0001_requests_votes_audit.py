"""Requests, votes and the hash-chained audit trail.

Written 2026-11-27.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0001", None

GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "access_request",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("requester_slack_id", sa.String(32), nullable=False, index=True),
        sa.Column("requester_subject", sa.String(255), nullable=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("audience", sa.String(512), nullable=False),
        sa.Column("scopes", sa.String(2048), nullable=False),
        sa.Column("duration_seconds", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("approvals_required", sa.Integer, nullable=False),
        sa.Column("approver_channel", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(32), nullable=True),
        sa.Column("deny_reason", sa.String(1000), nullable=True),
        sa.Column("card_channel", sa.String(32), nullable=True),
        sa.Column("card_ts", sa.String(32), nullable=True),
    )
    op.create_table(
        "vote",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(16), sa.ForeignKey("access_request.id"), nullable=False, index=True),
        sa.Column("voter_slack_id", sa.String(32), nullable=False),
        sa.Column("choice", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("request_id", "voter_slack_id", name="uq_vote_request_voter"),
    )
    op.create_table(
        "audit_event",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("event_type", sa.String(64), nullable=False, index=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(16), nullable=True, index=True),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
    )
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_table("audit_event")
    op.drop_table("vote")
    op.drop_table("access_request")
