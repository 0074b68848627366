"""Extensions: a request for more time on an active grant is a request of its own, linked to the one it
extends (``extends``), with the time the chain had been approved for before it (``prior_seconds``), so
its card shows the chain from its own row. A grant replaced by its extension's new token says by which
(``grant.replaced_by``), so its card and DM say "replaced" rather than "revoked early".

Written 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0011", "0010"


def upgrade() -> None:
    op.add_column("access_request", sa.Column("extends", sa.String(16), nullable=True))
    op.add_column("access_request", sa.Column("prior_seconds", sa.Integer(), nullable=True))
    # A grant's extensions are looked up on every redraw of its card.
    op.create_index("ix_access_request_extends", "access_request", ["extends"])
    op.add_column("grant", sa.Column("replaced_by", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("grant") as batch:
        batch.drop_column("replaced_by")
    op.drop_index("ix_access_request_extends", table_name="access_request")
    with op.batch_alter_table("access_request") as batch:
        batch.drop_column("prior_seconds")
        batch.drop_column("extends")
