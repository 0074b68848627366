"""A hostile but plausible IdP: slow, stalled, late, odd or refusing. Whatever it does, a token the
bot holds ends active or revoked at the IdP (asserted with the IdP's own view), and every delay is
visible (alerts, cards, audit).

These faults do not depend on the database engine, so they run on SQLite; the claims and leases that
do are covered for both engines in test_e2e_revocation and test_revocation_processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from bot.services.minting import RetryPolicy
from bot.services.revocation import RevocationTiming
from bot.slack.ids import BlockId
from bot.store import grants as grant_store
from bot.store.db import session_scope
from bot.store.models import Grant
from tests.testbot import MintingBot
from tests.world import AUDIT_CHANNEL, REQUESTER


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'jit.db'}"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def audit_posts(bot: MintingBot, request_id: str, marker: str) -> list[str]:
    return [
        str(c.args["text"])
        for c in bot.slack.calls_to("chat.postMessage")
        if c.ok
        and c.args.get("channel") == AUDIT_CHANNEL
        and request_id in str(c.args["text"])
        and marker in c.args["text"]
    ]


def card_text(bot: MintingBot, request_id: str) -> str:
    return json.dumps(bot.card(request_id)["blocks"])


def issued_for(bot: MintingBot, request_id: str) -> list[dict[str, Any]]:
    """What the IdP itself says it issued for this request (never the token values)."""
    return [t for t in bot.idp.tokens() if t["request_id"] == request_id]


def mint_started_at(bot: MintingBot, request_id: str) -> datetime:
    (started,) = bot.events(request_id, "mint_started")
    return started.at


# --- the token endpoint ---------------------------------------------------------------------------


def test_a_stalled_token_endpoint_never_delays_the_revocation_of_other_grants(minting_bot: MintingBot) -> None:
    bot = minting_bot
    expiring = bot.approve("request prod-db read 4s about to end")
    assert bot.stored(expiring).status == "active"
    token = bot.token(expiring)

    # From now on the token endpoint answers a byte a second: every mint hangs on it until its deadline.
    bot.idp.fault("token", "trickle", count=50, bytes_per_second=1)
    stuck = [bot.approve(f"request prod-db read 30m waits on the IdP {n}", minted=False) for n in range(6)]

    bot.slack.wait_for(lambda: (g := bot.find_grant(expiring)) is not None and g.status == "revoked", timeout=30)
    revoked = bot.find_grant(expiring)
    assert revoked is not None and revoked.revoked_at is not None
    # Revoked by the expiry timer, not after the stalled mints gave up (the bug: 82 s late).
    assert revoked.revoked_at - revoked.expires_at < timedelta(seconds=5)
    assert bot.idp.introspect(token) == {"active": False}
    assert bot.events(expiring, "revocation_overdue") == []

    # The stalled mints fail by their deadline; the tokens the IdP issued for them never reached
    # the bot, so nothing holds them, and the IdP ends each at the grant's own expiry at the latest.
    for request_id in stuck:
        bot.slack.wait_for(lambda rid=request_id: bot.stored(rid).status == "failed", timeout=30)
        assert bot.stored(request_id).failure_code == "idp_timeout"
        assert bot.find_grant(request_id) is None
        ends = mint_started_at(bot, request_id) + timedelta(minutes=30)
        assert all(t["exp"] <= ends.timestamp() + 2 for t in issued_for(bot, request_id))
    assert bot.slack.rejected() == []


def test_a_trickling_token_answer_fails_the_mint_by_its_deadline_and_is_never_activated(
    minting_bot: MintingBot,
) -> None:
    bot = minting_bot
    bot.idp.fault("token", "trickle", count=20, bytes_per_second=2)
    request_id = bot.approve("request prod-db read 30m slow idp")

    row = bot.stored(request_id)
    assert row.status == "failed" and row.failure_code == "idp_timeout"
    (failed,) = bot.events(request_id, "mint_failed")
    # The retry budget (3 s in these tests) plus one attempt's deadline (1 s) bound the whole mint.
    assert failed.at - mint_started_at(bot, request_id) < timedelta(seconds=3 + 1 + 1.5)
    assert issued_for(bot, request_id), "the IdP did issue tokens; the bot gave up before it got them"
    dm = bot.slack.wait_for(lambda: [t for t in bot.dms_to(REQUESTER, request_id) if "could not be issued" in t])
    assert "Nothing was issued to you" in dm[0]

    # A late answer can no longer arrive: the connections were closed at the deadline.
    bot.idp.reset()
    bot.approve("request prod-db read 30m after the slow one")
    assert bot.stored(request_id).status == "failed" and bot.find_grant(request_id) is None
    _, key, _ = bot.send.slash(REQUESTER, f"revoke {request_id}")
    (reply,) = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "is failed, so there is nothing to revoke" in reply.payload["text"]


@pytest.mark.parametrize("mint_retry", [RetryPolicy(budget_seconds=8.0, first_delay=0.2, attempt_timeout=6.0)])
def test_a_token_that_arrives_after_its_mint_was_given_up_is_refused_and_revoked(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.fault("token", "late", ms=3000)
    request_id = bot.approve("request prod-db read 30m the idp is late", minted=False)
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "minting")
    # While the exchange is in flight, the bot's clock passes the point where a mint counts as interrupted.
    bot.clock.advance(timedelta(minutes=3))
    bot.served.runtime.run_housekeeping()
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "failed")
    assert bot.stored(request_id).failure_code == "mint_interrupted"

    # Then the token arrives: it is kept only to be revoked, and revoked.
    bot.slack.wait_for(lambda: (g := bot.find_grant(request_id)) is not None and g.status == "revoked", timeout=20)
    held = bot.find_grant(request_id)
    assert held is not None and held.refusal == "token_too_late" and held.token_ciphertext is None
    (issued,) = issued_for(bot, request_id)
    assert issued["active"] is False, "the IdP says the late token is dead"
    assert not [t for t in bot.dms_to(REQUESTER) if "/pickup/" in t], "no pickup link was ever sent"
    assert audit_posts(bot, request_id, ":rotating_light:"), "the refusal is alerted"


@pytest.mark.parametrize("idp_token_format", ["jwt"])
@pytest.mark.parametrize(
    ("fault", "refusal"),
    [
        pytest.param("odd_kid", "invalid_token", id="jwt-header-kid-is-a-number"),
        pytest.param("jwks_array", "jwks_unavailable", id="jwks-is-a-json-array"),
    ],
)
def test_an_odd_answer_after_the_token_exists_gets_the_token_revoked(
    minting_bot: MintingBot, fault: str, refusal: str
) -> None:
    bot = minting_bot
    if fault == "odd_kid":
        bot.idp.misbehave_next(odd_kid=True)
    else:
        bot.idp.fault("jwks", "replace", status=200, body='[{"kty": "RSA", "n": "x", "e": "AQAB"}]', count=5)
    request_id = bot.approve("request prod-db read 30m odd idp")

    row = bot.stored(request_id)
    assert row.status == "failed" and row.failure_code == refusal
    bot.slack.wait_for(lambda: (g := bot.find_grant(request_id)) is not None and g.status == "revoked", timeout=20)
    (issued,) = issued_for(bot, request_id)
    assert issued["active"] is False, "the IdP confirms the odd token is dead"
    assert bot.events(request_id, "token_refused")[0].details["error"] == refusal
    (proof,) = bot.events(request_id, "grant_revoked")
    assert proof.details["proof"]["introspection"] == {"active": False}
    assert audit_posts(bot, request_id, "queued for revocation")
    # Not silent: the log says what happened to which request (the bug: nothing, even at DEBUG).
    warnings = [r.getMessage() for r in bot.log_records.records if r.levelno >= logging.WARNING]
    assert any(request_id in line and refusal in line for line in warnings), warnings


def test_an_over_scoped_token_is_revoked_even_when_the_first_revocations_fail(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.misbehave_next(extra_scope="write")
    bot.idp.fault("revocation", "replace", status=400, body="[]", process=False, count=2)
    request_id = bot.approve("request prod-db read 30m over-scoped")
    assert bot.stored(request_id).failure_code == "scope_wider_than_approved"

    bot.slack.wait_for(lambda: (g := bot.find_grant(request_id)) is not None and g.status == "revoked", timeout=20)
    failures = bot.events(request_id, "revocation_failed")
    assert [f.details["error"] for f in failures] == ["revocation_failed", "revocation_failed"]
    (issued,) = issued_for(bot, request_id)
    assert issued["active"] is False
    alerts = bot.slack.wait_for(lambda: a if len(a := audit_posts(bot, request_id, "refused token")) else None)
    assert "is revoked" in alerts[0]
    assert not [t for t in audit_posts(bot, request_id, "") if "by hand" in t], "nobody is asked to revoke it by hand"


def test_retry_after_from_the_token_endpoint_is_honoured(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.fail_next(429, 1, retry_after=1)
    request_id = bot.approve("request prod-db read 30m busy idp")
    assert bot.stored(request_id).status == "active"
    (retry,) = bot.events(request_id, "mint_retry")
    assert retry.details["error"] == "temporarily_unavailable"
    (active,) = bot.events(request_id, "grant_active")
    assert active.at - retry.at >= timedelta(seconds=0.9), "the next attempt waited for Retry-After"


@pytest.mark.parametrize(
    ("mode", "params", "failure"),
    [
        pytest.param("oversize", {"bytes": 50_000_000}, "idp_answer_too_large", id="oversized"),
        # A few KB on the wire that inflate to 5 MB, past the 1 MiB cap: the cap counts wire bytes,
        # so the bot asks for identity and refuses any other encoding.
        pytest.param("gzip", {"inflate_to": 5_000_000}, "idp_answer_encoded", id="compressed"),
    ],
)
def test_a_token_answer_is_not_read_past_the_cap(
    minting_bot: MintingBot, mode: str, params: dict[str, int], failure: str
) -> None:
    bot = minting_bot
    bot.idp.fault("token", mode, **params)
    request_id = bot.approve(f"request prod-db read 30m {mode} answer")
    row = bot.stored(request_id)
    assert row.status == "failed" and row.failure_code == failure
    assert bot.find_grant(request_id) is None
    ends = mint_started_at(bot, request_id) + timedelta(minutes=30)
    assert all(t["exp"] <= ends.timestamp() + 2 for t in issued_for(bot, request_id))


def test_a_token_in_an_answer_that_is_not_200_is_held_refused_and_revoked(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.fault("token", "status", status=201)
    request_id = bot.approve("request prod-db read 30m created not ok")
    row = bot.stored(request_id)
    assert row.status == "failed" and row.failure_code == "invalid_response"
    bot.slack.wait_for(lambda: (g := bot.find_grant(request_id)) is not None and g.status == "revoked", timeout=20)
    (issued,) = issued_for(bot, request_id)
    assert issued["active"] is False, "the token that came with a 201 is dead at the IdP"
    assert "HTTP 201" in bot.events(request_id, "token_refused")[0].details["detail"]
    assert not [t for t in bot.dms_to(REQUESTER) if "/pickup/" in t]


@pytest.mark.parametrize("idp_token_format", ["jwt"])
@pytest.mark.parametrize(
    ("claims", "refusal"),
    [
        pytest.param({"scope": "read write"}, "scope_wider_than_approved", id="scope-claim-wider"),
        pytest.param({"scp": ["read", "write"]}, "scope_wider_than_approved", id="scp-claim-wider"),
        pytest.param({"scope": 7}, "invalid_token", id="scope-claim-not-scopes"),
        pytest.param({"exp": "later"}, "invalid_token", id="exp-not-a-number"),
        pytest.param("a-day-later", "invalid_response", id="exp-later-than-expires-in"),
    ],
)
def test_a_jwt_is_judged_by_its_own_claims_not_by_the_answer(
    minting_bot: MintingBot, claims: dict[str, Any] | str, refusal: str
) -> None:
    bot = minting_bot
    if claims == "a-day-later":
        claims = {"exp": int(datetime.now().timestamp()) + 86_400}
    assert isinstance(claims, dict)
    bot.idp.misbehave_next(jwt_claims=claims)
    request_id = bot.approve("request prod-db read 30m claims more than it says")
    row = bot.stored(request_id)
    assert row.status == "failed" and row.failure_code == refusal
    bot.slack.wait_for(lambda: (g := bot.find_grant(request_id)) is not None and g.status == "revoked", timeout=20)
    (issued,) = issued_for(bot, request_id)
    assert issued["active"] is False
    assert not [t for t in bot.dms_to(REQUESTER) if "/pickup/" in t], "no pickup link for a token that claims more"


def test_a_jwt_whose_claims_are_within_the_approval_is_minted(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.misbehave_next(jwt_claims={"scope": "read", "scp": ["read"]})
    request_id = bot.approve("request prod-db read 30m claims exactly what was approved")
    assert bot.stored(request_id).status == "active"


def test_sweeps_at_the_same_moment_never_claim_more_grants_than_there_are_workers(minting_bot: MintingBot) -> None:
    bot = minting_bot
    service = bot.served.runtime.revocation
    assert service is not None
    ids = [bot.approve(f"request prod-db read 30m one of many {n}") for n in range(service.worker_count + 4)]
    assert all(bot.stored(request_id).status == "active" for request_id in ids)
    # Every revocation attempt hangs, so a claimed grant keeps its worker busy.
    bot.idp.fault("revocation", "stall", count=100)
    with session_scope(bot.engine) as session:
        for request_id in ids:
            assert grant_store.expire_now(session=session, request_id=request_id, now=bot.clock(), by=REQUESTER)
    start = threading.Barrier(6)
    claimed: list[list[str]] = []

    def sweep() -> None:
        start.wait()
        claimed.append(service.sweep())

    threads = [threading.Thread(target=sweep) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with Session(bot.engine) as session:
        leased = [g for g in (session.get(Grant, r) for r in ids) if g is not None and g.status == "revoking"]
    # A lease starts when it is claimed; a grant claimed with no worker free would run out its lease unattempted.
    assert len(leased) <= service.worker_count, (len(leased), [len(c) for c in claimed])
    assert sum(len(c) for c in claimed) <= service.worker_count
    # Grants are waiting for a worker: the engine says so, and the outbox yields to it meanwhile.
    assert bot.served.runtime.backlog.behind()
    bot.idp.reset()  # let the stalled attempts end
    for request_id in ids:
        bot.slack.wait_for(
            lambda rid=request_id: (g := bot.find_grant(rid)) is not None and g.status == "revoked", timeout=60
        )
    service.sweep()
    assert not bot.served.runtime.backlog.behind(), "caught up: the outbox gets its workers back"


# --- the database refusing the token -------------------------------------------------------------


def refuse_grant_inserts(bot: MintingBot, *, on: bool) -> None:
    """A database that refuses to store tokens (a full disk, a lost primary): a trigger."""
    with bot.engine.begin() as connection:
        if on:
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_grants BEFORE INSERT ON \"grant\" BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        else:
            connection.exec_driver_sql("DROP TRIGGER refuse_grants")


def test_a_database_that_refuses_a_token_for_a_moment_does_not_lose_it(minting_bot: MintingBot) -> None:
    bot = minting_bot
    refuse_grant_inserts(bot, on=True)
    request_id = bot.approve("request prod-db read 30m the disk is full for a moment", minted=False)
    bot.slack.wait_for(lambda: issued_for(bot, request_id), timeout=10)
    time.sleep(0.5)
    refuse_grant_inserts(bot, on=False)
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "active", timeout=15)
    (issued,) = issued_for(bot, request_id)
    assert issued["active"] is True
    assert bot.events(request_id, "grant_active")
    messages = [r.getMessage() for r in bot.log_records.records]
    assert any(f"could not store the token minted for {request_id} (attempt" in m for m in messages), messages


def test_a_database_that_keeps_refusing_a_token_gets_it_revoked_directly_and_alerted(
    minting_bot: MintingBot,
) -> None:
    bot = minting_bot
    refuse_grant_inserts(bot, on=True)
    request_id = bot.approve("request prod-db read 30m the disk stays full")
    assert bot.stored(request_id).status == "failed"
    assert bot.find_grant(request_id) is None
    (issued,) = issued_for(bot, request_id)
    assert issued["active"] is False, "the bot revoked the token it could not store"
    alert = bot.slack.wait_for(lambda: audit_posts(bot, request_id, "could not store it"))
    assert "succeeded" in alert[0]


# --- the revocation endpoint ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "revocation_timing",
    [
        RevocationTiming(
            lease=timedelta(seconds=6), attempt_budget=2.0, call_timeout=1.0, overdue_after=timedelta(seconds=4)
        )
    ],
)
def test_a_trickling_revocation_endpoint_is_visible_counted_alerted_and_finished(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 2s trickling revocation")
    token = bot.token(request_id)
    bot.idp.fault("revocation", "trickle", count=4, bytes_per_second=1)

    # As soon as the expiry has passed the card says so, whatever the IdP is doing.
    bot.slack.wait_for(lambda: "Revocation pending" in card_text(bot, request_id), timeout=10)
    overdue = bot.slack.wait_for(lambda: audit_posts(bot, request_id, "has not confirmed its revocation"), timeout=20)
    assert "expired" in overdue[0] and " s ago" in overdue[0]

    bot.slack.wait_for(lambda: (g := bot.find_grant(request_id)) is not None and g.status == "revoked", timeout=40)
    assert bot.idp.introspect(token) == {"active": False}
    failures = bot.events(request_id, "revocation_failed")
    assert len(failures) >= 3
    # Each trickling attempt ended by its own deadline and said so; none outlived its lease.
    assert {f.details["error"] for f in failures} == {"idp_timeout"}
    assert len(audit_posts(bot, request_id, "has not confirmed its revocation")) == 1, "alerted once"
    assert len(bot.events(request_id, "revocation_overdue")) == 1
    bot.slack.wait_for(lambda: "Revoked" in card_text(bot, request_id))


def test_a_lease_that_runs_out_with_no_outcome_counts_as_a_failed_attempt(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 1h claimed by a replica that dies")
    token = bot.token(request_id)
    # Another replica claims the grant (as its sweep would, an hour from now) and dies mid-attempt.
    now = bot.clock()
    with session_scope(bot.served.runtime.engine) as session:
        claim = grant_store.claim_due(
            session=session,
            now=now + timedelta(hours=2),
            claim_id="replica-that-died",
            lease_until=now + timedelta(seconds=1),
            limit=1,
            request_ids=[request_id],
        )
    assert claim.claimed == [request_id]

    bot.slack.wait_for(lambda: (g := bot.find_grant(request_id)) is not None and g.status == "revoked", timeout=15)
    (lapsed,) = bot.events(request_id, "revocation_failed")
    assert lapsed.details == {"attempt": 1, "error": "lease_expired"}
    assert bot.idp.introspect(token) == {"active": False}
    assert bot.idp.revocation_count(token) == 1


def test_retry_after_from_the_revocation_endpoint_sets_the_next_attempt(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 1h busy at revocation")
    bot.idp.fail_next(429, 1, endpoint="revocation", retry_after=3)
    bot.send.slash(REQUESTER, f"revoke {request_id}")
    bot.slack.wait_for(lambda: (g := bot.find_grant(request_id)) is not None and g.status == "revoked", timeout=20)
    (failure,) = bot.events(request_id, "revocation_failed")
    assert datetime.fromisoformat(failure.details["retry_at"]) - failure.at >= timedelta(seconds=3)
    (revoked,) = bot.events(request_id, "grant_revoked")
    assert revoked.at - failure.at >= timedelta(seconds=2.9)


def test_an_idp_error_description_cannot_forge_lines_on_cards_dms_or_logs(minting_bot: MintingBot) -> None:
    bot = minting_bot
    forged = "bad assertion\nINFO jit-bot: request approved by security\u202e"
    bot.idp.fail_next(400, 1, body=json.dumps({"error": "invalid_grant", "error_description": forged}))
    request_id = bot.approve("request prod-db read 30m odd error text")
    row = bot.stored(request_id)
    assert row.failure_code == "invalid_grant"
    assert row.failure_detail is not None and "\n" not in row.failure_detail and "\u202e" not in row.failure_detail
    dm = bot.slack.wait_for(lambda: [t for t in bot.dms_to(REQUESTER, request_id) if "could not be issued" in t])[0]
    assert "\n" not in dm and "\u202e" not in dm and "request approved by security" in dm
    bot.slack.wait_for(lambda: "invalid_grant" in card_text(bot, request_id))
    row = bot.stored(request_id)
    blocks = bot.slack.message(str(row.card_channel), str(row.card_ts))["blocks"]
    (decision,) = [b["text"]["text"] for b in blocks if b.get("block_id") == BlockId.DECISION]
    assert "\n" not in decision and "\u202e" not in decision and "request approved by security" in decision
    for record in bot.log_records.records:
        assert "\n" not in record.getMessage() or record.exc_info, record.getMessage()
