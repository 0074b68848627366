"""Claiming the expiry notices that are due: one guarded UPDATE, so replicas send each notice once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, update
from sqlmodel import Session, col, select

from bot.domain.status import GrantStatus
from bot.store.models import AccessRequest, Grant

ACTIVE = GrantStatus.ACTIVE.value


def claim_due_notices(
    *, session: Session, now: datetime, notice: timedelta, resources: Sequence[str], limit: int
) -> list[tuple[str, datetime]]:
    """Mark the grants of ``resources`` that end within ``notice`` of ``now`` and have had no notice
    for their present expiry as noticed, and return them as (request id, expires_at).

    Only live, handed-out grants: active, not refused, not being ended early, not yet expired, and
    asked for longer than the notice, counting the time of the grants an extension extends (a grant
    no longer than its notice gets none: its pickup DM already said when it ends). The mark is the
    expiry the notice is for, so an extended grant (whose expiry moved) is due again before its new
    end. PostgreSQL: ``SKIP LOCKED`` lets replicas claim disjoint sets; the outer WHERE repeats the
    guard, so a grant is claimed by one transaction only.
    """
    if not resources:
        return []
    due = and_(
        col(Grant.status) == ACTIVE,
        col(Grant.refusal).is_(None),
        col(Grant.revoke_requested_by).is_(None),
        col(Grant.expires_at) > now,
        col(Grant.expires_at) <= now + notice,
        or_(col(Grant.expiry_notice_for).is_(None), col(Grant.expiry_notice_for) != col(Grant.expires_at)),
    )
    pick = (
        select(Grant.request_id)
        .join(AccessRequest, col(AccessRequest.id) == col(Grant.request_id))
        .where(
            due,
            col(AccessRequest.resource).in_(list(resources)),
            # The chain's whole time (an extension's own duration is only the time it adds).
            col(AccessRequest.duration_seconds) + func.coalesce(col(AccessRequest.prior_seconds), 0)
            > int(notice.total_seconds()),
        )
        .limit(limit)
        .with_for_update(skip_locked=True, of=Grant)
    )
    rows = (
        session.connection()
        .execute(
            update(Grant)
            .where(col(Grant.request_id).in_(pick.scalar_subquery()), due)
            .values(expiry_notice_for=col(Grant.expires_at))
            .returning(col(Grant.request_id), col(Grant.expires_at))
        )
        .all()
    )
    return [(str(row[0]), row[1] if row[1].tzinfo else row[1].replace(tzinfo=UTC)) for row in rows]
