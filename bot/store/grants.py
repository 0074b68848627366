"""Reads and guarded writes on grants."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import and_, func, update
from sqlmodel import Session, col, select

from bot.store.models import Grant


def add_grant(*, session: Session, grant: Grant) -> None:
    session.add(grant)
    session.flush()


def get_grant(*, session: Session, request_id: str) -> Grant | None:
    return session.get(Grant, request_id)


def claim_pickup(*, session: Session, hashed: str, now: datetime) -> bool:
    """Mark a pickup link used, if it is live. Exactly one caller ever gets True for a link."""
    result = session.execute(
        update(Grant)
        .where(
            col(Grant.pickup_hash) == hashed,
            col(Grant.picked_up_at).is_(None),
            col(Grant.pickup_expires_at) > now,
            col(Grant.status) == "active",
        )
        .values(picked_up_at=now)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def get_grant_by_pickup(*, session: Session, hashed: str) -> Grant | None:
    return session.exec(select(Grant).where(Grant.pickup_hash == hashed)).first()


def claim_due(
    *,
    session: Session,
    now: datetime,
    claim_id: str,
    lease_until: datetime,
    limit: int,
    request_ids: list[str] | None = None,
) -> list[str]:
    """Claim up to ``limit`` due grants for this worker; returns their request ids.

    Two claims, each an index range scan: active grants past expiry (ix_grant_status_expires_at),
    then revocations whose lease ran out (ix_grant_status_lease_until). A single statement with an
    OR of the two makes SQLite walk every grant in expiry order (~200 ms with 100,000 live grants).
    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets replicas claim disjoint sets at the same moment.
    SQLite: each statement is a guarded ``UPDATE … WHERE status = …`` inside BEGIN IMMEDIATE,
    so claims are serialised. Either way a grant is claimed by one worker at a time.
    """
    claimed: list[str] = []
    for status, moment in (("active", Grant.expires_at), ("revoking", Grant.lease_until)):
        due = and_(col(Grant.status) == status, col(moment) <= now)
        pick = select(Grant.request_id).where(due)
        if request_ids is not None:
            pick = pick.where(col(Grant.request_id).in_(request_ids))
        pick = pick.order_by(col(moment)).limit(limit - len(claimed)).with_for_update(skip_locked=True)
        result = session.execute(
            update(Grant)
            .where(col(Grant.request_id).in_(pick.scalar_subquery()), due)
            .values(status="revoking", claim_id=claim_id, lease_until=lease_until)
            .returning(col(Grant.request_id))
        )
        claimed += [row[0] for row in result.all()]
        if len(claimed) >= limit:
            break
    return claimed


def next_due(*, session: Session) -> datetime | None:
    """When the sweep next has work: the earliest expiry or retry. Two index lookups."""
    expiry = session.exec(select(func.min(Grant.expires_at)).where(col(Grant.status) == "active")).one()
    retry = session.exec(select(func.min(Grant.lease_until)).where(col(Grant.status) == "revoking")).one()
    moments = [m for m in (expiry, retry) if m is not None]
    if not moments:
        return None
    earliest = min(m if m.tzinfo else m.replace(tzinfo=UTC) for m in moments)
    return earliest


def finish_revocation(*, session: Session, request_id: str, claim_id: str, now: datetime) -> bool:
    """revoking -> revoked and wipe the ciphertext, only while this worker still holds the claim."""
    result = session.execute(
        update(Grant)
        .where(
            col(Grant.request_id) == request_id,
            col(Grant.status) == "revoking",
            col(Grant.claim_id) == claim_id,
        )
        .values(status="revoked", revoked_at=now, token_ciphertext=None, lease_until=None, last_error=None)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def record_failure(*, session: Session, request_id: str, claim_id: str, retry_at: datetime, error: str) -> int | None:
    """Count a failed attempt and set when to try again; None if the claim was lost meanwhile."""
    result = session.execute(
        update(Grant)
        .where(
            col(Grant.request_id) == request_id,
            col(Grant.status) == "revoking",
            col(Grant.claim_id) == claim_id,
        )
        .values(attempts=col(Grant.attempts) + 1, lease_until=retry_at, last_error=error[:300])
        .returning(col(Grant.attempts))
    )
    row = result.first()
    return int(row[0]) if row is not None else None


def expire_now(*, session: Session, request_id: str, now: datetime) -> bool:
    """Early revocation: bring an active grant's expiry forward to now, so the sweep takes it."""
    result = session.execute(
        update(Grant).where(col(Grant.request_id) == request_id, col(Grant.status) == "active").values(expires_at=now)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def active_for(*, session: Session, request_ids: list[str]) -> list[Grant]:
    if not request_ids:
        return []
    return list(session.exec(select(Grant).where(col(Grant.request_id).in_(request_ids))).all())
