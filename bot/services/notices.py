"""What the bot tells people: one small dataclass per kind of message.

Use cases build notices inside the transaction of the change they report and hand them to the
outbox (``bot.services.outbox``), which stores them as JSON and has them delivered; the Slack
adapter renders each kind. Notices carry facts (snapshots, codes, numbers), never Slack text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from bot.services.snapshots import RequestSnapshot


@dataclass(frozen=True)
class ApprovalCard:
    """Post the approval card to the resource's approver channel."""

    request: RequestSnapshot
    kind: Literal["approval_card"] = "approval_card"


@dataclass(frozen=True)
class CardChanged:
    """Redraw the card of a request (its coordinates are read when it is delivered)."""

    request: RequestSnapshot
    kind: Literal["card_changed"] = "card_changed"


@dataclass(frozen=True)
class RequesterTold:
    """DM the requester where their request now stands."""

    request: RequestSnapshot
    kind: Literal["requester_told"] = "requester_told"


@dataclass(frozen=True)
class PickupLink:
    """DM the requester the one-time link; the link itself travels encrypted, beside the notice."""

    request: RequestSnapshot
    link_expires_at: datetime
    kind: Literal["pickup_link"] = "pickup_link"


@dataclass(frozen=True)
class AuditSummary:
    """One line in the audit channel."""

    request: RequestSnapshot
    event: str
    kind: Literal["audit_summary"] = "audit_summary"


class AlertKind(StrEnum):
    TOKEN_REFUSED = "token_refused"  # the IdP issued a token the bot will not hand out
    REFUSED_TOKEN_REVOKED = "refused_token_revoked"  # ... and it is now confirmed dead
    REVOCATION_FAILING = "revocation_failing"  # several attempts failed; still retrying
    STILL_ACTIVE = "still_active"  # the IdP accepted a revocation but the token stays active
    REVOCATION_OVERDUE = "revocation_overdue"  # not confirmed revoked well after expiry
    PICKUP_UNDELIVERABLE = "pickup_undeliverable"  # the requester never got their link
    TOKEN_UNSTORED = "token_unstored"  # the bot could not store a token it received
    TOKEN_UNHOLDABLE = "token_unholdable"  # the IdP answered a token the bot cannot even represent


@dataclass(frozen=True)
class Alert:
    """Something a security lead must look at, in the audit channel."""

    alert: AlertKind
    request_id: str | None
    facts: dict[str, str | int | None] = field(default_factory=dict)
    kind: Literal["alert"] = "alert"


Notice = ApprovalCard | CardChanged | RequesterTold | PickupLink | AuditSummary | Alert


@functools.cache
def notice_codec() -> TypeAdapter[Notice]:
    """Notices to and from the JSON the outbox stores (built on first use, not at import)."""
    return TypeAdapter(Annotated[Notice, Field(discriminator="kind")])
