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

# One approval of two is in, from UA2; in VOTED_HALFWAY it came from UA1, who votes in these cases.
HALFWAY = {"approvals_required": 2, "prior_voters": frozenset({"UA2"}), "approvals_so_far": 1}
VOTED_HALFWAY = {**HALFWAY, "prior_voters": frozenset({"UA1"})}
APPROVE, DENY = VoteChoice.APPROVE, VoteChoice.DENY
PENDING, APPROVED, DENIED = RequestStatus.PENDING, RequestStatus.APPROVED, RequestStatus.DENIED
SELF, NOT_APPROVER, VOTED, NOT_PENDING = (
    VoteRefusal.SELF_APPROVAL,
    VoteRefusal.NOT_APPROVER,
    VoteRefusal.ALREADY_VOTED,
    VoteRefusal.NOT_PENDING,
)

# description, changes to BASE, the vote, the refusal (None: counted), the request's status after it
CASES = [
    ("first approval of 1 approves", {}, APPROVE, None, APPROVED),
    ("first approval of 2 stays pending", {"approvals_required": 2}, APPROVE, None, PENDING),
    ("second distinct approval of 2 approves", HALFWAY, APPROVE, None, APPROVED),
    ("one deny denies", {"approvals_required": 2}, DENY, None, DENIED),
    ("deny after an approval still denies", HALFWAY, DENY, None, DENIED),
    ("requester cannot approve even when an approver", {"voter": "UREQ"}, APPROVE, SELF, PENDING),
    ("requester cannot deny own request", {"voter": "UREQ"}, DENY, SELF, PENDING),
    ("outsider refused", {"voter": "UX"}, APPROVE, NOT_APPROVER, PENDING),
    ("second vote by same approver refused", VOTED_HALFWAY, APPROVE, VOTED, PENDING),
    ("vote after approval refused", {"status": APPROVED}, DENY, NOT_PENDING, APPROVED),
    ("vote after denial refused", {"status": DENIED}, APPROVE, NOT_PENDING, DENIED),
    (
        "outsider on a decided request hears it is decided",
        {"status": DENIED, "voter": "UX"},
        APPROVE,
        NOT_PENDING,
        DENIED,
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
