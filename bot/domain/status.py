"""Request and grant states, and the only transitions allowed between them.

``bot.store.transitions`` checks every status change against these tables before it runs the
guarded update, so a transition that is not listed here cannot happen, whoever asks for it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar


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


class GrantStatus(StrEnum):
    """A token the bot holds. ``active`` until due, ``revoking`` while the engine works on it (and
    between retries), ``revoked`` once the IdP confirmed it. A token whose ``refusal`` is set is
    never handed out: it is held only to be revoked."""

    ACTIVE = "active"
    REVOKING = "revoking"
    REVOKED = "revoked"


REQUEST_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
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

GRANT_TRANSITIONS: dict[GrantStatus, frozenset[GrantStatus]] = {
    GrantStatus.ACTIVE: frozenset({GrantStatus.REVOKING}),
    GrantStatus.REVOKING: frozenset({GrantStatus.REVOKED}),
    GrantStatus.REVOKED: frozenset(),
}

# Requests that still hold a place in the requester's quota and in `/jit list`.
OPEN_REQUEST_STATUSES = frozenset(
    {RequestStatus.PENDING, RequestStatus.APPROVED, RequestStatus.MINTING, RequestStatus.ACTIVE}
)

S = TypeVar("S", RequestStatus, GrantStatus)


class IllegalTransition(Exception):
    """A status change the tables above do not allow: a bug in the caller, never a race."""


def check_transition(table: dict[S, frozenset[S]], current: S, target: S) -> None:
    if target not in table[current]:
        raise IllegalTransition(f"{type(current).__name__} {current.value} -> {target.value} is not allowed")


def can_transition(current: RequestStatus, target: RequestStatus) -> bool:
    return target in REQUEST_TRANSITIONS[current]


class VoteChoice(StrEnum):
    APPROVE = "approve"
    DENY = "deny"
