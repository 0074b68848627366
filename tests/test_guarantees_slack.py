"""Slack gets its answer first: a click is acknowledged before any slow work, however slow Slack is.

Fails when one line of the code that keeps the promise is broken (scripts/mutants breaks it on purpose).
"""

from __future__ import annotations

import time

from bot.slack.ids import ActionId
from tests.testbot import Bot
from tests.world import GROUP_MEMBER, REQUESTER, SQLITE_ONLY

# How slowly Slack answers the lookup the vote needs (the approver group's members). The click's own
# answer must come back well before: it may not wait for any Slack call.
SLACK_DELAY = 5.0


@SQLITE_ONLY
def test_approve_is_acked_before_any_slack_lookup(bot: Bot) -> None:
    # k8s is approved by a user group, so counting the vote needs usergroups.users.list.
    request_id, channel, ts = bot.request(REQUESTER, "request k8s view 15m node drain")
    lookups = len(bot.slack.calls_to("usergroups.users.list"))
    bot.slack.set_delay("usergroups.users.list", SLACK_DELAY)

    started = time.monotonic()
    response, _key = bot.click(GROUP_MEMBER, ActionId.APPROVE, request_id, channel=channel, ts=ts)
    answered_in = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert answered_in < SLACK_DELAY / 2, f"the click was answered after {answered_in:.1f}s"

    # The vote itself waited for Slack, and counted.
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "approved", timeout=SLACK_DELAY + 10)
    assert len(bot.slack.calls_to("usergroups.users.list")) > lookups, "the slow lookup was made"
    (vote,) = [e for e in bot.audit(request_id) if e.event_type == "vote_cast"]
    assert vote.actor == GROUP_MEMBER
