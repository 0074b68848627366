"""Slack refuses a DM for good: the pickup link is not lost quietly, and it is never kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import Session, select

from bot.demo.slack_api import SlackStandIn
from bot.store.models import OutboxMessage
from tests.testbot import MintingBot, accepted_posts
from tests.world import AUDIT_CHANNEL, BOT_TOKEN, REQUESTER, SLACK_USERS, USERGROUPS


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    # The requester has left the workspace: Slack refuses every DM to them, for good.
    users = {user: fields for user, fields in SLACK_USERS.items() if user != REQUESTER}
    standin = SlackStandIn(BOT_TOKEN, users=users, usergroups=USERGROUPS)
    standin.start()
    yield standin
    standin.stop()


def test_a_pickup_link_that_cannot_be_delivered_is_alerted_and_never_kept(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 30m to someone slack cannot reach")
    assert bot.stored(request_id).status == "active"
    alert = bot.slack.wait_for(
        lambda: [
            str(c.args["text"])
            for c in accepted_posts(bot.slack)
            if c.args.get("channel") == AUDIT_CHANNEL and "pickup link" in str(c.args["text"])
        ],
        timeout=20,
    )
    assert request_id in alert[0] and "channel_not_found" in alert[0] and f"/jit revoke {request_id}" in alert[0]
    failed = [e for e in bot.audit(request_id) if e.event_type == "delivery_failed"]
    assert [e.details["what"] for e in failed] == ["pickup link DM"]
    # The link was stored only encrypted, and wiped when the bot gave up on it.
    with Session(bot.engine) as session:
        rows: list[Any] = list(session.exec(select(OutboxMessage).where(OutboxMessage.kind == "pickup_link")).all())
    assert [(r.status, r.secret) for r in rows] == [("failed", None)]
    # It went nowhere but the refused DM itself: not to any channel, not to the audit trail or the outbox.
    elsewhere = [c.args for c in bot.slack.calls if c.args.get("channel") != REQUESTER]
    everything = json.dumps(elsewhere, default=str) + json.dumps([r.payload for r in rows], default=str)
    everything += json.dumps([e.details for e in bot.audit()], default=str)
    assert "/pickup/" not in everything
