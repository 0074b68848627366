"""Reads and the guarded claim behind reminders and escalation (``bot.services.reminders``).

The claim is one ``UPDATE … WHERE status = 'pending' AND reminders_sent = :seen AND escalated_at``
is as seen: of several replicas that read the same row at the same instant, only the first to write
changes it, and only that one queues the reminder, in the same transaction. On PostgreSQL the others
wait on the row lock and then find the guard false; on SQLite the writes are serialised anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from bot.domain.status import RequestStatus
from bot.store.models import AccessRequest


@dataclass(frozen=True)
class Due:
    """A pending request the job has to look at, as it stood when read."""

    id: str
    resource: str
    created_at: datetime
    next_reminder_at: datetime | None
    reminders_sent: int
    escalated: bool


def due(*, session: Session, now: datetime, created_after: datetime, limit: int) -> list[Due]:
    """Pending requests not yet expired whose next look has come, or that were never looked at."""
    rows = session.exec(
        select(AccessRequest)
        .where(
            col(AccessRequest.status) == RequestStatus.PENDING.value,
            col(AccessRequest.created_at) > created_after,
            or_(col(AccessRequest.next_reminder_at).is_(None), col(AccessRequest.next_reminder_at) <= now),
        )
        .order_by(col(AccessRequest.created_at))
        .limit(limit)
    ).all()
    return [
        Due(
            id=row.id,
            resource=row.resource,
            created_at=row.created_at,
            next_reminder_at=row.next_reminder_at,
            reminders_sent=row.reminders_sent,
            escalated=row.escalated_at is not None,
        )
        for row in rows
    ]


def claim(
    *,
    session: Session,
    seen: Due,
    next_at: datetime,
    remind: bool,
    escalate_to: Sequence[str] | None,
    now: datetime,
) -> bool:
    """Move the request's schedule on from what ``seen`` read; True only for the one caller that did.
    ``remind`` counts a reminder; ``escalate_to`` (not None) marks the request escalated to them."""
    values: dict[str, object] = {"next_reminder_at": next_at}
    if remind:
        values["reminders_sent"] = col(AccessRequest.reminders_sent) + 1
    if escalate_to is not None:
        values |= {"escalated_at": now, "escalated_to": " ".join(escalate_to)[:4000]}
    escalated = col(AccessRequest.escalated_at)
    result = session.execute(
        update(AccessRequest)
        .where(
            col(AccessRequest.id) == seen.id,
            col(AccessRequest.status) == RequestStatus.PENDING.value,
            col(AccessRequest.reminders_sent) == seen.reminders_sent,
            escalated.is_not(None) if seen.escalated else escalated.is_(None),
        )
        .values(**values)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
