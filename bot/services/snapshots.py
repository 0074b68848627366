"""The snapshots that notices carry, and how they are built from rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session

from bot.domain.policy import Policy
from bot.domain.status import GrantStatus
from bot.store import grants as grant_store
from bot.store import requests as store
from bot.store.models import AccessRequest, Grant, Vote
from bot.store.transitions import BOT_ACTOR


@dataclass(frozen=True)
class VoteView:
    voter: str
    choice: str
    reason: str | None


@dataclass(frozen=True)
class RequestSnapshot:
    """A request as it stood when a transaction committed: what cards and messages are drawn from."""

    id: str
    requester: str
    resource: str
    resource_description: str
    scopes: tuple[str, ...]
    duration: timedelta
    reason: str
    status: str
    approvals_required: int
    votes: tuple[VoteView, ...]
    created_at: datetime
    decided_at: datetime | None
    deny_reason: str | None
    approver_channel: str
    card_channel: str | None
    card_ts: str | None
    active_until: datetime | None = None
    revoked_at: datetime | None = None
    # Who ended the grant before its expiry (None: it ran its course).
    revoked_early_by: str | None = None
    # The grant's expiry has passed and the IdP has not confirmed the revocation yet.
    revocation_pending: bool = False
    failure_code: str | None = None
    failure_detail: str | None = None
    # The policy rule that decided the request (auto-approved, denied, or whose approvers decide).
    rule: str | None = None
    # The rule itself approved or denied it, with no person's vote.
    decided_by_rule: bool = False
    # Whom the request was escalated to (Slack user and usergroup ids), once it was; empty before.
    escalated_to: tuple[str, ...] = ()
    # Opened with /jit breakglass: approved at once with no vote, alerted until acknowledged.
    break_glass: bool = False
    # An extension: the request whose grant it extends, and the time that grant's chain had been
    # approved for before it (so the chain's total is ``prior + duration``).
    extends: str | None = None
    prior: timedelta | None = None
    # The newest extension asked of this request's grant, and where it stands.
    extension_id: str | None = None
    extension_status: str | None = None
    # The extension whose new token replaced this grant's once picked up.
    replaced_by: str | None = None

    @property
    def chain_total(self) -> timedelta:
        """All the time the chain up to this request was approved for."""
        return (self.prior or timedelta(0)) + self.duration

    @property
    def approvers_so_far(self) -> tuple[str, ...]:
        return tuple(v.voter for v in self.votes if v.choice == "approve")

    @property
    def deniers(self) -> tuple[str, ...]:
        return tuple(v.voter for v in self.votes if v.choice == "deny")


def snapshot(
    request: AccessRequest,
    votes: Sequence[Vote],
    *,
    policy: Policy,
    grant: Grant | None = None,
    now: datetime | None = None,
    extension: tuple[str, str] | None = None,
) -> RequestSnapshot:
    """``extension``: the newest extension of this request's grant, as (id, status)."""
    resource = policy.resource(request.resource)
    # A refused token was never this request's grant: nothing about it belongs on the card.
    usable = grant if grant is not None and grant.refusal is None else None
    pending = usable is not None and (
        usable.status == GrantStatus.REVOKING.value
        or (usable.status == GrantStatus.ACTIVE.value and now is not None and usable.expires_at <= now)
    )
    return RequestSnapshot(
        id=request.id,
        requester=request.requester_slack_id,
        resource=request.resource,
        resource_description=resource.description if resource else "",
        scopes=request.scope_list,
        duration=timedelta(seconds=request.duration_seconds),
        reason=request.reason,
        status=request.status,
        approvals_required=request.approvals_required,
        votes=tuple(VoteView(voter=v.voter_slack_id, choice=v.choice, reason=v.reason) for v in votes),
        created_at=request.created_at,
        decided_at=request.decided_at,
        deny_reason=request.deny_reason,
        approver_channel=request.approver_channel,
        card_channel=request.card_channel,
        card_ts=request.card_ts,
        active_until=usable.expires_at if usable is not None else None,
        revoked_at=usable.revoked_at if usable is not None else None,
        revoked_early_by=usable.revoke_requested_by if usable is not None else None,
        revocation_pending=pending,
        failure_code=request.failure_code,
        failure_detail=request.failure_detail,
        rule=request.rule,
        decided_by_rule=request.rule is not None and request.decided_by == BOT_ACTOR,
        escalated_to=tuple((request.escalated_to or "").split()) if request.escalated_at is not None else (),
        break_glass=request.break_glass,
        extends=request.extends,
        prior=timedelta(seconds=request.prior_seconds) if request.prior_seconds is not None else None,
        extension_id=extension[0] if extension is not None else None,
        extension_status=extension[1] if extension is not None else None,
        replaced_by=usable.replaced_by if usable is not None else None,
    )


def load_snapshot(
    session: Session, request_id: str, *, policy: Policy, now: datetime | None = None, grant: Grant | None = None
) -> RequestSnapshot:
    """The request as this transaction sees it, with its votes and grant (``grant``: already read
    fresh in this transaction, so not read again)."""
    # One SELECT each, current even when this session already holds the row.
    request = store.get_request(session=session, request_id=request_id, fresh=True)
    if request is None:
        raise LookupError(f"request {request_id} does not exist")
    votes = store.votes_for(session=session, request_id=request_id)
    if grant is None:
        grant = grant_store.get_grant(session=session, request_id=request_id, fresh=True)
    extension = store.latest_extension(session=session, request_id=request_id)
    return snapshot(request, votes, policy=policy, grant=grant, now=now, extension=extension)
