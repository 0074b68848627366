"""Identity resolution through the Slack profile email, when the policy opts in."""

from __future__ import annotations

import pytest

from bot.domain.policy import Policy
from tests.testbot import Bot
from tests.world import UNMAPPED, make_policy


@pytest.fixture
def policy() -> Policy:
    # Email fallback on, so the UNMAPPED user resolves through users.info in the test below.
    return make_policy(identity={"email_fallback": True})


def test_email_fallback_resolves_through_slack_profile(bot: Bot) -> None:
    request_id, _, _ = bot.request(UNMAPPED, "request prod-db read 30m checking")
    assert bot.stored(request_id).requester_subject == "mallory@example.com"
    assert [c.args.get("user") for c in bot.slack.calls_to("users.info")] == [UNMAPPED]
