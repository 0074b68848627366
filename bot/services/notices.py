"""What the bot tells people: one small dataclass per kind of message.

Adding a kind of message is one dataclass here (its facts, its ``kind`` and its ``route``), added to
``Notice``, and one renderer in the Slack adapter (``bot/slack/adapters.py``).

Use cases build notices inside the transaction of the change they report and hand them to the
outbox (``bot.services.outbox``), which stores them as JSON and has them delivered; the Slack
adapter renders each kind. Notices carry facts (snapshots, codes, numbers), never Slack text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from bot.services.snapshots import RequestSnapshot

# Where a notice goes: (lane, channel). Messages of one lane are delivered strictly in order.
Route = tuple[str, str]
AUDIT_LANE = "audit"
# Alerts have their own lane so that a backlog of summaries never delays one.
ALERT_LANE = "alert"


def card_lane(request_id: str) -> str:
    return f"card:{request_id}"


def dm_lane(user_id: str) -> str:
    return f"dm:{user_id}"


@dataclass(frozen=True)
class _AboutRequest:
    """A notice drawn from one request as its transaction left it."""

    request: RequestSnapshot

    @property
    def request_id(self) -> str:
        return self.request.id


@dataclass(frozen=True)
class ApprovalCard(_AboutRequest):
    """Post the approval card to the resource's approver channel."""

    kind: Literal["approval_card"] = "approval_card"

    def route(self, audit_channel: str | None) -> Route | None:  # noqa: ARG002 - every notice answers it
        return card_lane(self.request.id), self.request.approver_channel


@dataclass(frozen=True)
class CardChanged(_AboutRequest):
    """Redraw the card of a request (its coordinates are read when it is delivered)."""

    kind: Literal["card_changed"] = "card_changed"

    def route(self, audit_channel: str | None) -> Route | None:  # noqa: ARG002
        return card_lane(self.request.id), self.request.card_channel or self.request.approver_channel


@dataclass(frozen=True)
class ApprovalReminder(_AboutRequest):
    """A reminder in the card's thread that the request still waits for a decision, and (``escalated_to``
    not empty) that it has just been escalated to them. In the card's lane, so it is sent after the card
    is posted; the card's coordinates, and whether it still waits, are read when it is delivered."""

    # The reminder's number (0: an escalation with no reminder due at the same moment).
    number: int
    # Whom it asks: the approvers who have not voted, and the escalation approvers once escalated.
    mention: tuple[str, ...]
    # When it was queued (the request has waited since created_at) and when the request expires.
    at: datetime
    expires_at: datetime
    escalated_to: tuple[str, ...] = ()
    kind: Literal["approval_reminder"] = "approval_reminder"

    def route(self, audit_channel: str | None) -> Route | None:  # noqa: ARG002
        return card_lane(self.request.id), self.request.card_channel or self.request.approver_channel


@dataclass(frozen=True)
class _ToRequester(_AboutRequest):
    """A DM to the requester; their DMs form one lane, so they arrive in order."""

    def route(self, audit_channel: str | None) -> Route | None:  # noqa: ARG002
        return dm_lane(self.request.requester), self.request.requester


@dataclass(frozen=True)
class RequesterTold(_ToRequester):
    """DM the requester where their request now stands."""

    kind: Literal["requester_told"] = "requester_told"


@dataclass(frozen=True)
class PickupLink(_ToRequester):
    """DM the requester the one-time link; the link itself travels encrypted, beside the notice."""

    link_expires_at: datetime
    kind: Literal["pickup_link"] = "pickup_link"


@dataclass(frozen=True)
class ExpiryNotice(_ToRequester):
    """DM the requester that their grant ends soon, with Extend and Revoke now. ``left_seconds`` is
    what was left when the notice was queued; ``ends_at`` is exact."""

    ends_at: datetime
    left_seconds: int
    kind: Literal["expiry_notice"] = "expiry_notice"


@dataclass(frozen=True)
class ContextEnded(_ToRequester):
    """DM the requester that their grant is being ended because they left the usergroups its rule
    auto-approved it for (the revocation's own DM follows once the IdP confirms it)."""

    usergroups: tuple[str, ...]
    kind: Literal["context_ended"] = "context_ended"


@dataclass(frozen=True)
class AuditSummary(_AboutRequest):
    """One line in the audit channel for a step along the way (submitted, approved, active); how a
    request ends is its ``EndSummary``."""

    event: str
    kind: Literal["audit_summary"] = "audit_summary"

    def route(self, audit_channel: str | None) -> Route | None:
        return (AUDIT_LANE, audit_channel) if audit_channel else None


@dataclass(frozen=True)
class GrantLife:
    """What a grant that was live did, from its activation to the IdP's word that its token is dead.

    Moments only, never the token or its pickup link: a summary built from these cannot show them.
    """

    activated_at: datetime
    # When access was to end: the grant's expiry, or the moment someone asked to end it early.
    ended_at: datetime
    picked_up_at: datetime | None
    # When the IdP's revocation was confirmed and the stored token wiped.
    confirmed_at: datetime
    # Introspection said inactive after the revocation (False: the IdP offers no introspection,
    # so its acceptance of the revocation is all the proof there is).
    introspected_inactive: bool

    @property
    def used(self) -> timedelta:
        return max(self.ended_at - self.activated_at, timedelta(0))

    @property
    def confirmation_lag(self) -> timedelta:
        return max(self.confirmed_at - self.ended_at, timedelta(0))


@dataclass(frozen=True)
class EndSummary(_AboutRequest):
    """The one line the audit channel gets when a request ends, whichever way: revoked (at expiry or
    early), failed, denied, expired unanswered or cancelled. How it ended is the request's status (and
    ``revoked_early_by``, ``failure_code``, the votes or the rule); ``life`` is the grant's, for a
    request whose grant was live (None for every other ending)."""

    life: GrantLife | None = None
    kind: Literal["end_summary"] = "end_summary"

    def route(self, audit_channel: str | None) -> Route | None:
        return (AUDIT_LANE, audit_channel) if audit_channel else None


class AlertKind(StrEnum):
    TOKEN_REFUSED = "token_refused"  # the IdP issued a token the bot will not hand out
    REFUSED_TOKEN_REVOKED = "refused_token_revoked"  # ... and it is now confirmed dead
    REVOCATION_FAILING = "revocation_failing"  # several attempts failed; still retrying
    STILL_ACTIVE = "still_active"  # the IdP accepted a revocation but the token stays active
    REVOCATION_OVERDUE = "revocation_overdue"  # not confirmed revoked well after expiry
    PICKUP_UNDELIVERABLE = "pickup_undeliverable"  # the requester never got their link
    TOKEN_UNSTORED = "token_unstored"  # the bot could not store a token it received
    TOKEN_UNHOLDABLE = "token_unholdable"  # the IdP answered a token the bot cannot even represent
    AUDIT_FORWARDING_REFUSED = "audit_forwarding_refused"  # the audit webhook keeps refusing an event
    DIGEST_UNDELIVERABLE = "digest_undeliverable"  # Slack refused the daily digest for good
    # A usergroup that grants rest on (revoke_when_context_ends) could not be read several times in a row.
    CONTEXT_UNREADABLE = "context_unreadable"


@dataclass(frozen=True)
class Alert:
    """Something a security lead must look at, in the audit channel."""

    alert: AlertKind
    request_id: str | None
    facts: dict[str, str | int | None] = field(default_factory=dict)
    kind: Literal["alert"] = "alert"

    def route(self, audit_channel: str | None) -> Route | None:
        return (ALERT_LANE, audit_channel) if audit_channel else None


@dataclass(frozen=True)
class BreakGlassAlerted(_AboutRequest):
    """The loud alert of a break-glass use, with its Acknowledge button, in the audit channel: the first
    (``number`` 1) when it is used, then again every re-alert interval until someone acknowledges it.
    ``approvers``: the resource's (user and usergroup ids), who are mentioned with the security leads."""

    approvers: tuple[str, ...]
    number: int
    alerted_at: datetime
    kind: Literal["break_glass_alerted"] = "break_glass_alerted"

    def route(self, audit_channel: str | None) -> Route | None:
        return (ALERT_LANE, audit_channel) if audit_channel else None


@dataclass(frozen=True)
class BreakGlassAcknowledged(_AboutRequest):
    """Someone acknowledged a break-glass alert: the first alert and the latest re-alert are redrawn
    without their button (their coordinates, ``channel`` and ``ts``, are read when it is delivered:
    the alerts are ahead of it in the lane), or, if none was ever posted, it is said in a message."""

    by: str
    at: datetime
    alerts: int
    channel: str | None = None
    ts: tuple[str, ...] = ()
    kind: Literal["break_glass_acknowledged"] = "break_glass_acknowledged"

    def route(self, audit_channel: str | None) -> Route | None:
        return (ALERT_LANE, audit_channel) if audit_channel else None


def digest_lane(day: str) -> str:
    """A lane per day: a chart that keeps failing holds up nothing but its own day's lane."""
    return f"digest:{day}"


@dataclass(frozen=True)
class DigestPost:
    """The daily digest's text in the digest channel. ``text`` is the domain's own Slack rendering
    (``digest_text(digest, slack=True)``, escaped there), made when the day was leased: the figures
    are a snapshot of that moment, and a retry hours later must post the same digest, not a new one."""

    day: str
    channel: str
    text: str
    kind: Literal["digest_post"] = "digest_post"

    @property
    def request_id(self) -> str | None:
        return None

    def route(self, audit_channel: str | None) -> Route | None:  # noqa: ARG002
        return digest_lane(self.day), self.channel


@dataclass(frozen=True)
class DigestChart:
    """The digest's PNG chart, uploaded after its text (same lane) in the text's thread, or beside it
    when the text's ts is not known. ``png`` is base64, so the outbox's JSON can hold it."""

    day: str
    channel: str
    png: str
    thread_ts: str | None = None
    kind: Literal["digest_chart"] = "digest_chart"

    @property
    def request_id(self) -> str | None:
        return None

    def route(self, audit_channel: str | None) -> Route | None:  # noqa: ARG002
        return digest_lane(self.day), self.channel


Notice = (
    ApprovalCard
    | CardChanged
    | ApprovalReminder
    | RequesterTold
    | PickupLink
    | ExpiryNotice
    | ContextEnded
    | AuditSummary
    | EndSummary
    | Alert
    | DigestPost
    | DigestChart
    | BreakGlassAlerted
    | BreakGlassAcknowledged
)


@functools.cache
def notice_codec() -> TypeAdapter[Notice]:
    """Notices to and from the JSON the outbox stores (built on first use, not at import)."""
    return TypeAdapter(Annotated[Notice, Field(discriminator="kind")])
