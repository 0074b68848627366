"""Revocation engine: claims with leases, attempts, and the indexes the sweep needs.

Written 2026-11-27.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0003", "0002"


def upgrade() -> None:
    with op.batch_alter_table("grant") as batch:
        batch.add_column(sa.Column("claim_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_error", sa.String(300), nullable=True))
    # The sweep asks "which active grants are due" and "which revocations are due a retry"; with
    # 100,000 live grants both must be index range scans, never table scans.
    op.create_index("ix_grant_status_expires_at", "grant", ["status", "expires_at"])
    op.create_index("ix_grant_status_lease_until", "grant", ["status", "lease_until"])
    op.create_index("ix_access_request_status_created_at", "access_request", ["status", "created_at"])
    op.create_index("ix_access_request_status_updated_at", "access_request", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_access_request_status_updated_at", "access_request")
    op.drop_index("ix_access_request_status_created_at", "access_request")
    op.drop_index("ix_grant_status_lease_until", "grant")
    op.drop_index("ix_grant_status_expires_at", "grant")
    with op.batch_alter_table("grant") as batch:
        batch.drop_column("last_error")
        batch.drop_column("attempts")
        batch.drop_column("lease_until")
        batch.drop_column("claim_id")
