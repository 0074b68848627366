"""Pending requests that nobody decides expire after request_timeout: card updated, requester told."""

from __future__ import annotations

import json

import pytest

from bot.domain.policy import Policy
from bot.slack.ids import ActionId
from tests.testbot import Bot
from tests.world import APPROVER_1, REQUESTER, make_policy


@pytest.fixture
def policy() -> Policy:
    return make_policy(request_timeout="2s")


def test_undecided_request_expires(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read 30m anyone there")
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "expired", timeout=10)
    card = bot.slack.wait_for(lambda: (m := bot.slack.message(channel, ts)) and "Expired" in json.dumps(m) and m)
    assert not [b for b in card["blocks"] if b["type"] == "actions"], "no buttons on an expired request"
    dms = bot.slack.wait_for(
        lambda: [
            c
            for c in bot.slack.calls_to("chat.postMessage")
            if c.args.get("channel") == REQUESTER and "expired" in c.args["text"]
        ]
    )
    assert len(dms) == 1 and request_id in dms[0].args["text"]
    assert [e.event_type for e in bot.audit(request_id)][-1] == "request_expired"

    # A late click is refused like any vote after the decision.
    _, key = bot.click(APPROVER_1, ActionId.APPROVE, request_id, channel=channel, ts=ts)
    refusal = bot.replies(key)
    assert "no longer pending" in refusal[0].payload["text"]
    assert bot.stored(request_id).status == "expired"
