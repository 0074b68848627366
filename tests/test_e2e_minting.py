"""Approval -> RFC 8693 token exchange at the real dev IdP -> encrypted grant -> one-time pickup."""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text

from bot.logs import configure_logging
from bot.slack.ids import ActionId
from tests.testbot import MintingBot
from tests.world import (
    APPROVER_1,
    APPROVER_2,
    AUDIT_CHANNEL,
    IDP_CLIENT_ID,
    IDP_CLIENT_SECRET,
    PROD_DB_CLAIMS,
    REQUESTER,
)


def _basic(client_id: str, secret: str) -> tuple[str, str]:
    # RFC 6749 2.3.1: form-encode before Basic; httpx's auth tuple does not, so do it here.
    from urllib.parse import quote

    return quote(client_id, safe=""), quote(secret, safe="")


def test_approval_mints_exactly_one_scoped_token(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve()
    assert bot.stored(request_id).status == "active"
    assert bot.idp.stats()["exchanges"] == 1

    # The subject assertion as the IdP received and verified it.
    claims = bot.idp.last_assertion()
    assert claims["iss"] == bot.public_url
    assert claims["sub"] == "alice"
    assert claims["aud"] == bot.idp.issuer
    assert 0 < claims["exp"] - claims["iat"] <= 120
    assert claims["jit"]["request_id"] == request_id
    assert claims["jit"]["resource"] == "prod-db"
    assert claims["jit"]["scopes"] == ["read"]
    assert claims["jit"]["approvers"] == [APPROVER_1]
    assert claims["jit"]["reason"] == "checking INC-1234"
    assert claims["jit"]["claims"] == PROD_DB_CLAIMS
    grant = bot.grant(request_id)
    assert abs(claims["jit"]["expires_at"] - grant.expires_at.timestamp()) < 1
    assert grant.expires_at - grant.issued_at == timedelta(minutes=30)

    # The requester's DM carries a pickup link and no token.
    url = bot.pickup_url(request_id)
    picked = httpx.get(url, headers={"Accept": "application/json"})
    assert picked.status_code == 200
    body = picked.json()
    token = body["access_token"]
    assert set(body) == {"access_token", "token_type", "expires_at", "scope", "audience"}
    assert (body["scope"], body["audience"], body["token_type"]) == ("read", "https://db.internal.example", "Bearer")
    assert abs(body["expires_at"] - grant.expires_at.timestamp()) < 1

    info = httpx.post(
        httpx.get(bot.idp.discovery_url).json()["introspection_endpoint"],
        data={"token": token},
        auth=_basic(IDP_CLIENT_ID, IDP_CLIENT_SECRET),
    ).json()
    assert info["active"] is True
    assert info["sub"] == "alice"
    assert info["scope"] == "read"
    assert info["aud"] == "https://db.internal.example"
    assert info["act"] == {"sub": IDP_CLIENT_ID}
    # The approval's context reaches the resource server: who approved, which request, the static claims.
    assert info["jit"] == {"request_id": request_id, "approvers": [APPROVER_1], "claims": PROD_DB_CLAIMS}
    # The IdP's own lifetime was asked for and capped at the grant's expiry.
    assert info["exp"] <= grant.expires_at.timestamp() + 1

    # The card says until when; the audit trail has the fingerprint, not the token.
    card = bot.eventually(lambda: (m := bot.card(request_id)) and "Active" in json.dumps(m["blocks"]) and m)
    assert "until" in json.dumps(card["blocks"])
    events = [e.event_type for e in bot.audit(request_id)]
    # The token is in the grant table the moment it arrives, then checked, then activated.
    assert events[-4:] == ["mint_started", "token_received", "grant_active", "token_picked_up"]
    active = [e for e in bot.audit(request_id) if e.event_type == "grant_active"][0]
    assert active.details["token_fingerprint"] == grant.token_fingerprint
    assert bot.slack.rejected() == []


def test_pickup_link_works_once_and_expires(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve()
    url = bot.pickup_url(first)

    # A link checker's HEAD does not use the link up.
    head = httpx.head(url)
    assert head.status_code == 405 and head.headers["allow"] == "GET"
    page = httpx.get(url)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "text/html" in page.headers["content-type"]
    token_in_page = re.search(r'<pre id="token">([^<]+)</pre>', page.text)
    assert token_in_page is not None and len(token_in_page.group(1)) > 20
    assert "curl -H" in page.text and "https://db.internal.example" in page.text

    again = httpx.get(url)
    assert again.status_code == 410
    assert "This link was already used" in again.text
    assert token_in_page.group(1) not in again.text
    assert again.headers["cache-control"] == "no-store"
    assert httpx.get(url, headers={"Accept": "application/json"}).status_code == 410

    unknown = httpx.get(f"{bot.public_url}/pickup/not-a-real-link-id")
    assert unknown.status_code == 404
    assert "already used" not in unknown.text, "an unknown link must not look like a used one"

    # A second grant whose link is left unopened past 10 minutes.
    second = bot.approve("request prod-db write 1h second grant")
    url2 = bot.pickup_url(second)
    assert url2 != url
    bot.clock.advance(timedelta(minutes=10, seconds=1))
    expired = httpx.get(url2)
    assert expired.status_code == 410
    assert "This link has expired" in expired.text
    assert bot.grant(second).picked_up_at is None
    refusals = [e.details["why"] for e in bot.audit() if e.event_type == "pickup_refused"]
    assert refusals == ["already used", "already used", "link expired"]


def test_idp_down_is_retried_then_failed_and_the_bot_stays_healthy(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.fail_next(503, count=100)
    request_id = bot.approve()
    row = bot.stored(request_id)
    assert row.status == "failed"
    assert row.failure_code == "temporarily_unavailable"
    assert "gave up after" in (row.failure_detail or "")
    retries = [e for e in bot.audit(request_id) if e.event_type == "mint_retry"]
    assert 2 <= len(retries) <= 10, "bounded retries with backoff"
    health = httpx.get(f"{bot.public_url}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"

    # The IdP recovers: the next approval mints normally.
    bot.idp.reset()
    assert bot.approve("request prod-db read 15m after recovery") and bot.idp.stats()["exchanges"] >= 1


def test_slow_idp_times_out_within_the_budget(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.set_delay(2500)  # longer than the 1 s attempt timeout the fixture configures
    request_id = bot.approve()
    row = bot.stored(request_id)
    assert row.status == "failed"
    assert row.failure_code == "idp_timeout"
    assert httpx.get(f"{bot.public_url}/healthz").status_code == 200


def test_racing_approvals_mint_once(minting_bot: MintingBot) -> None:
    bot = minting_bot
    for round_no in range(5):
        request_id, channel, ts = bot.request(REQUESTER, f"request prod-db read 30m race {round_no}")
        bodies = [
            bot.click_body(user, ActionId.APPROVE, request_id, channel=channel, ts=ts)
            for user in (APPROVER_1, APPROVER_2)
        ]
        barrier = threading.Barrier(2)

        def fire(body: str, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            bot.send.post_signed(body)

        threads = [threading.Thread(target=fire, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bot.slack.wait_for(lambda rid=request_id: bot.stored(rid).status == "active", timeout=15)
        bot.slack.wait_for(lambda rid=request_id: len(bot.audit(rid)) >= 7)
    assert bot.idp.stats()["exchanges"] == 5


def test_jwks_is_served_with_kid(minting_bot: MintingBot) -> None:
    document = httpx.get(f"{minting_bot.public_url}/.well-known/jwks.json").json()
    (key,) = document["keys"]
    assert key["kid"] and key["alg"] in ("ES256", "RS256") and key["use"] == "sig"
    assert "d" not in key, "the private part must never be published"


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def uvicorn_records() -> Iterator[list[logging.LogRecord]]:
    """uvicorn's loggers do not propagate to the root (so caplog never sees them): listen to them at DEBUG."""
    kept = _Kept()
    names = ("uvicorn", "uvicorn.error", "uvicorn.access")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in ("uvicorn", "uvicorn.access"):
        logging.getLogger(name).addHandler(kept)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield kept.records
    finally:
        for name in ("uvicorn", "uvicorn.access"):
            logging.getLogger(name).removeHandler(kept)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def written_at_debug(records: list[logging.LogRecord]) -> list[str]:
    """The records that ``jit-bot serve --log-level DEBUG`` would write, formatted the way it writes them:
    message, traceback and stack included. (Its configuration keeps client libraries at WARNING; the
    records they make at DEBUG in this process are never written.)"""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.level, lg.filters[:]) for lg in loggers]
    try:
        configure_logging(logging.DEBUG)
        formatter = root.handlers[0].formatter
        assert formatter is not None
        return [formatter.format(r) for r in records if logging.getLogger(r.name).isEnabledFor(r.levelno)]
    finally:
        root.handlers[:], root.level = handlers, level
        for lg, lg_level, filters in saved:
            lg.setLevel(lg_level)
            lg.filters[:] = filters


def test_token_leaks_nowhere(minting_bot: MintingBot) -> None:
    bot = minting_bot
    with uvicorn_records() as from_uvicorn:
        bot.idp.fail_next(503)  # one retry, so the mint has something to say in the log
        request_id = bot.approve()
        url = bot.pickup_url(request_id)
        # urllib, not httpx: this test's own client must not log the link it fetches.
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/json"})) as answer:
            token = json.load(answer)["access_token"]
        assert len(token) >= 20

        # Not in any Slack call, argument or answer.
        slack_traffic = json.dumps([(c.method, c.args, c.response) for c in bot.slack.calls], default=str)
        slack_traffic += json.dumps([r.payload for r in bot.slack.responses], default=str)
        assert token not in slack_traffic
        # Not in the audit trail, and not in plaintext anywhere in the database.
        assert token not in json.dumps([e.model_dump(mode="json") for e in bot.audit()])
        with bot.engine.connect() as connection:
            for table in ("access_request", "vote", "audit_event", "audit_head", "grant"):
                rows = connection.execute(text(f'SELECT * FROM "{table}"')).fetchall()
                dump = repr(rows)
                assert token not in dump, table
                assert token.encode() not in dump.encode()
        grant = bot.grant(request_id)
        assert grant.token_ciphertext is not None and token.encode() not in grant.token_ciphertext

        # Revoked too, so that the revocation path has had its say in the log.
        bot.command(REQUESTER, f"/jit revoke {request_id}")
        bot.slack.wait_for(lambda: bot.stored(request_id).status == "revoked")

    # Not in any log line of the bot's process (captured at DEBUG).
    for record in bot.log_records.records:
        assert token not in record.getMessage() and token not in str(record.args)
    # Nor in any line the bot would write at DEBUG, tracebacks included, uvicorn's own loggers too; and
    # neither is the pickup link, which is as good as the token until it is used.
    pickup_secret = url.rsplit("/", 1)[1]
    assert len(pickup_secret) >= 32
    lines = written_at_debug([*bot.log_records.records, *from_uvicorn])
    assert any(request_id in line and "attempt 1" in line for line in lines), "the check sees the bot's lines"
    for line in lines:
        assert token not in line, line
        assert pickup_secret not in line, line


def test_scope_wider_than_approved_is_refused_and_revoked_until_proven_dead(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.misbehave_next(extra_scope="write")
    request_id = bot.approve()  # asks for read only
    row = bot.stored(request_id)
    assert row.status == "failed"
    assert row.failure_code == "scope_wider_than_approved"
    assert "never handed out" in (row.failure_detail or "")
    # The token is held (encrypted, never handed out) only until the IdP confirms it dead.
    bot.slack.wait_for(lambda: bot.grant(request_id).status == "revoked", timeout=15)
    grant = bot.grant(request_id)
    assert grant.refusal == "scope_wider_than_approved" and grant.token_ciphertext is None
    assert grant.pickup_hash is None, "a refused token never had a pickup link"
    (issued,) = [t for t in bot.idp.tokens() if t["request_id"] == request_id]
    assert issued["active"] is False, "the IdP itself says the over-broad token is dead"
    alerts = bot.slack.wait_for(lambda: a if len(a := _audit_alerts(bot, request_id)) >= 2 else None)
    assert "write" in alerts[0] and "queued for revocation" in alerts[0] and "by hand" not in alerts[0]
    assert "is revoked" in alerts[1]
    dm = bot.slack.wait_for(lambda: [t for t in bot.dms_to(REQUESTER) if "could not be issued" in t])[0]
    assert "scope_wider_than_approved" in dm and "/pickup/" not in dm
    proof = [e for e in bot.audit(request_id) if e.event_type == "grant_revoked"]
    assert proof and proof[0].details["proof"]["introspection"] == {"active": False}


def _audit_alerts(bot: MintingBot, request_id: str) -> list[str]:
    return [
        str(c.args["text"])
        for c in bot.slack.calls_to("chat.postMessage")
        if c.args.get("channel") == AUDIT_CHANNEL
        and request_id in str(c.args.get("text"))
        and (":rotating_light:" in str(c.args["text"]) or ":white_check_mark:" in str(c.args["text"]))
    ]


def test_idp_lifetime_longer_than_approved_is_a_warning(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.misbehave_next(expires_in=86400)
    request_id = bot.approve()
    assert bot.stored(request_id).status == "active", "a longer IdP lifetime does not fail the grant"
    grant = bot.grant(request_id)
    assert grant.idp_expires_in == 86400
    assert grant.expires_at - grant.issued_at == timedelta(minutes=30), "our expiry stays the approved one"
    (active,) = [e for e in bot.audit(request_id) if e.event_type == "grant_active"]
    assert active.details["idp_lifetime_exceeds_grant"] is True
    assert any("longer than the approved" in r.getMessage() for r in bot.log_records.records)


def test_revocation_and_introspection_functions(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve()
    token = bot.token(request_id)
    idp = bot.idp_client
    assert idp.introspect(token)["active"] is True
    idp.revoke(token)
    assert idp.introspect(token) == {"active": False}
    assert bot.idp.revocation_count(token) == 1
    idp.revoke(token)  # RFC 7009: revoking an already revoked token still succeeds
    assert request_id


def test_revocation_reports_idp_trouble_as_transient(minting_bot: MintingBot) -> None:
    from bot.idp.errors import IdPError

    bot = minting_bot
    request_id = bot.approve()
    token = bot.token(request_id)
    bot.idp.fail_next(503, endpoint="revocation")
    with pytest.raises(IdPError) as caught:
        bot.idp_client.revoke(token)
    assert caught.value.transient and caught.value.status == 503
    assert token not in str(caught.value)
    bot.idp.stop()
    with pytest.raises(IdPError) as down:
        bot.idp_client.introspect(token)
    assert down.value.transient and down.value.code == "idp_unreachable"
    bot.idp.start()
    assert bot.idp_client.introspect(token)["active"] is True
