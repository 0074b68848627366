"""The vote decision table: who may vote, and what each vote does."""

from __future__ import annotations

import pytest

from bot.domain.status import RequestStatus, VoteChoice
from bot.domain.votes import VoteFacts, VoteRefusal, decide_vote

BASE = {
    "status": RequestStatus.PENDING,
    "requester": "UREQ",
    "voter": "UA1",
    "approvers": frozenset({"UA1", "UA2", "UREQ"}),
    "prior_voters": frozenset(),
    "approvals_so_far": 0,
    "approvals_required": 1,
}

CASES = [
    ("first approval of 1 approves", {}, VoteChoice.APPROVE, None, RequestStatus.APPROVED),
    ("first approval of 2 stays pending", {"approvals_required": 2}, VoteChoice.APPROVE, None, RequestStatus.PENDING),
    (
        "second distinct approval of 2 approves",
        {"approvals_required": 2, "prior_voters": frozenset({"UA2"}), "approvals_so_far": 1},
        VoteChoice.APPROVE,
        None,
        RequestStatus.APPROVED,
    ),
    ("one deny denies", {"approvals_required": 2}, VoteChoice.DENY, None, RequestStatus.DENIED),
    (
        "deny after an approval still denies",
        {"approvals_required": 2, "prior_voters": frozenset({"UA2"}), "approvals_so_far": 1},
        VoteChoice.DENY,
        None,
        RequestStatus.DENIED,
    ),
    (
        "requester cannot approve even when an approver",
        {"voter": "UREQ"},
        VoteChoice.APPROVE,
        VoteRefusal.SELF_APPROVAL,
        RequestStatus.PENDING,
    ),
    (
        "requester cannot deny own request",
        {"voter": "UREQ"},
        VoteChoice.DENY,
        VoteRefusal.SELF_APPROVAL,
        RequestStatus.PENDING,
    ),
    ("outsider refused", {"voter": "UX"}, VoteChoice.APPROVE, VoteRefusal.NOT_APPROVER, RequestStatus.PENDING),
    (
        "second vote by same approver refused",
        {"approvals_required": 2, "prior_voters": frozenset({"UA1"}), "approvals_so_far": 1},
        VoteChoice.APPROVE,
        VoteRefusal.ALREADY_VOTED,
        RequestStatus.PENDING,
    ),
    (
        "vote after approval refused",
        {"status": RequestStatus.APPROVED},
        VoteChoice.DENY,
        VoteRefusal.NOT_PENDING,
        RequestStatus.APPROVED,
    ),
    (
        "vote after denial refused",
        {"status": RequestStatus.DENIED},
        VoteChoice.APPROVE,
        VoteRefusal.NOT_PENDING,
        RequestStatus.DENIED,
    ),
    (
        "outsider on a decided request hears it is decided",
        {"status": RequestStatus.DENIED, "voter": "UX"},
        VoteChoice.APPROVE,
        VoteRefusal.NOT_PENDING,
        RequestStatus.DENIED,
    ),
]


@pytest.mark.parametrize(("description", "changes", "choice", "refusal", "status"), CASES, ids=[c[0] for c in CASES])
def test_vote_decisions(
    description: str,
    changes: dict[str, object],
    choice: VoteChoice,
    refusal: VoteRefusal | None,
    status: RequestStatus,
) -> None:
    decision = decide_vote(VoteFacts(**{**BASE, **changes}), choice)  # type: ignore[arg-type]
    assert decision.refusal is refusal, description
    assert decision.new_status is status, description
