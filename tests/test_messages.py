"""Every code a use case can return has words, and filling them in never fails."""

from __future__ import annotations

import pytest
from slack_sdk import WebClient

from bot.demo.slack_api import SlackStandIn
from bot.domain.votes import VoteRefusal
from bot.services.early import RevokeOutcome, RevokeResult
from bot.services.notices import Alert, AlertKind
from bot.slack.adapters import SlackNotifier
from bot.slack.messages import REVOKE_ANSWERS, VOTE_REFUSALS, leads_cc, revoke_text, vote_refusal_text
from tests.world import AUDIT_CHANNEL, BOT_TOKEN


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


def test_an_alert_mentions_the_security_leads_in_the_audit_channel(slack: SlackStandIn) -> None:
    """Through the real slack_sdk client to the stand-in, as the outbox delivers it."""
    client = WebClient(token=BOT_TOKEN, base_url=slack.api_url)
    notifier = SlackNotifier(client, audit_channel=AUDIT_CHANNEL, security_leads=("U0LEAD0001", "S0SECLEADS"))

    notifier.deliver(Alert(AlertKind.REVOCATION_FAILING, "R000000001", {"attempts": 3, "error": "idp_timeout"}))

    (posted,) = slack.calls_to("chat.postMessage")
    assert posted.args["channel"] == AUDIT_CHANNEL
    text = str(posted.args["text"])
    assert text.startswith(":rotating_light: Revocation of grant `R000000001` is not done: 3 attempts failed")
    assert text.endswith("\ncc <@U0LEAD0001> <!subteam^S0SECLEADS>")
    assert slack.rejected() == []


def test_without_security_leads_an_alert_mentions_no_one() -> None:
    assert leads_cc(()) == ""
