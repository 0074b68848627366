"""Who may vote on a request, and what a vote does. The database supplies the facts; this decides."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bot.domain.status import RequestStatus, VoteChoice


class VoteRefusal(StrEnum):
    UNKNOWN_REQUEST = "unknown_request"
    NOT_PENDING = "not_pending"
    SELF_APPROVAL = "self_approval"
    NOT_APPROVER = "not_approver"
    ALREADY_VOTED = "already_voted"
    RESOURCE_REMOVED = "resource_removed"


@dataclass(frozen=True)
class VoteFacts:
    status: RequestStatus
    requester: str
    voter: str
    approvers: frozenset[str]
    prior_voters: frozenset[str]
    approvals_so_far: int
    approvals_required: int


@dataclass(frozen=True)
class VoteDecision:
    refusal: VoteRefusal | None
    new_status: RequestStatus


def decide_vote(facts: VoteFacts, choice: VoteChoice) -> VoteDecision:
    """Refusals are checked in the order a person would find most useful to hear."""
    refused = _refusal(facts)
    if refused is not None:
        return VoteDecision(refusal=refused, new_status=facts.status)
    if choice is VoteChoice.DENY:
        return VoteDecision(refusal=None, new_status=RequestStatus.DENIED)
    if facts.approvals_so_far + 1 >= facts.approvals_required:
        return VoteDecision(refusal=None, new_status=RequestStatus.APPROVED)
    return VoteDecision(refusal=None, new_status=RequestStatus.PENDING)


def _refusal(facts: VoteFacts) -> VoteRefusal | None:
    if facts.status is not RequestStatus.PENDING:
        return VoteRefusal.NOT_PENDING
    if facts.voter == facts.requester:
        return VoteRefusal.SELF_APPROVAL
    if facts.voter not in facts.approvers:
        return VoteRefusal.NOT_APPROVER
    if facts.voter in facts.prior_voters:
        return VoteRefusal.ALREADY_VOTED
    return None
