"""The policy rule that decided a request, and a require rule's approvers for it, so that votes are
judged against the approvers the rule named and a rule's limit can count its recent auto-approvals.

Written 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0006", "0005"


def upgrade() -> None:
    op.add_column("access_request", sa.Column("rule", sa.String(64), nullable=True))
    op.add_column("access_request", sa.Column("approvers", sa.String(4000), nullable=True))
    op.create_index("ix_access_request_requester_rule", "access_request", ["requester_slack_id", "rule", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_access_request_requester_rule", table_name="access_request")
    with op.batch_alter_table("access_request") as batch:
        batch.drop_column("approvers")
        batch.drop_column("rule")
