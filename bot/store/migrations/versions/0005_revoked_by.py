"""Who ended a grant early (Revoke now, /jit revoke), so cards, DMs and the audit channel can tell an
early revocation from an expiry.

Written 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0005", "0004"


def upgrade() -> None:
    op.add_column("grant", sa.Column("revoke_requested_by", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("grant") as batch:
        batch.drop_column("revoke_requested_by")
