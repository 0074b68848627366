"""Indexes for the security leads' daily digest, which counts a day's audit events by type and looks
at a week of votes: both become index range scans instead of reading the whole trail or every vote.

The audit trail's index on event_type alone is replaced by one on (event_type, at), which answers
everything the old one did (its leading column) and the digest's "events of these types between
these moments", without a second index for every append to maintain.

Written 2026-12-03.
"""

from alembic import op

revision, down_revision = "0007", "0006"


def upgrade() -> None:
    op.create_index("ix_audit_event_type_at", "audit_event", ["event_type", "at"])
    op.drop_index("ix_audit_event_event_type", table_name="audit_event")
    op.create_index("ix_vote_created_at", "vote", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_vote_created_at", table_name="vote")
    op.create_index("ix_audit_event_event_type", "audit_event", ["event_type"])
    op.drop_index("ix_audit_event_type_at", table_name="audit_event")
