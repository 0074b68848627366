"""What makes a mint safe: one token per approval, a fresh assertion per attempt, JWTs verified in
full, and the IdP asked for the grant's own lifetime.

Each test here fails when one line of the code that keeps the promise is broken (scripts/mutants
breaks them on purpose).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from bot.demo.slack_api import SlackStandIn
from bot.domain.policy import Policy
from bot.services.delivery import DeliveryPolicy
from bot.slack.ids import ActionId
from tests.testbot import Bot, MintingBot, serving
from tests.world import APPROVER_1, REQUESTER

MINTERS = 8


def _events(bot: Bot, request_id: str, event_type: str) -> list[Any]:
    return [e for e in bot.audit(request_id) if e.event_type == event_type]


def _issued_for(bot: MintingBot, request_id: str) -> list[dict[str, Any]]:
    return [t for t in bot.idp.tokens() if t["request_id"] == request_id]


@pytest.fixture
def replica_without_idp(
    minting_bot: MintingBot, database_url: str, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> Iterator[Bot]:
    """A second bot on the same database with no IdP: it records approvals and never mints them."""
    with serving(minting_bot.engine, database_url, policy, slack, delivery) as replica:
        yield replica


def test_racing_mint_calls_exchange_once(minting_bot: MintingBot, replica_without_idp: Bot) -> None:
    bot, replica = minting_bot, replica_without_idp
    request_id, channel, ts = replica.request(REQUESTER, "request prod-db read 30m raced")
    replica.click(APPROVER_1, ActionId.APPROVE, request_id, channel=channel, ts=ts)
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "approved")
    minting = bot.served.runtime.minting
    assert minting is not None

    # Several threads mint the same approval at the same moment (a retry, a resume, a second worker).
    start = threading.Barrier(MINTERS)
    errors: list[BaseException] = []

    def mint() -> None:
        start.wait()
        try:
            minting.mint(request_id)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=mint) for _ in range(MINTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "active")
    assert bot.idp.stats()["exchanges"] == 1, "one approval, one exchange"
    assert len(_issued_for(bot, request_id)) == 1
    assert len(_events(bot, request_id, "mint_started")) == 1
    assert len(_events(bot, request_id, "token_received")) == 1
    assert len([t for t in bot.dms_to(REQUESTER) if request_id in t and "/pickup/" in t]) == 1


def test_every_exchange_attempt_sends_a_fresh_assertion(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # The IdP handles the first exchange for real (and so remembers its jti), but the answer is lost
    # in a 503: the retry is refused as a replay unless it carries a new assertion.
    bot.idp.fault("token", "replace", status=503, body='{"error": "temporarily_unavailable"}')
    bot.idp.fail_next(503, count=1)  # and one more, refused before it is handled
    request_id = bot.approve("request prod-db read 30m flaky idp")
    row = bot.stored(request_id)
    assert row.status == "active", (row.failure_code, row.failure_detail)
    retries = _events(bot, request_id, "mint_retry")
    assert [e.details["attempt"] for e in retries] == [1, 2]
    last = bot.idp.last_assertion()
    assert last is not None
    jtis = [e.details["assertion_jti"] for e in retries] + [last["jti"]]
    assert len(set(jtis)) == 3, jtis
    assert len(_issued_for(bot, request_id)) == 2, "the lost answer's token and the one the bot holds"


def _impostor_jwks(idp_jwks_uri: str) -> str:
    """The IdP's own key ids and algorithms, with other keys behind them."""
    keys = httpx.get(idp_jwks_uri).json()["keys"]
    forged = []
    for key in keys:
        if key["kty"] != "RSA":
            continue
        other = RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
        forged.append({**json.loads(other), "kid": key["kid"], "alg": key.get("alg", "RS256"), "use": "sig"})
    assert forged, keys
    return json.dumps({"keys": forged})


def _assert_refused_and_revoked(bot: MintingBot, request_id: str, refusal: str, *, idp_knows_it: bool = True) -> None:
    row = bot.stored(request_id)
    assert row.status == "failed" and row.failure_code == refusal, (row.status, row.failure_code)
    bot.slack.wait_for(lambda: bot.grant(request_id).status == "revoked", timeout=20)
    assert bot.grant(request_id).refusal == refusal
    (issued,) = _issued_for(bot, request_id)
    if idp_knows_it:
        assert issued["active"] is False, "the IdP says the refused token is dead"
    assert not [t for t in bot.dms_to(REQUESTER) if request_id in t and "/pickup/" in t], "no pickup link"


@pytest.mark.parametrize("idp_token_format", ["jwt"])
def test_a_jwt_from_another_issuer_is_refused_and_revoked(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.misbehave_next(jwt_claims={"iss": "https://impostor.example"})
    request_id = bot.approve("request prod-db read 30m whose token")
    # The dev IdP does not take a token naming another issuer back for revocation (nor would a real
    # one), so its own list still calls it live; the bot's proof is introspection's "inactive".
    _assert_refused_and_revoked(bot, request_id, "invalid_token", idp_knows_it=False)


@pytest.mark.parametrize("idp_token_format", ["jwt"])
def test_a_jwt_for_another_audience_is_refused_and_revoked(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.idp.misbehave_next(jwt_claims={"aud": "https://billing.internal.example"})
    request_id = bot.approve("request prod-db read 30m for what")
    _assert_refused_and_revoked(bot, request_id, "invalid_token")


@pytest.mark.parametrize("idp_token_format", ["jwt"])
def test_a_jwt_whose_signature_does_not_verify_is_refused_and_revoked(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # Served as the IdP's key set: its key ids, other keys. The token's signature cannot verify.
    bot.idp.fault("jwks", "replace", status=200, body=_impostor_jwks(bot.idp.jwks_uri), count=5)
    request_id = bot.approve("request prod-db read 30m signed by whom")
    _assert_refused_and_revoked(bot, request_id, "invalid_token")


def test_the_idp_is_asked_for_the_grants_lifetime(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # Two hours: longer than the dev IdP's default lifetime (one hour), so only asking gets it.
    request_id = bot.approve("request prod-db read 2h long job")
    token = httpx.get(bot.pickup_url(request_id), headers={"Accept": "application/json"}).json()["access_token"]
    grant = bot.grant(request_id)
    info = bot.idp.introspect(token)
    assert info["active"] is True
    expires_at = grant.expires_at.replace(tzinfo=UTC).timestamp()  # UTC, with or without a zone
    assert abs(info["exp"] - expires_at) <= 2, (info["exp"], grant.expires_at)
    assert grant.idp_expires_in is not None and grant.idp_expires_in > 3600
