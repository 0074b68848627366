"""The revocation engine end to end against the dev IdP: on time, proven, wiped, reported."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlmodel import Session

from bot.jobs.expiry import SWEEP_INTERVAL_SECONDS
from bot.store.models import Grant
from bot.store.types import utcnow
from tests.conftest import APPROVER_1, APPROVER_2, AUDIT_CHANNEL, OUTSIDER, REQUESTER, MintingBot
from tests.test_e2e_minting import approve, dm_texts, pickup_url

# A revocation is two IdP calls after the claim; on a loaded test machine (the suite on two cores,
# the dev IdP just restarted) they have taken seconds. The timer itself keeps well under a second
# (tests/test_guarantees_timers.py); this bound is for what a lost timer or a late retry would cost.
SCHEDULING_MARGIN = timedelta(seconds=5)


def _grant(bot: MintingBot, request_id: str) -> Grant:
    with Session(bot.engine) as session:
        grant = session.get(Grant, request_id)
        assert grant is not None
        return grant


def _card(bot: MintingBot, request_id: str) -> dict[str, Any]:
    row = bot.stored(request_id)
    return bot.slack.message(str(row.card_channel), str(row.card_ts))


def _token(bot: MintingBot, request_id: str) -> str:
    answer = httpx.get(pickup_url(bot, request_id), headers={"Accept": "application/json"}).json()
    return str(answer["access_token"])


def _introspect(bot: MintingBot, token: str) -> dict[str, Any]:
    """The IdP's own word, over plain HTTP with the client's credentials: not the bot's client, whose
    bugs would otherwise prove its own revocations."""
    return bot.idp.introspect(token)


def _lag_bound() -> timedelta:
    """How late a revocation may be: the periodic sweep catches what a lost timer missed."""
    return timedelta(seconds=SWEEP_INTERVAL_SECONDS) + SCHEDULING_MARGIN


def _naive(moment: datetime) -> datetime:
    """SQLite hands datetimes back without a zone, PostgreSQL with one; both are UTC."""
    return moment.replace(tzinfo=None)


def _revoked_on_time(grant: Grant, due: datetime) -> None:
    assert grant.revoked_at is not None
    late = _naive(grant.revoked_at) - _naive(due)
    assert timedelta(0) <= late < _lag_bound(), f"revoked {late} after it was due"


def _audit_channel(bot: MintingBot, words: str) -> list[str]:
    return [
        str(c.args.get("text"))
        for c in bot.slack.calls_to("chat.postMessage")
        if c.args.get("channel") == AUDIT_CHANNEL and words in str(c.args.get("text"))
    ]


def test_grant_is_revoked_at_expiry_with_proof(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # Long enough that the token is still live when the test has picked it up, on a loaded machine too.
    request_id = approve(bot, "request prod-db read 6s quick look")
    token = _token(bot, request_id)
    expires_at = _grant(bot, request_id).expires_at
    assert _introspect(bot, token)["active"] is True, f"not active; the grant ends {expires_at}, now {utcnow()}"

    bot.slack.wait_for(lambda: bot.stored(request_id).status == "revoked", timeout=15)
    grant = _grant(bot, request_id)
    assert grant.status == "revoked"
    assert grant.revoked_at is not None and grant.revoked_at >= expires_at, "never revoked early"
    _revoked_on_time(grant, expires_at)
    assert grant.token_ciphertext is None, "the stored token is wiped"
    assert _introspect(bot, token) == {"active": False}
    assert bot.idp.revocation_count(token) == 1

    (event,) = [e for e in bot.audit(request_id) if e.event_type == "grant_revoked"]
    assert event.details["proof"] == {"revocation": "accepted", "introspection": {"active": False}}
    assert event.details["token_fingerprint"] == grant.token_fingerprint
    assert 0 <= event.details["lag_ms"] < _lag_bound().total_seconds() * 1000, event.details

    card = bot.slack.wait_for(lambda: (c := _card(bot, request_id)) and "Revoked" in json.dumps(c["blocks"]) and c)
    assert "Revoke now" not in json.dumps(card["blocks"]), "no button on an ended grant"
    ended = bot.slack.wait_for(lambda: [t for t in dm_texts(bot) if request_id in t and "revoked at the IdP" in t])
    assert len(ended) == 1
    assert bot.slack.wait_for(lambda: _audit_channel(bot, "[revoked]"))
    assert bot.slack.rejected() == []


def test_idp_outage_is_retried_alerted_and_finished(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = approve(bot, "request prod-db read 2s outage drill")
    token = _token(bot, request_id)
    bot.idp.stop()

    bot.slack.wait_for(lambda: "Revocation pending" in json.dumps(_card(bot, request_id)["blocks"]), timeout=15)
    assert bot.stored(request_id).status == "active"
    assert _grant(bot, request_id).status == "revoking"
    alert = bot.slack.wait_for(lambda: _audit_channel(bot, ":rotating_light:"), timeout=20)
    assert request_id in alert[0] and "3 attempts failed" in alert[0]
    failures = [e for e in bot.audit(request_id) if e.event_type == "revocation_failed"]
    assert [e.details["attempt"] for e in failures][:3] == [1, 2, 3]
    assert _grant(bot, request_id).token_ciphertext is not None, "nothing wiped before the IdP confirms"

    bot.idp.start()
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "revoked", timeout=30)
    assert _introspect(bot, token) == {"active": False}
    assert bot.idp.revocation_count(token) == 1
    # Revoked at the first retry due after the IdP came back, not a backoff or more later.
    last_failure = [e for e in bot.audit(request_id) if e.event_type == "revocation_failed"][-1]
    _revoked_on_time(_grant(bot, request_id), datetime.fromisoformat(last_failure.details["retry_at"]))
    assert len(_audit_channel(bot, ":rotating_light:")) == 1, "one alert, not one per retry"
    ended = [t for t in dm_texts(bot) if request_id in t and "revoked at the IdP" in t]
    assert len(ended) == 1


def test_revoke_now_button_and_command(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = approve(bot, "request prod-db read 1h first")
    row = bot.stored(first)
    # The card is updated just after the grant is stored; wait for it like a person would.
    card = bot.slack.wait_for(lambda: (c := _card(bot, first)) and "Active" in json.dumps(c["blocks"]) and c)
    buttons = [e for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["text"]["text"] for b in buttons] == ["Revoke now"]

    # Someone else: refused, audited, nothing changes.
    _, key = bot.send.click(OUTSIDER, "jit_revoke", first, channel=str(row.card_channel), ts=str(row.card_ts))
    refusal = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "Only the requester or an approver" in refusal[0].payload["text"]
    time.sleep(0.3)
    assert _grant(bot, first).status == "active"
    attempts = [e for e in bot.audit(first) if e.event_type == "unauthorized_attempt"]
    assert attempts[-1].details == {
        "action": "revoke",
        "refusal": "not_requester_or_approver",
        "request_status": "active",
    }

    # The requester presses Revoke now.
    _, key = bot.send.click(REQUESTER, "jit_revoke", first, channel=str(row.card_channel), ts=str(row.card_ts))
    reply = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "Revoking" in reply[0].payload["text"]
    bot.slack.wait_for(lambda: bot.stored(first).status == "revoked", timeout=10)
    (requested,) = [e for e in bot.audit(first) if e.event_type == "revoke_requested"]
    assert requested.actor == REQUESTER
    _revoked_on_time(_grant(bot, first), requested.at)

    # An approver uses the command on another grant.
    second = approve(bot, "request prod-db read 1h second")
    _, key, _ = bot.send.slash(APPROVER_2, f"revoke {second.lower()}")
    bot.slack.wait_for(lambda: bot.stored(second).status == "revoked", timeout=10)

    # Revoking what is already revoked says so and changes nothing.
    _, key, _ = bot.send.slash(REQUESTER, f"revoke {second}")
    again = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "is revoked, so there is nothing to revoke" in again[0].payload["text"]
    assert sum(bot.idp.stats()["revocations"].values()) == 2


def test_requester_can_cancel_a_pending_request(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read 30m changed my mind")
    _, key, _ = bot.send.slash(APPROVER_1, f"revoke {request_id}")
    refused = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "Deny button" in refused[0].payload["text"]
    assert bot.stored(request_id).status == "pending"

    _, key, _ = bot.send.slash(REQUESTER, f"revoke {request_id}")
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "cancelled")
    card = bot.slack.wait_for(lambda: (m := bot.slack.message(channel, ts)) and "Cancelled" in json.dumps(m) and m)
    assert not [b for b in card["blocks"] if b["type"] == "actions"]


def test_list_shows_pending_and_active_with_time_left(minting_bot: MintingBot) -> None:
    bot = minting_bot
    active = approve(bot, "request prod-db read 1h30m active one")
    pending, _, _ = bot.request(REQUESTER, "request billing refund 15m pending one")
    _, key, _ = bot.send.slash(REQUESTER, "list")
    (reply,) = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    text = reply.payload["text"]
    assert f"`{active}`" in text and "active, 1h29m" in text
    assert f"`{pending}`" in text and "pending, 0 of 2 approval(s)" in text

    _, key, _ = bot.send.slash(OUTSIDER, "list")
    (empty,) = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "no pending requests and no active grants" in empty.payload["text"]


def test_token_still_active_after_revocation_is_an_alert_and_retried(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # A long grant revoked early: its token is still alive at the IdP, so only a real revocation ends it.
    request_id = approve(bot, "request prod-db read 1h lying idp")
    token = _token(bot, request_id)
    bot.idp.misbehave_next(ignore_revocations=1)
    bot.send.slash(REQUESTER, f"revoke {request_id}")

    alert = bot.slack.wait_for(lambda: _audit_channel(bot, "still introspects as ACTIVE"), timeout=15)
    assert request_id in alert[0]
    (failure,) = [e for e in bot.audit(request_id) if e.event_type == "revocation_failed"][:1]
    assert failure.details["error"] == "still_active"

    bot.slack.wait_for(lambda: bot.stored(request_id).status == "revoked", timeout=15)
    assert _introspect(bot, token) == {"active": False}
    last_failure = [e for e in bot.audit(request_id) if e.event_type == "revocation_failed"][-1]
    _revoked_on_time(_grant(bot, request_id), datetime.fromisoformat(last_failure.details["retry_at"]))
    assert bot.idp.stats()["ignored_revocations"] == 1
    assert bot.idp.revocation_count(token) == 1
