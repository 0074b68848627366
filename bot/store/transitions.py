"""The one way a request or a grant changes status.

    won = move_request(session=s, request_id=rid, source=RequestStatus.PENDING,
                       target=RequestStatus.CANCELLED, now=now,
                       event=Audit(AuditEventType.REQUEST_CANCELLED, actor=user, details={...}),
                       decided_at=now)

The move is checked against the tables in ``bot.domain.status`` (a move they do not allow raises
IllegalTransition: a bug, not a race), then runs as ``UPDATE … WHERE status = <source>``, and only
if that changed the row is the audit event appended, in the same transaction. The result says
whether this caller won; a caller that lost must not act as if the move happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.sql.dml import Update
from sqlmodel import Session, col

from bot.domain.audit import AuditEventType
from bot.domain.status import GRANT_TRANSITIONS, REQUEST_TRANSITIONS, GrantStatus, RequestStatus, check_transition
from bot.store.audit import append_event
from bot.store.models import AccessRequest, Grant

# The actor of what the bot does by itself (mints, revocations, timeouts).
BOT_ACTOR = "jit-bot"


@dataclass(frozen=True)
class Audit:
    """The audit event a transition appends when it wins."""

    event_type: AuditEventType
    actor: str
    details: dict[str, Any] = field(default_factory=dict)


def move_request(
    *,
    session: Session,
    request_id: str,
    source: RequestStatus,
    target: RequestStatus,
    now: datetime,
    event: Audit | None,
    **fields: Any,
) -> bool:
    check_transition(REQUEST_TRANSITIONS, source, target)
    statement = (
        update(AccessRequest)
        .where(col(AccessRequest.id) == request_id, col(AccessRequest.status) == source.value)
        .values(status=target.value, updated_at=now, **fields)
    )
    return _guarded(session, statement, now, request_id, event)


def fail_mint(
    *, session: Session, request_id: str, code: str, detail: str, now: datetime, token_fingerprint: str | None = None
) -> bool:
    """minting -> failed, the one way a mint ends without a grant (refused, interrupted, unstorable)."""
    details: dict[str, Any] = {"error": code, "detail": detail}
    if token_fingerprint is not None:
        details["token_fingerprint"] = token_fingerprint
    return move_request(
        session=session,
        request_id=request_id,
        source=RequestStatus.MINTING,
        target=RequestStatus.FAILED,
        now=now,
        event=Audit(AuditEventType.MINT_FAILED, actor=BOT_ACTOR, details=details),
        failure_code=code[:64],
        failure_detail=detail[:500],
    )


def cancel_request(
    *, session: Session, request_id: str, actor: str, now: datetime, details: dict[str, Any], **fields: Any
) -> bool:
    """pending -> cancelled: by the requester, or by the bot when the approval card cannot be posted."""
    return move_request(
        session=session,
        request_id=request_id,
        source=RequestStatus.PENDING,
        target=RequestStatus.CANCELLED,
        now=now,
        event=Audit(AuditEventType.REQUEST_CANCELLED, actor=actor, details=details),
        decided_at=now,
        **fields,
    )


def move_grant(
    *,
    session: Session,
    request_id: str,
    source: GrantStatus,
    target: GrantStatus,
    now: datetime,
    event: Audit | None,
    claim_id: str | None = None,
    **fields: Any,
) -> bool:
    """``claim_id``, when given, must also match: only the holder of a claim may finish it."""
    check_transition(GRANT_TRANSITIONS, source, target)
    guard = [col(Grant.request_id) == request_id, col(Grant.status) == source.value]
    if claim_id is not None:
        guard.append(col(Grant.claim_id) == claim_id)
    return _guarded(session, update(Grant).where(*guard).values(status=target.value, **fields), now, request_id, event)


def _guarded(session: Session, statement: Update, now: datetime, request_id: str, event: Audit | None) -> bool:
    """Run a guarded update; only the caller whose update changed the row appends the audit event."""
    won = bool(session.execute(statement).rowcount == 1)  # type: ignore[attr-defined]
    if won and event is not None:
        _append(session, now, request_id, event)
    return won


def _append(session: Session, now: datetime, request_id: str, event: Audit) -> None:
    append_event(
        session=session,
        at=now,
        event_type=event.event_type.value,
        actor=event.actor,
        request_id=request_id,
        details=event.details,
    )
