"""The revocation engine end to end against the dev IdP: on time, proven, wiped, reported."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import httpx

from bot.jobs.expiry import SWEEP_INTERVAL_SECONDS
from bot.slack.ids import ActionId
from bot.store.models import Grant
from bot.store.types import utcnow
from tests.testbot import MintingBot
from tests.world import APPROVER_1, APPROVER_2, AUDIT_CHANNEL, OUTSIDER, REQUESTER, SQLITE_ONLY

# A revocation is two IdP calls after the claim; on a loaded test machine (the suite on two cores,
# the dev IdP just restarted) they have taken seconds. The timer itself keeps well under a second
# (tests/test_guarantees_timers.py); this bound is for what a lost timer or a late retry would cost.
SCHEDULING_MARGIN = timedelta(seconds=5)


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


def _revoked_at_the_last_retry(bot: MintingBot, request_id: str) -> None:
    """Revoked at the first retry due after the IdP came back, not a backoff or more later."""
    last_failure = [e for e in bot.audit(request_id) if e.event_type == "revocation_failed"][-1]
    _revoked_on_time(bot.grant(request_id), datetime.fromisoformat(last_failure.details["retry_at"]))


def test_grant_is_revoked_at_expiry_with_proof(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # Long enough that the token is still live when the test picks it up on a loaded machine.
    request_id = bot.approve("request prod-db read 6s quick look")
    token = bot.token(request_id)
    expires_at = bot.grant(request_id).expires_at
    assert bot.introspect(token)["active"] is True, f"not active; the grant ends {expires_at}, now {utcnow()}"

    bot.slack.wait_for(lambda: bot.stored(request_id).status == "revoked", timeout=15)
    grant = bot.grant(request_id)
    assert grant.status == "revoked"
    assert grant.revoked_at is not None and grant.revoked_at >= expires_at, "never revoked early"
    _revoked_on_time(grant, expires_at)
    assert grant.token_ciphertext is None, "the stored token is wiped"
    assert bot.introspect(token) == {"active": False}
    assert bot.idp.revocation_count(token) == 1

    (event,) = [e for e in bot.audit(request_id) if e.event_type == "grant_revoked"]
    assert event.details["proof"] == {"revocation": "accepted", "introspection": {"active": False}}
    assert event.details["token_fingerprint"] == grant.token_fingerprint
    assert 0 <= event.details["lag_ms"] < _lag_bound().total_seconds() * 1000, event.details

    card = bot.slack.wait_for(lambda: (c := bot.card(request_id)) and "Revoked" in json.dumps(c["blocks"]) and c)
    assert "Revoke now" not in json.dumps(card["blocks"]), "no button on an ended grant"
    assert ":lock: Revoked at its expiry, <!date^" in json.dumps(card["blocks"])
    ended = bot.slack.wait_for(lambda: [t for t in bot.dms_to(REQUESTER, request_id) if "revoked at the IdP" in t])
    assert len(ended) == 1
    assert "ended early" not in ended[0]
    assert bot.slack.wait_for(lambda: bot.posts_to(AUDIT_CHANNEL, "[revoked]"))
    assert bot.slack.rejected() == []


@SQLITE_ONLY
def test_idp_outage_is_retried_alerted_and_finished(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 2s outage drill")
    token = bot.token(request_id)
    bot.idp.stop()

    bot.slack.wait_for(lambda: "Revocation pending" in json.dumps(bot.card(request_id)["blocks"]), timeout=15)
    assert bot.stored(request_id).status == "active"
    assert bot.grant(request_id).status == "revoking"
    alert = bot.slack.wait_for(lambda: bot.posts_to(AUDIT_CHANNEL, ":rotating_light:"), timeout=20)
    assert request_id in alert[0] and "3 attempts failed" in alert[0]
    failures = [e for e in bot.audit(request_id) if e.event_type == "revocation_failed"]
    assert [e.details["attempt"] for e in failures][:3] == [1, 2, 3]
    assert bot.grant(request_id).token_ciphertext is not None, "nothing wiped before the IdP confirms"

    bot.idp.start()
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "revoked", timeout=30)
    assert bot.introspect(token) == {"active": False}
    assert bot.idp.revocation_count(token) == 1
    _revoked_at_the_last_retry(bot, request_id)
    assert len(bot.posts_to(AUDIT_CHANNEL, ":rotating_light:", accepted=False)) == 1, "one alert, not one per retry"
    ended = [t for t in bot.dms_to(REQUESTER, request_id) if "revoked at the IdP" in t]
    assert len(ended) == 1


def test_revoke_now_button_and_command(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h first")
    row = bot.stored(first)
    # The card is updated just after the grant is stored; wait for it like a person would.
    card = bot.slack.wait_for(lambda: (c := bot.card(first)) and "Active" in json.dumps(c["blocks"]) and c)
    buttons = [e for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["text"]["text"] for b in buttons] == ["Revoke now"]

    # Someone else: refused, audited, nothing changes.
    _, key = bot.click(OUTSIDER, ActionId.REVOKE, first, channel=str(row.card_channel), ts=str(row.card_ts))
    refusal = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "Only the requester or an approver" in refusal[0].payload["text"]
    time.sleep(0.3)
    assert bot.grant(first).status == "active"
    attempts = [e for e in bot.audit(first) if e.event_type == "unauthorized_attempt"]
    assert attempts[-1].details == {
        "action": "revoke",
        "refusal": "not_requester_or_approver",
        "request_status": "active",
    }

    # The requester presses Revoke now.
    _, key = bot.click(REQUESTER, ActionId.REVOKE, first, channel=str(row.card_channel), ts=str(row.card_ts))
    reply = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "Revoking" in reply[0].payload["text"]
    bot.slack.wait_for(lambda: bot.stored(first).status == "revoked", timeout=10)
    (requested,) = [e for e in bot.audit(first) if e.event_type == "revoke_requested"]
    assert requested.actor == REQUESTER
    # The card and the DM say it ended early, and who ended it: not the same words as an expiry.
    early = f":lock: Revoked early by <@{REQUESTER}>, <!date^"
    bot.slack.wait_for(lambda: early in json.dumps(bot.card(first)["blocks"]))
    told = bot.slack.wait_for(lambda: [t for t in bot.dms_to(REQUESTER, first) if "revoked at the IdP" in t])
    assert f"has ended, ended early by <@{REQUESTER}>: its token was revoked at the IdP" in told[0]
    _revoked_on_time(bot.grant(first), requested.at)

    # An approver uses the command on another grant.
    second = bot.approve("request prod-db read 1h second")
    _, key, _ = bot.send.slash(APPROVER_2, f"revoke {second.lower()}")
    bot.slack.wait_for(lambda: bot.stored(second).status == "revoked", timeout=10)

    # Revoking what is already revoked says so and changes nothing.
    _, key, _ = bot.send.slash(REQUESTER, f"revoke {second}")
    again = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "is revoked, so there is nothing to revoke" in again[0].payload["text"]
    assert sum(bot.idp.stats()["revocations"].values()) == 2


def test_a_link_not_yet_opened_when_the_grant_is_revoked_says_the_access_ended(minting_bot: MintingBot) -> None:
    """Revoke now ends the link at once; its visitor is told the access ended, not "no such link"
    (which reads like a typo), and nothing of the token is shown."""
    bot = minting_bot
    request_id = bot.approve("request prod-db read 1h revoked before pickup")
    url = bot.pickup_url(request_id)
    _, key, _ = bot.send.slash(REQUESTER, f"revoke {request_id}")
    bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])

    # At once, before the engine revoked it at the IdP, and after.
    for _moment in ("requested", "revoked"):
        for accept in ("text/html", "application/json"):
            page = httpx.get(url, headers={"Accept": accept})
            assert page.status_code == 410, page.text
            assert "This access has ended (it expired or was revoked)" in page.text
            assert "access_token" not in page.text
        bot.slack.wait_for(lambda: bot.stored(request_id).status == "revoked", timeout=10)
    assert bot.grant(request_id).picked_up_at is None
    refusals = {e.details["why"] for e in bot.audit(request_id) if e.event_type == "pickup_refused"}
    assert refusals == {"grant ended"}


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
    active = bot.approve("request prod-db read 1h30m active one")
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
    request_id = bot.approve("request prod-db read 1h lying idp")
    token = bot.token(request_id)
    bot.idp.misbehave_next(ignore_revocations=1)
    bot.send.slash(REQUESTER, f"revoke {request_id}")

    alert = bot.slack.wait_for(lambda: bot.posts_to(AUDIT_CHANNEL, "still introspects as ACTIVE"), timeout=15)
    assert request_id in alert[0]
    (failure,) = [e for e in bot.audit(request_id) if e.event_type == "revocation_failed"][:1]
    assert failure.details["error"] == "still_active"

    bot.slack.wait_for(lambda: bot.stored(request_id).status == "revoked", timeout=15)
    assert bot.introspect(token) == {"active": False}
    _revoked_at_the_last_retry(bot, request_id)
    assert bot.idp.stats()["ignored_revocations"] == 1
    assert bot.idp.revocation_count(token) == 1
