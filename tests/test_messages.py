"""Every code a use case can return has words, and filling them in never fails."""

from __future__ import annotations

import pytest

from bot.domain.votes import VoteRefusal
from bot.services.early import RevokeOutcome, RevokeResult
from bot.slack.messages import REVOKE_ANSWERS, VOTE_REFUSALS, revoke_text, vote_refusal_text


def test_every_vote_refusal_has_words() -> None:
    assert set(VOTE_REFUSALS) == set(VoteRefusal)
    assert all(vote_refusal_text(refusal) for refusal in VoteRefusal)


@pytest.mark.parametrize("outcome", list(RevokeOutcome))
def test_every_revoke_outcome_has_words_filled_in(outcome: RevokeOutcome) -> None:
    assert outcome in REVOKE_ANSWERS
    text = revoke_text(RevokeResult(outcome, "r-{braces}-0123456789abcdef", status="active", still_minting=True))
    assert "{" not in text.replace("{braces}", ""), "every placeholder is filled in"


def test_an_id_typed_by_anyone_is_cut_short_and_never_reinterpreted() -> None:
    typed = "{rid}{status}" + "x" * 100
    text = revoke_text(RevokeResult(RevokeOutcome.NO_SUCH_REQUEST, typed))
    assert text == f"There is no request `{typed[:16]}`. `/jit list` shows yours."
