"""Break-glass alerts: the row each break-glass request gets, its re-alert guard and its acknowledgement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlmodel import Session, col

from bot.store.models import BreakGlassAlert


@dataclass(frozen=True)
class Due:
    request_id: str
    alerts: int


def add_alert(*, session: Session, request_id: str, next_alert_at: datetime) -> None:
    session.add(BreakGlassAlert(request_id=request_id, alerts=1, next_alert_at=next_alert_at))
    session.flush()


def get_alert(*, session: Session, request_id: str) -> BreakGlassAlert | None:
    return session.get(BreakGlassAlert, request_id, populate_existing=True)


def due(*, session: Session, now: datetime, limit: int = 100) -> list[Due]:
    """Unacknowledged alerts whose next re-alert is due, oldest due first (ix_break_glass_alert_due)."""
    rows = session.execute(
        select(col(BreakGlassAlert.request_id), col(BreakGlassAlert.alerts))
        .where(col(BreakGlassAlert.acknowledged_at).is_(None), col(BreakGlassAlert.next_alert_at) <= now)
        .order_by(col(BreakGlassAlert.next_alert_at), col(BreakGlassAlert.request_id))
        .limit(limit)
    ).all()
    return [Due(request_id, alerts) for request_id, alerts in rows]


def take_realert(*, session: Session, request_id: str, seen_alerts: int, next_alert_at: datetime) -> bool:
    """Claim the next re-alert: True only for the one transaction whose guarded UPDATE moved the count
    on from what it read (on PostgreSQL a second replica waits on the row lock, then finds the count
    changed; on SQLite writers take turns)."""
    result = session.execute(
        update(BreakGlassAlert)
        .where(
            col(BreakGlassAlert.request_id) == request_id,
            col(BreakGlassAlert.alerts) == seen_alerts,
            col(BreakGlassAlert.acknowledged_at).is_(None),
        )
        .values(alerts=seen_alerts + 1, next_alert_at=next_alert_at)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def acknowledge(*, session: Session, request_id: str, by: str, now: datetime) -> bool:
    """First acknowledgement wins; any later one changes nothing."""
    result = session.execute(
        update(BreakGlassAlert)
        .where(col(BreakGlassAlert.request_id) == request_id, col(BreakGlassAlert.acknowledged_at).is_(None))
        .values(acknowledged_by=by, acknowledged_at=now)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def set_posted(*, session: Session, request_id: str, channel: str, ts: str) -> None:
    """Where an alert landed: the first one's ts is kept, and the latest one's."""
    row = session.get(BreakGlassAlert, request_id)
    if row is None:
        return
    row.channel = channel
    row.first_ts = row.first_ts or ts
    row.last_ts = ts
    session.add(row)
