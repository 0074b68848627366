"""Audit event names, and the one function every use case records through."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlmodel import Session

from bot.store.audit import append_event


class AuditEventType(StrEnum):
    REQUEST_SUBMITTED = "request_submitted"
    CARD_POSTED = "card_posted"
    REQUEST_CANCELLED = "request_cancelled"
    VOTE_CAST = "vote_cast"
    REQUEST_APPROVED = "request_approved"
    REQUEST_DENIED = "request_denied"
    UNAUTHORIZED_ATTEMPT = "unauthorized_attempt"
    DELIVERY_FAILED = "delivery_failed"
    MINT_STARTED = "mint_started"
    MINT_RETRY = "mint_retry"
    MINT_FAILED = "mint_failed"
    GRANT_ACTIVE = "grant_active"
    TOKEN_PICKED_UP = "token_picked_up"
    PICKUP_REFUSED = "pickup_refused"
    GRANT_REVOKED = "grant_revoked"
    REVOCATION_FAILED = "revocation_failed"
    REVOKE_REQUESTED = "revoke_requested"
    REQUEST_EXPIRED = "request_expired"


# Keys that must never be written to the audit trail, whatever a caller passes (DESIGN.md section 7).
_FORBIDDEN_KEYS = frozenset({"token", "access_token", "refresh_token", "client_secret", "secret", "password"})


def record(
    event_type: AuditEventType,
    *,
    session: Session,
    at: datetime,
    actor: str,
    request_id: str | None,
    **details: Any,
) -> None:
    leaked = _FORBIDDEN_KEYS.intersection(details)
    if leaked:
        raise ValueError(f"refusing to audit secret-bearing keys: {sorted(leaked)}")
    append_event(
        session=session,
        at=at,
        event_type=event_type.value,
        actor=actor,
        request_id=request_id,
        details=details,
    )
