"""An IdP that refuses part of what the policy allows: the grant fails, visibly, with nothing stored."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session

from bot.store.models import Grant
from tests.testbot import MintingBot
from tests.world import AUDIT_CHANNEL, REQUESTER


@pytest.fixture
def idp_resources() -> dict[str, list[str]]:
    # The IdP allows only read on the database, though the policy offers write too.
    return {"https://db.internal.example": ["read"], "https://billing.internal.example": ["read", "refund"]}


def test_idp_refusal_fails_the_grant_and_says_why(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db write 30m schema change")
    row = bot.stored(request_id)
    assert row.status == "failed"
    assert row.failure_code == "invalid_scope"
    with Session(bot.engine) as session:
        assert session.get(Grant, request_id) is None, "nothing stored for a refused exchange"
    dm = bot.slack.wait_for(lambda: [t for t in bot.dms_to(REQUESTER) if "could not be issued" in t])[0]
    assert "invalid_scope" in dm and request_id in dm and "/pickup/" not in dm
    # The card is redrawn through the outbox, just after the DM or just before it.
    bot.slack.wait_for(
        lambda: "invalid_scope" in json.dumps(bot.slack.message(row.card_channel, row.card_ts)["blocks"])
    )
    assert [e.event_type for e in bot.audit(request_id)][-2:] == ["mint_started", "mint_failed"]
    bot.slack.wait_for(
        lambda: [
            c
            for c in bot.slack.calls_to("chat.postMessage")
            if c.args.get("channel") == AUDIT_CHANNEL and "invalid_scope" in str(c.args.get("text"))
        ]
    )
