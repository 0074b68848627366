"""The audit forwarding queue: one row per audit event, sent to the webhook strictly in seq order.

Only the head of the queue (the lowest seq not yet sent) is ever claimed, and a claim is a lease:
while one replica holds it, no other can send that event or any after it, so the receiver never gets
two copies of one event at the same moment, nor an event before the ones ahead of it. A replica that
dies mid-send loses its lease when it runs out; the next one sends the event again (at least once).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, delete, func, or_, text, update
from sqlalchemy.sql.dml import Update
from sqlmodel import Session, col, select

from bot.store.audit import ExportedEvent, export_events
from bot.store.models import AuditForward


class ForwardStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    # The receiver refused it (4xx) too many times; alerted. Forwarding stops here: only this event is
    # retried, slowly, so a fixed receiver resumes the trail where it stopped, in order.
    REFUSED = "refused"
    SENT = "sent"


# Spelled as the partial index's predicate (models.AuditForward), so the head lookup uses it.
_OPEN = text("audit_forward.status <> 'sent'")


@dataclass(frozen=True)
class ForwardClaim:
    seq: int
    attempts: int
    refusals: int
    alerted: bool
    event: ExportedEvent


def _due(now: datetime) -> Any:
    row = AuditForward
    waiting = [ForwardStatus.PENDING.value, ForwardStatus.REFUSED.value]
    return or_(
        and_(col(row.status).in_(waiting), col(row.next_attempt_at) <= now),
        and_(col(row.status) == ForwardStatus.SENDING.value, col(row.lease_until) <= now),
    )


def claim_head(*, session: Session, now: datetime, claim_id: str, lease_until: datetime) -> ForwardClaim | None:
    """Lease the head of the queue if it is due; None when the queue is empty, the head is waiting for
    its next attempt, or another worker holds it.

    On PostgreSQL a replica claiming the same head at the same moment waits on the row lock, then finds
    the row no longer due (READ COMMITTED re-checks the WHERE) and claims nothing; SQLite's writers are
    serialised by BEGIN IMMEDIATE.
    """
    connection = session.connection()
    head = connection.execute(select(func.min(col(AuditForward.seq))).where(_OPEN)).scalar()
    if head is None:
        return None
    claimed = connection.execute(
        update(AuditForward)
        .where(col(AuditForward.seq) == head, _due(now))
        .values(status=ForwardStatus.SENDING.value, claim_id=claim_id, lease_until=lease_until)
        .returning(
            col(AuditForward.seq), col(AuditForward.attempts), col(AuditForward.refusals), col(AuditForward.alerted_at)
        )
    ).first()
    if claimed is None:
        return None
    seq = int(claimed[0])
    event = next(iter(export_events(session=session, since=None, until=None, batch=1, after=seq - 1)), None)
    if event is None or event.seq != seq:
        raise LookupError(f"audit event {seq} is queued for forwarding but not in the trail")
    return ForwardClaim(seq, int(claimed[1]), int(claimed[2]), claimed[3] is not None, event)


def _held(seq: int, claim_id: str) -> Update:
    """An update of the row only while this claim still holds it (a lapsed lease loses it)."""
    return update(AuditForward).where(
        col(AuditForward.seq) == seq,
        col(AuditForward.claim_id) == claim_id,
        col(AuditForward.status) == ForwardStatus.SENDING.value,
    )


def mark_sent(*, session: Session, seq: int, claim_id: str, now: datetime) -> bool:
    result = session.connection().execute(
        _held(seq, claim_id).values(status=ForwardStatus.SENT.value, sent_at=now, lease_until=None, last_error=None)
    )
    return bool(result.rowcount == 1)


def put_back(
    *, session: Session, seq: int, claim_id: str, at: datetime, error: str, refused: bool, hold: bool = False
) -> bool:
    """Due again at ``at``. ``refused``: the receiver answered 4xx; ``hold``: it did so too often."""
    status = ForwardStatus.REFUSED if hold else ForwardStatus.PENDING
    values: dict[str, Any] = {
        "status": status.value,
        "next_attempt_at": at,
        "lease_until": None,
        "attempts": col(AuditForward.attempts) + 1,
        "refusals": col(AuditForward.refusals) + (1 if refused else 0),
        "last_error": error[:300],
    }
    if hold:
        values["alerted_at"] = func.coalesce(col(AuditForward.alerted_at), at)
    result = session.connection().execute(_held(seq, claim_id).values(**values))
    return bool(result.rowcount == 1)


def backlog(*, session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(AuditForward).where(_OPEN)).one())


def purge(*, session: Session, before: datetime, limit: int = 1000) -> int:
    """Forget rows sent before ``before``: the trail itself is the record."""
    old = (
        select(AuditForward.seq)
        .where(col(AuditForward.status) == ForwardStatus.SENT.value, col(AuditForward.sent_at) < before)
        .limit(limit)
    )
    result = session.connection().execute(delete(AuditForward).where(col(AuditForward.seq).in_(old.scalar_subquery())))
    return int(result.rowcount)
