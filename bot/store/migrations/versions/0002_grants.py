"""Grants: the minted token (encrypted), its expiry and its one-time pickup link.

Written 2026-11-27.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0002", "0001"


def upgrade() -> None:
    with op.batch_alter_table("access_request") as batch:
        batch.add_column(sa.Column("failure_code", sa.String(64), nullable=True))
        batch.add_column(sa.Column("failure_detail", sa.String(500), nullable=True))
    op.create_table(
        "grant",
        sa.Column("request_id", sa.String(16), sa.ForeignKey("access_request.id"), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("audience", sa.String(512), nullable=False),
        sa.Column("granted_scopes", sa.String(2048), nullable=False),
        sa.Column("token_type", sa.String(32), nullable=False),
        sa.Column("token_ciphertext", sa.LargeBinary, nullable=True),
        sa.Column("token_fingerprint", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("idp_expires_in", sa.Integer, nullable=True),
        sa.Column("pickup_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("pickup_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("picked_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("grant")
    with op.batch_alter_table("access_request") as batch:
        batch.drop_column("failure_detail")
        batch.drop_column("failure_code")
