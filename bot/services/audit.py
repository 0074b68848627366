"""The one function use cases record audit events through."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session

from bot.domain.audit import AuditEventType
from bot.store.audit import append_event

__all__ = ["AuditEventType", "record"]


def record(
    event_type: AuditEventType,
    *,
    session: Session,
    at: datetime,
    actor: str,
    request_id: str | None,
    **details: Any,
) -> None:
    append_event(
        session=session, at=at, event_type=event_type.value, actor=actor, request_id=request_id, details=details
    )
