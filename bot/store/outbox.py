"""The outbox: messages for Slack, stored with the change they report, claimed and delivered by workers.

Rows of one lane are delivered strictly in id order: a worker may only claim a lane's oldest
undelivered row, so a card update never overtakes the post that created the card. Claims are
exclusive (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite) and leased, so
replicas deliver each message once, and a worker that dies loses its claim when the lease ends.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from bot.store.models import OutboxMessage


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"  # Slack refused it for good; the sender acted on that
    SUPERSEDED = "superseded"  # a newer version of the same card was queued behind it
    DROPPED = "dropped"  # nothing left to deliver to (a card that was never posted)


OPEN = (OutboxStatus.PENDING.value, OutboxStatus.SENDING.value)
DONE = (OutboxStatus.SENT.value, OutboxStatus.FAILED.value, OutboxStatus.SUPERSEDED.value, OutboxStatus.DROPPED.value)


@dataclass(frozen=True)
class Claimed:
    id: int
    lane: str
    channel: str
    kind: str
    request_id: str | None
    payload: dict[str, Any]
    secret: bytes | None
    attempts: int


def add(
    *,
    session: Session,
    lane: str,
    channel: str,
    kind: str,
    request_id: str | None,
    payload: dict[str, Any],
    secret: bytes | None,
    now: datetime,
) -> None:
    session.add(
        OutboxMessage(
            lane=lane,
            channel=channel,
            kind=kind,
            request_id=request_id,
            payload=payload,
            secret=secret,
            status=OutboxStatus.PENDING.value,
            next_attempt_at=now,
            created_at=now,
        )
    )
    session.flush()


def claim(
    *,
    session: Session,
    now: datetime,
    claim_id: str,
    lease_until: datetime,
    limit: int,
    held_channels: Collection[str] = (),
) -> list[Claimed]:
    """Claim up to ``limit`` lane heads that are due, skipping channels that are being held back."""
    if limit <= 0:
        return []
    row = OutboxMessage
    earlier = aliased(OutboxMessage)
    due = or_(
        and_(col(row.status) == OutboxStatus.PENDING.value, col(row.next_attempt_at) <= now),
        and_(col(row.status) == OutboxStatus.SENDING.value, col(row.lease_until) <= now),
    )
    blocked = exists().where(
        col(earlier.lane) == col(row.lane), col(earlier.id) < col(row.id), col(earlier.status).in_(OPEN)
    )
    pick = select(row.id).where(due, ~blocked)
    if held_channels:
        pick = pick.where(col(row.channel).not_in(list(held_channels)))
    pick = pick.order_by(col(row.id)).limit(limit).with_for_update(skip_locked=True)
    result = session.execute(
        update(OutboxMessage)
        .where(col(OutboxMessage.id).in_(pick.scalar_subquery()), due)
        .values(status=OutboxStatus.SENDING.value, claim_id=claim_id, lease_until=lease_until)
        .returning(
            col(OutboxMessage.id),
            col(OutboxMessage.lane),
            col(OutboxMessage.channel),
            col(OutboxMessage.kind),
            col(OutboxMessage.request_id),
            col(OutboxMessage.payload),
            col(OutboxMessage.secret),
            col(OutboxMessage.attempts),
        )
    )
    claimed = [Claimed(*r) for r in result.all()]
    return sorted(claimed, key=lambda c: c.id)


def renew(*, session: Session, claim_id: str, ids: Collection[int], lease_until: datetime) -> None:
    if ids:
        session.execute(
            update(OutboxMessage)
            .where(col(OutboxMessage.id).in_(list(ids)), col(OutboxMessage.claim_id) == claim_id)
            .where(col(OutboxMessage.status) == OutboxStatus.SENDING.value)
            .values(lease_until=lease_until)
        )


def finish(
    *,
    session: Session,
    message_id: int,
    claim_id: str,
    status: OutboxStatus,
    now: datetime,
    error: str | None = None,
) -> bool:
    """Close a claimed message (sent, failed, superseded, dropped); the secret is wiped. False if the
    claim was lost meanwhile (the lease ran out and another worker took it)."""
    result = session.execute(
        update(OutboxMessage)
        .where(
            col(OutboxMessage.id) == message_id,
            col(OutboxMessage.claim_id) == claim_id,
            col(OutboxMessage.status) == OutboxStatus.SENDING.value,
        )
        .values(
            status=status.value,
            sent_at=now if status is OutboxStatus.SENT else None,
            lease_until=None,
            secret=None,
            last_error=error[:300] if error else None,
        )
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def retry(
    *, session: Session, message_id: int, claim_id: str, at: datetime, error: str, count_attempt: bool = True
) -> bool:
    """Put a claimed message back, due at ``at``. A pacing hold is not an attempt."""
    result = session.execute(
        update(OutboxMessage)
        .where(
            col(OutboxMessage.id) == message_id,
            col(OutboxMessage.claim_id) == claim_id,
            col(OutboxMessage.status) == OutboxStatus.SENDING.value,
        )
        .values(
            status=OutboxStatus.PENDING.value,
            next_attempt_at=at,
            lease_until=None,
            attempts=col(OutboxMessage.attempts) + (1 if count_attempt else 0),
            last_error=error[:300],
        )
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def newer_in_lane(*, session: Session, lane: str, after_id: int, kind: str) -> bool:
    """Is a later message of the same kind waiting in this lane (so this one is out of date)?"""
    found = session.exec(
        select(OutboxMessage.id)
        .where(
            col(OutboxMessage.lane) == lane,
            col(OutboxMessage.id) > after_id,
            col(OutboxMessage.kind) == kind,
            col(OutboxMessage.status).in_(OPEN),
        )
        .limit(1)
    ).first()
    return found is not None


def next_due(*, session: Session) -> datetime | None:
    earliest = session.exec(
        select(func.min(OutboxMessage.next_attempt_at)).where(col(OutboxMessage.status) == OutboxStatus.PENDING.value)
    ).one()
    return earliest


def undelivered(*, session: Session) -> int:
    return int(
        session.exec(select(func.count()).select_from(OutboxMessage).where(col(OutboxMessage.status).in_(OPEN))).one()
    )


def purge(*, session: Session, before: datetime, limit: int = 1000) -> int:
    """Forget delivered (or given-up) messages older than ``before``; the audit trail is the record."""
    old = (
        select(OutboxMessage.id)
        .where(col(OutboxMessage.status).in_(DONE), col(OutboxMessage.created_at) < before)
        .limit(limit)
    )
    result = session.execute(delete(OutboxMessage).where(col(OutboxMessage.id).in_(old.scalar_subquery())))
    return int(result.rowcount)  # type: ignore[attr-defined]
