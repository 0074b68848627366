"""Request states and the transitions allowed between them (DESIGN.md section 1)."""

from __future__ import annotations

from enum import StrEnum


class RequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    MINTING = "minting"
    ACTIVE = "active"
    REVOKED = "revoked"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"


TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    RequestStatus.PENDING: frozenset(
        {RequestStatus.APPROVED, RequestStatus.DENIED, RequestStatus.EXPIRED, RequestStatus.CANCELLED}
    ),
    RequestStatus.APPROVED: frozenset({RequestStatus.MINTING, RequestStatus.FAILED}),
    RequestStatus.MINTING: frozenset({RequestStatus.ACTIVE, RequestStatus.FAILED}),
    RequestStatus.ACTIVE: frozenset({RequestStatus.REVOKED}),
    RequestStatus.REVOKED: frozenset(),
    RequestStatus.DENIED: frozenset(),
    RequestStatus.EXPIRED: frozenset(),
    RequestStatus.CANCELLED: frozenset(),
    RequestStatus.FAILED: frozenset(),
}


def can_transition(current: RequestStatus, target: RequestStatus) -> bool:
    return target in TRANSITIONS[current]


class VoteChoice(StrEnum):
    APPROVE = "approve"
    DENY = "deny"
