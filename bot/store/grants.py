"""Reads and guarded writes on grants: the tokens the bot holds.

A token is written here the moment the IdP hands it over, before anything is checked, so from then
on it is either a usable grant or due for revocation, and a crash at any point leaves it to the
revocation engine. Status changes go through ``bot.store.transitions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, update
from sqlmodel import Session, col, select

from bot.domain.status import GRANT_TRANSITIONS, GrantStatus, check_transition
from bot.store.models import AccessRequest, Grant

# The refusal of a fresh token whose checks (JWT verification) have not finished yet.
UNCHECKED = "unchecked"

ACTIVE = GrantStatus.ACTIVE.value
REVOKING = GrantStatus.REVOKING.value


def add_grant(*, session: Session, grant: Grant) -> None:
    session.add(grant)
    session.flush()


def get_grant(*, session: Session, request_id: str, fresh: bool = False, lock: bool = False) -> Grant | None:
    """``fresh``: read the row again even if this session holds it (guarded UPDATEs bypass the session).
    ``lock``: and hold its row lock to the end of the transaction (SELECT … FOR UPDATE on PostgreSQL;
    SQLite's writers take turns already)."""
    return session.get(Grant, request_id, populate_existing=fresh or lock, with_for_update=lock)


def claim_pickup(*, session: Session, hashed: str, now: datetime) -> bool:
    """Mark a pickup link used, if it is live. Exactly one caller ever gets True for a link."""
    result = session.execute(
        update(Grant)
        .where(
            col(Grant.pickup_hash) == hashed,
            col(Grant.picked_up_at).is_(None),
            col(Grant.pickup_expires_at) > now,
            col(Grant.status) == ACTIVE,
            col(Grant.refusal).is_(None),
            col(Grant.expires_at) > now,
        )
        .values(picked_up_at=now)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def get_grant_by_pickup(*, session: Session, hashed: str) -> Grant | None:
    return session.exec(select(Grant).where(Grant.pickup_hash == hashed)).first()


def resource_of_pickup(*, session: Session, hashed: str) -> str | None:
    """The resource of the request whose pickup link has this hash, or None for no such link."""
    row = session.exec(
        select(AccessRequest.resource)
        .join(Grant, col(Grant.request_id) == col(AccessRequest.id))
        .where(Grant.pickup_hash == hashed)
    ).first()
    return str(row) if row is not None else None


def request_of_pickup(*, session: Session, hashed: str) -> str | None:
    found = session.exec(select(Grant.request_id).where(Grant.pickup_hash == hashed)).first()
    return str(found) if found is not None else None


def lock_chain_above(*, session: Session, request_id: str) -> None:
    """Take the row locks of the grants before this request's in its chain of extensions, the first
    grant's first. An early end
    and an extension's pickup both lock a chain in that order before its own grant's row, so on
    PostgreSQL they wait for each other instead of each holding a row the other needs, when one of
    them would be killed as a deadlock (a revocation lost to a pickup). SQLite's writers take turns."""
    above: list[str] = []
    current: str | None = request_id
    while current is not None:
        current = session.exec(select(AccessRequest.extends).where(col(AccessRequest.id) == current)).first()
        if current is not None:
            above.append(current)
    for earlier in reversed(above):
        session.exec(select(Grant.request_id).where(col(Grant.request_id) == earlier).with_for_update()).first()


def pickup_exists(*, session: Session, hashed: str) -> bool:
    return session.exec(select(Grant.request_id).where(Grant.pickup_hash == hashed)).first() is not None


def activate(
    *,
    session: Session,
    request_id: str,
    expires_at: datetime,
    pickup_hash: str,
    pickup_expires_at: datetime,
) -> bool:
    """A fresh token passed its checks: it becomes a real grant, unless the engine took it meanwhile."""
    result = session.execute(
        update(Grant)
        .where(col(Grant.request_id) == request_id, col(Grant.status) == ACTIVE, col(Grant.refusal) == UNCHECKED)
        .values(refusal=None, expires_at=expires_at, pickup_hash=pickup_hash, pickup_expires_at=pickup_expires_at)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def refuse(*, session: Session, request_id: str, refusal: str, now: datetime) -> bool:
    """The token must never be handed out: due for revocation now. False if it is already being revoked."""
    result = session.execute(
        update(Grant)
        .where(col(Grant.request_id) == request_id, col(Grant.status) == ACTIVE)
        .values(refusal=refusal[:64], expires_at=now, pickup_hash=None, pickup_expires_at=None)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ClaimedGrant:
    """What a revocation attempt needs of a grant it claimed, read by the claim itself."""

    request_id: str
    token_ciphertext: bytes | None
    token_fingerprint: str
    expires_at: datetime
    refusal: str | None
    attempts: int


@dataclass(frozen=True)
class Claim:
    grants: list[ClaimedGrant]
    # Revocations whose previous lease ran out with no outcome recorded: (request id, attempts).
    lapsed: list[tuple[str, int]]

    @property
    def claimed(self) -> list[str]:
        return [g.request_id for g in self.grants]


def claim_due(
    *,
    session: Session,
    now: datetime,
    claim_id: str,
    lease_until: datetime,
    limit: int,
    request_ids: list[str] | None = None,
) -> Claim:
    """Claim up to ``limit`` due grants for this worker.

    A revocation whose lease ran out while its attempt was still running (a worker that died or
    hung) first has that attempt counted as failed. Then two claims, each an index range scan:
    active grants past expiry (ix_grant_status_expires_at), then revocations whose lease ran out
    (ix_grant_status_lease_until). A single statement with an OR of the two makes SQLite walk
    every grant in expiry order (~200 ms with 100,000 live grants). PostgreSQL: ``FOR UPDATE SKIP
    LOCKED`` lets replicas claim disjoint sets at the same moment. SQLite: each statement is a
    guarded ``UPDATE … WHERE status = …`` inside BEGIN IMMEDIATE, so claims are serialised. The
    statements bypass the ORM (no session synchronisation): the claimed rows are read fresh after.
    """
    check_transition(GRANT_TRANSITIONS, GrantStatus.ACTIVE, GrantStatus.REVOKING)
    lapsed_guard = and_(col(Grant.status) == REVOKING, col(Grant.lease_until) <= now, col(Grant.in_attempt))
    lapsed_pick = select(Grant.request_id).where(lapsed_guard).limit(limit).with_for_update(skip_locked=True)
    lapsed = [
        (row[0], int(row[1]))
        for row in session.connection()
        .execute(
            update(Grant)
            .where(col(Grant.request_id).in_(lapsed_pick.scalar_subquery()), lapsed_guard)
            .values(
                in_attempt=False,
                attempts=col(Grant.attempts) + 1,
                last_error="lease_expired: the attempt recorded no outcome in time",
            )
            .returning(col(Grant.request_id), col(Grant.attempts))
        )
        .all()
    ]
    claimed: list[ClaimedGrant] = []
    for status, moment in ((ACTIVE, Grant.expires_at), (REVOKING, Grant.lease_until)):
        if len(claimed) >= limit:
            break
        due = and_(col(Grant.status) == status, col(moment) <= now)
        pick = select(Grant.request_id).where(due)
        if request_ids is not None:
            pick = pick.where(col(Grant.request_id).in_(request_ids))
        pick = pick.order_by(col(moment)).limit(limit - len(claimed)).with_for_update(skip_locked=True)
        result = session.connection().execute(
            update(Grant)
            .where(col(Grant.request_id).in_(pick.scalar_subquery()), due)
            .values(status=REVOKING, claim_id=claim_id, lease_until=lease_until, in_attempt=True)
            .returning(
                col(Grant.request_id),
                col(Grant.token_ciphertext),
                col(Grant.token_fingerprint),
                col(Grant.expires_at),
                col(Grant.refusal),
                col(Grant.attempts),
            )
        )
        claimed += [
            ClaimedGrant(rid, cipher, fingerprint, expires, refusal, int(attempts))
            for rid, cipher, fingerprint, expires, refusal, attempts in result.all()
        ]
    return Claim(grants=claimed, lapsed=lapsed)


def next_due(*, session: Session) -> datetime | None:
    """When the sweep next has work: the earliest expiry or retry. Two index lookups."""
    expiry = session.exec(select(func.min(Grant.expires_at)).where(col(Grant.status) == ACTIVE)).one()
    retry = session.exec(select(func.min(Grant.lease_until)).where(col(Grant.status) == REVOKING)).one()
    moments = [m for m in (expiry, retry) if m is not None]
    if not moments:
        return None
    earliest = min(m if m.tzinfo else m.replace(tzinfo=UTC) for m in moments)
    return earliest


def record_failure(*, session: Session, request_id: str, claim_id: str, retry_at: datetime, error: str) -> int | None:
    """Count a failed attempt and set when to try again; None if the claim was lost meanwhile."""
    result = session.connection().execute(
        update(Grant)
        .where(
            col(Grant.request_id) == request_id,
            col(Grant.status) == REVOKING,
            col(Grant.claim_id) == claim_id,
            col(Grant.in_attempt),
        )
        .values(attempts=col(Grant.attempts) + 1, lease_until=retry_at, last_error=error[:300], in_attempt=False)
        .returning(col(Grant.attempts))
    )
    row = result.first()
    return int(row[0]) if row is not None else None


def expire_now(*, session: Session, request_id: str, now: datetime, by: str) -> bool:
    """Early revocation: bring an active grant's expiry forward to now, so the sweep takes it, and end
    its pickup link at once (it may be why the grant is being revoked), whenever the sweep gets to it.
    The link's hash stays, so a visit to it is told that the access ended rather than "no such link";
    its end moves back to the moment the token was issued, which no replica's clock can be before."""
    result = session.execute(
        update(Grant)
        .where(
            col(Grant.request_id) == request_id,
            col(Grant.status) == ACTIVE,
            col(Grant.refusal).is_(None),
            # Once ended early (or replaced by its extension), who ended it stays as recorded: a second
            # Revoke now, or one racing the context check, changes nothing and audits nothing.
            col(Grant.revoke_requested_by).is_(None),
            col(Grant.replaced_by).is_(None),
        )
        .values(expires_at=now, pickup_expires_at=col(Grant.issued_at), revoke_requested_by=by)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def alert_overdue(*, session: Session, now: datetime, grace: timedelta, limit: int) -> list[tuple[str, datetime]]:
    """Grants still not confirmed revoked ``grace`` after their expiry, not yet alerted: marked as
    alerted (so each is alerted once, by one replica) and returned as (request id, expires_at)."""
    overdue = and_(
        col(Grant.status).in_([ACTIVE, REVOKING]),
        col(Grant.expires_at) <= now - grace,
        col(Grant.overdue_alerted_at).is_(None),
    )
    pick = select(Grant.request_id).where(overdue).limit(limit).with_for_update(skip_locked=True)
    rows = (
        session.connection()
        .execute(
            update(Grant)
            .where(col(Grant.request_id).in_(pick.scalar_subquery()), overdue)
            .values(overdue_alerted_at=now)
            .returning(col(Grant.request_id), col(Grant.expires_at))
        )
        .all()
    )
    return [(row[0], row[1] if row[1].tzinfo else row[1].replace(tzinfo=UTC)) for row in rows]


def grants_for(*, session: Session, request_ids: list[str]) -> list[Grant]:
    if not request_ids:
        return []
    return list(session.exec(select(Grant).where(col(Grant.request_id).in_(request_ids))).all())


def replace_now(*, session: Session, request_id: str, now: datetime, by: str) -> bool:
    """The extension ``by`` has handed out its new token: this grant is due now, as for an early end
    (its pickup link ends too), marked as replaced rather than revoked by someone. False if it is no
    longer a live grant (already due, refused, or being revoked)."""
    result = session.execute(
        update(Grant)
        .where(
            col(Grant.request_id) == request_id,
            col(Grant.status) == ACTIVE,
            col(Grant.refusal).is_(None),
            col(Grant.expires_at) > now,
        )
        .values(expires_at=now, pickup_expires_at=col(Grant.issued_at), replaced_by=by[:16])
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
