"""The development IdP over real HTTP: token exchange (the profile in docs/architecture.md), introspection,
revocation and the admin endpoints the bot's tests rely on."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from bot.demo.devidp import DevIdP, DevIdPError, free_port

CLIENT_ID = "jit-bot"
CLIENT_SECRET = "s3cret-for-tests"
DB = "https://db.internal.example"
WIKI = "https://wiki.internal.example"
RESOURCES = {DB: ["read", "write"], WIKI: ["view"]}
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class BotKeys:
    """The bot side: signing keys and a loopback server for its JWKS."""

    def __init__(self) -> None:
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_requests = 0
        keys = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                keys.jwks_requests += 1
                body = json.dumps(keys.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def jwks(self) -> dict[str, Any]:
        ec_jwk = ECAlgorithm.to_jwk(self.ec_key.public_key(), as_dict=True)
        rsa_jwk = RSAAlgorithm.to_jwk(self.rsa_key.public_key(), as_dict=True)
        ec_jwk.update(kid="bot-es256", alg="ES256", use="sig")
        rsa_jwk.update(kid="bot-rs256", alg="RS256", use="sig")
        return {"keys": [ec_jwk, rsa_jwk]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def bot() -> Iterator[BotKeys]:
    keys = BotKeys()
    yield keys
    keys.close()


def make_idp(bot: BotKeys, **overrides: Any) -> DevIdP:
    options: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "trusted_issuer": bot.url,
        "trusted_jwks_url": f"{bot.url}/.well-known/jwks.json",
        "resources": RESOURCES,
        "lifetime_param": "requested_lifetime",
    }
    options.update(overrides)
    return DevIdP(**options)


@pytest.fixture(scope="module")
def idp_process(bot: BotKeys) -> Iterator[DevIdP]:
    idp = make_idp(bot)
    with idp:
        yield idp
    idp.close()


@pytest.fixture
def idp(idp_process: DevIdP) -> DevIdP:
    if not idp_process.running:
        idp_process.start()
    idp_process.reset()
    return idp_process


def claims_for(idp: DevIdP, bot: BotKeys, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": bot.url,
        "sub": "alice@example.com",
        "aud": idp.issuer,
        "iat": now,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
        "jit": {
            "request_id": "req-123",
            "resource": "prod-db",
            "scopes": ["read", "write"],
            "approvers": ["U0APPROVER"],
            "reason": "incident 42",
            "expires_at": now + 900,
        },
    }
    jit_overrides = overrides.pop("jit", {})
    claims.update(overrides)
    claims["jit"] = {**claims["jit"], **jit_overrides}
    return claims


def sign(claims: dict[str, Any], key: Any, *, alg: str = "ES256", kid: str | None = "bot-es256") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def discovery(idp: DevIdP) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(idp.discovery_url).json()
    return result


def exchange(
    idp: DevIdP,
    assertion: str,
    *,
    audience: str = DB,
    scope: str = "read",
    lifetime: int | None = None,
    auth: tuple[str, str] | None = (CLIENT_ID, CLIENT_SECRET),
    extra: dict[str, str] | None = None,
    timeout: float = 10,
) -> httpx.Response:
    data = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": assertion,
        "subject_token_type": JWT_TYPE,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        "audience": audience,
        "scope": scope,
    }
    if lifetime is not None:
        data[idp.lifetime_param] = str(lifetime)
    data.update(extra or {})
    return httpx.post(discovery(idp)["token_endpoint"], data=data, auth=auth, timeout=timeout)


def introspect(idp: DevIdP, token: str) -> dict[str, Any]:
    response = httpx.post(
        discovery(idp)["introspection_endpoint"], data={"token": token}, auth=(CLIENT_ID, CLIENT_SECRET)
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def revoke(idp: DevIdP, token: str) -> httpx.Response:
    return httpx.post(
        discovery(idp)["revocation_endpoint"],
        data={"token": token, "token_type_hint": "access_token"},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )


def assert_error(response: httpx.Response, status: int, error: str, description_part: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert "access_token" not in body
    assert description_part in body.get("error_description", ""), body


# ---------------------------------------------------------------------------- happy path


def test_discovery_advertises_the_endpoints(idp: DevIdP) -> None:
    meta = discovery(idp)
    assert meta["issuer"] == idp.issuer == f"http://127.0.0.1:{idp.port}"
    assert TOKEN_EXCHANGE in meta["grant_types_supported"]
    assert meta["token_endpoint"] == f"{idp.issuer}/token"
    assert meta["revocation_endpoint"] == f"{idp.issuer}/token/revocation"
    assert meta["introspection_endpoint"] == f"{idp.issuer}/token/introspection"
    jwks = httpx.get(meta["jwks_uri"]).json()
    assert {k["alg"] for k in jwks["keys"]} == {"RS256", "ES256"}
    assert all("d" not in k for k in jwks["keys"])


def test_exchange_introspect_revoke(idp: DevIdP, bot: BotKeys) -> None:
    claims = claims_for(idp, bot)
    response = exchange(idp, sign(claims, bot.ec_key), scope="read")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in", "scope"}
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read"
    # default TTL is 3600 s, capped by jit.expires_at (now + 900)
    assert 895 <= body["expires_in"] <= 900
    token = body["access_token"]
    assert token.count(".") == 0  # opaque

    info = introspect(idp, token)
    assert info["active"] is True
    assert info["sub"] == "alice@example.com"
    assert info["scope"] == "read"
    assert info["aud"] == DB
    assert info["act"] == {"sub": CLIENT_ID}
    assert info["client_id"] == CLIENT_ID
    assert info["iss"] == idp.issuer
    assert info["token_type"] == "Bearer"
    assert abs(info["exp"] - (int(time.time()) + body["expires_in"])) <= 2

    assert idp.last_assertion() == claims

    assert revoke(idp, token).status_code == 200
    assert introspect(idp, token) == {"active": False}

    stats = idp.stats()
    assert stats["exchanges"] == 1
    assert stats["exchange_errors"] == 0
    assert stats["revocations"] == {hashlib.sha256(token.encode()).hexdigest(): 1}
    assert stats["introspections"] == 2
    assert stats["jwks_fetches"] == 1  # the IdP fetched the bot's JWKS during the exchange


def test_rs256_assertion_and_several_scopes(idp: DevIdP, bot: BotKeys) -> None:
    assertion = sign(claims_for(idp, bot), bot.rsa_key, alg="RS256", kid="bot-rs256")
    response = exchange(idp, assertion, scope="write read")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "write read"
    assert introspect(idp, response.json()["access_token"])["scope"] == "write read"


def test_assertion_lifetime_of_exactly_120_seconds_is_accepted(idp: DevIdP, bot: BotKeys) -> None:
    now = int(time.time())
    response = exchange(idp, sign(claims_for(idp, bot, iat=now, exp=now + 120), bot.ec_key))
    assert response.status_code == 200, response.text


def test_every_exchange_fetches_the_bot_jwks(idp: DevIdP, bot: BotKeys) -> None:
    before = bot.jwks_requests
    for _ in range(3):
        assert exchange(idp, sign(claims_for(idp, bot), bot.ec_key)).status_code == 200
    assert bot.jwks_requests - before == 3
    assert idp.stats()["jwks_fetches"] == 3


# ---------------------------------------------------------------------------- lifetime


def test_lifetime_param_is_respected(idp: DevIdP, bot: BotKeys) -> None:
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key), lifetime=300)
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 300
    info = introspect(idp, response.json()["access_token"])
    assert abs(info["exp"] - (int(time.time()) + 300)) <= 2


def test_lifetime_param_is_capped_by_grant_expiry(idp: DevIdP, bot: BotKeys) -> None:
    now = int(time.time())
    claims = claims_for(idp, bot, jit={"expires_at": now + 600})
    response = exchange(idp, sign(claims, bot.ec_key), lifetime=3000)
    assert response.status_code == 200, response.text
    assert 597 <= response.json()["expires_in"] <= 600


def test_default_ttl_applies_without_lifetime_param(idp: DevIdP, bot: BotKeys) -> None:
    claims = claims_for(idp, bot, jit={"expires_at": int(time.time()) + 7200})
    response = exchange(idp, sign(claims, bot.ec_key))
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 3600


def test_grant_already_expired_is_refused(idp: DevIdP, bot: BotKeys) -> None:
    claims = claims_for(idp, bot, jit={"expires_at": int(time.time()) - 1})
    assert_error(exchange(idp, sign(claims, bot.ec_key)), 400, "invalid_grant", "expires_at")


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5"])
def test_bad_lifetime_param_is_invalid_request(idp: DevIdP, bot: BotKeys, value: str) -> None:
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key), extra={"requested_lifetime": value})
    assert_error(response, 400, "invalid_request", "requested_lifetime")


# ---------------------------------------------------------------------------- assertion checks


def test_wrong_signing_key_with_a_trusted_kid(idp: DevIdP, bot: BotKeys) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    response = exchange(idp, sign(claims_for(idp, bot), other, kid="bot-es256"))
    assert_error(response, 400, "invalid_grant", "signature")


def test_unknown_kid(idp: DevIdP, bot: BotKeys) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    response = exchange(idp, sign(claims_for(idp, bot), other, kid="somebody-else"))
    assert_error(response, 400, "invalid_grant", "no trusted key")


def test_missing_kid(idp: DevIdP, bot: BotKeys) -> None:
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key, kid=None))
    assert_error(response, 400, "invalid_grant", "kid")


def test_hs256_is_refused(idp: DevIdP, bot: BotKeys) -> None:
    response = exchange(idp, sign(claims_for(idp, bot), CLIENT_SECRET * 2, alg="HS256"))
    assert_error(response, 400, "invalid_grant")


def test_wrong_issuer(idp: DevIdP, bot: BotKeys) -> None:
    response = exchange(idp, sign(claims_for(idp, bot, iss="https://evil.example"), bot.ec_key))
    assert_error(response, 400, "invalid_grant", '"iss"')


def test_wrong_audience_claim(idp: DevIdP, bot: BotKeys) -> None:
    response = exchange(idp, sign(claims_for(idp, bot, aud="https://other-idp.example"), bot.ec_key))
    assert_error(response, 400, "invalid_grant", '"aud"')


def test_expired_assertion(idp: DevIdP, bot: BotKeys) -> None:
    now = int(time.time())
    response = exchange(idp, sign(claims_for(idp, bot, iat=now - 100, exp=now - 10), bot.ec_key))
    assert_error(response, 400, "invalid_grant", "expired")


def test_assertion_living_longer_than_120_seconds(idp: DevIdP, bot: BotKeys) -> None:
    now = int(time.time())
    response = exchange(idp, sign(claims_for(idp, bot, iat=now, exp=now + 121), bot.ec_key))
    assert_error(response, 400, "invalid_grant", "120")


def test_assertion_issued_in_the_future(idp: DevIdP, bot: BotKeys) -> None:
    now = int(time.time())
    response = exchange(idp, sign(claims_for(idp, bot, iat=now + 60, exp=now + 120), bot.ec_key))
    assert_error(response, 400, "invalid_grant", "iat")


@pytest.mark.parametrize("claim", ["sub", "jti", "exp", "iat", "jit"])
def test_missing_claim(idp: DevIdP, bot: BotKeys, claim: str) -> None:
    claims = claims_for(idp, bot)
    del claims[claim]
    response = exchange(idp, sign(claims, bot.ec_key))
    assert_error(response, 400, "invalid_grant", claim)


@pytest.mark.parametrize("field", ["request_id", "resource", "scopes", "expires_at"])
def test_missing_jit_field(idp: DevIdP, bot: BotKeys, field: str) -> None:
    claims = claims_for(idp, bot)
    del claims["jit"][field]
    response = exchange(idp, sign(claims, bot.ec_key))
    assert_error(response, 400, "invalid_grant", f"jit.{field}")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("approvers", "U0APPROVER"),
        ("approvers", [1, 2]),
        ("claims", ["row_limit"]),
        ("claims", {"nested": {"a": 1}}),
        ("claims", {"list": [1]}),
    ],
    ids=["approvers-not-a-list", "approvers-not-strings", "claims-a-list", "claims-nested", "claims-list-value"],
)
def test_malformed_approval_context_is_refused(idp: DevIdP, bot: BotKeys, field: str, value: Any) -> None:
    response = exchange(idp, sign(claims_for(idp, bot, jit={field: value}), bot.ec_key))
    assert_error(response, 400, "invalid_grant", f"jit.{field}")


def test_the_approval_context_is_in_the_token_at_introspection(idp: DevIdP, bot: BotKeys) -> None:
    context = {"row_limit": 1000, "environment": "prod", "audited": True, "ratio": 0.5}
    token = exchange(idp, sign(claims_for(idp, bot, jit={"claims": context}), bot.ec_key)).json()["access_token"]
    info = introspect(idp, token)
    assert info["jit"] == {"request_id": "req-123", "approvers": ["U0APPROVER"], "claims": context}
    assert info["act"] == {"sub": CLIENT_ID}, "act is kept beside jit"


def test_jti_replay(idp: DevIdP, bot: BotKeys) -> None:
    assertion = sign(claims_for(idp, bot), bot.ec_key)
    assert exchange(idp, assertion).status_code == 200
    assert_error(exchange(idp, assertion), 400, "invalid_grant", "already been used")
    stats = idp.stats()
    assert (stats["exchanges"], stats["exchange_errors"]) == (1, 1)


def test_jti_is_remembered_across_restart(idp: DevIdP, bot: BotKeys) -> None:
    assertion = sign(claims_for(idp, bot), bot.ec_key)
    token = exchange(idp, assertion).json()["access_token"]
    port = idp.port
    idp.restart()
    assert idp.port == port
    assert introspect(idp, token)["active"] is True
    assert_error(exchange(idp, assertion), 400, "invalid_grant", "already been used")


# ---------------------------------------------------------------------------- audience and scope


def test_scope_not_allowed_for_the_resource(idp: DevIdP, bot: BotKeys) -> None:
    claims = claims_for(idp, bot, jit={"scopes": ["read", "admin"]})
    response = exchange(idp, sign(claims, bot.ec_key), scope="read admin")
    assert_error(response, 400, "invalid_scope", "audience")
    assert response.json()["scope"] == "admin"


def test_scope_not_approved_in_the_assertion(idp: DevIdP, bot: BotKeys) -> None:
    claims = claims_for(idp, bot, jit={"scopes": ["read"]})
    response = exchange(idp, sign(claims, bot.ec_key), scope="read write")
    assert_error(response, 400, "invalid_scope", "jit.scopes")
    assert response.json()["scope"] == "write"


def test_scope_of_another_resource(idp: DevIdP, bot: BotKeys) -> None:
    claims = claims_for(idp, bot, jit={"scopes": ["view"]})
    assert_error(exchange(idp, sign(claims, bot.ec_key), scope="view"), 400, "invalid_scope")
    response = exchange(
        idp, sign(claims_for(idp, bot, jit={"scopes": ["view"]}), bot.ec_key), audience=WIKI, scope="view"
    )
    assert response.status_code == 200, response.text
    assert introspect(idp, response.json()["access_token"])["aud"] == WIKI


def test_unknown_audience(idp: DevIdP, bot: BotKeys) -> None:
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key), audience="https://unknown.example")
    assert_error(response, 400, "invalid_target")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token"),
        ("scope", ""),
    ],
)
def test_bad_request_parameters(idp: DevIdP, bot: BotKeys, field: str, value: str) -> None:
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key), extra={field: value})
    assert_error(response, 400, "invalid_request", field)


# ---------------------------------------------------------------------------- client authentication


def test_wrong_client_secret(idp: DevIdP, bot: BotKeys) -> None:
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key), auth=(CLIENT_ID, "wrong"))
    assert_error(response, 401, "invalid_client")
    assert idp.stats()["exchange_errors"] == 1


def test_client_secret_post_is_accepted_too(idp: DevIdP, bot: BotKeys) -> None:
    creds = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key), auth=None, extra=creds)
    assert response.status_code == 200, response.text
    both = exchange(idp, sign(claims_for(idp, bot), bot.ec_key), extra=creds)
    assert_error(both, 400, "invalid_request", "one mechanism")


def test_other_client_cannot_revoke(idp: DevIdP, bot: BotKeys) -> None:
    token = exchange(idp, sign(claims_for(idp, bot), bot.ec_key)).json()["access_token"]
    response = httpx.post(discovery(idp)["revocation_endpoint"], data={"token": token}, auth=(CLIENT_ID, "x"))
    assert response.status_code == 401
    assert introspect(idp, token)["active"] is True


# ---------------------------------------------------------------------------- admin: faults


def test_fail_next_answers_the_injected_status_then_recovers(idp: DevIdP, bot: BotKeys) -> None:
    assertion = sign(claims_for(idp, bot), bot.ec_key)
    idp.fail_next(503, 2)
    for _ in range(2):
        assert_error(exchange(idp, assertion), 503, "temporarily_unavailable")
    # the failed calls never reached the grant: the same assertion is still unused
    response = exchange(idp, assertion)
    assert response.status_code == 200, response.text
    stats = idp.stats()
    assert (stats["exchanges"], stats["injected_failures"], stats["jwks_fetches"]) == (1, 2, 1)


def test_fail_next_on_revocation(idp: DevIdP, bot: BotKeys) -> None:
    token = exchange(idp, sign(claims_for(idp, bot), bot.ec_key)).json()["access_token"]
    idp.fail_next(500, 1, endpoint="revocation")
    assert_error(revoke(idp, token), 500, "server_error")
    assert introspect(idp, token)["active"] is True
    assert idp.revocation_count(token) == 0
    assert revoke(idp, token).status_code == 200
    assert introspect(idp, token)["active"] is False
    assert idp.revocation_count(token) == 1


def test_delay_holds_responses_until_cleared(idp: DevIdP, bot: BotKeys) -> None:
    idp.set_delay(2000)
    with pytest.raises(httpx.ReadTimeout):
        exchange(idp, sign(claims_for(idp, bot), bot.ec_key), timeout=0.3)
    idp.set_delay(0)
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key), timeout=10)
    assert response.status_code == 200, response.text


def test_admin_rejects_bad_input(idp: DevIdP) -> None:
    with pytest.raises(DevIdPError):
        idp.fail_next(200, 1)
    with pytest.raises(DevIdPError):
        idp.set_delay(-1)
    assert idp.last_assertion() is None


def test_admin_is_off_unless_enabled(bot: BotKeys) -> None:
    idp = make_idp(bot, admin=False)
    with idp:
        assert httpx.get(f"{idp.issuer}/__admin/stats").status_code == 404
    idp.close()


# ---------------------------------------------------------------------------- other configurations


def test_jwt_access_tokens(bot: BotKeys) -> None:
    idp = make_idp(bot, token_format="jwt")
    with idp:
        response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key), scope="write", lifetime=120)
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        assert response.json()["expires_in"] == 120

        header = jwt.get_unverified_header(token)
        assert header["typ"] == "at+jwt"
        assert header["alg"] == "RS256"
        jwk_client = jwt.PyJWKClient(discovery(idp)["jwks_uri"])
        claims = jwt.decode(
            token,
            jwk_client.get_signing_key_from_jwt(token).key,
            algorithms=["RS256"],
            audience=DB,
            issuer=idp.issuer,
        )
        assert claims["sub"] == "alice@example.com"
        assert claims["scope"] == "write"
        assert claims["act"] == {"sub": CLIENT_ID}
        assert claims["client_id"] == CLIENT_ID
        assert claims["exp"] - claims["iat"] == 120

        info = introspect(idp, token)
        assert info["active"] is True
        assert (info["sub"], info["scope"], info["aud"], info["act"]) == (
            "alice@example.com",
            "write",
            DB,
            {"sub": CLIENT_ID},
        )
        assert revoke(idp, token).status_code == 200
        assert introspect(idp, token) == {"active": False}
        assert idp.revocation_count(token) == 1
    idp.close()


def test_unreachable_trusted_jwks_is_temporarily_unavailable(bot: BotKeys) -> None:
    idp = make_idp(bot, trusted_jwks_url=f"http://127.0.0.1:{free_port()}/.well-known/jwks.json")
    with idp:
        response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key))
        assert_error(response, 503, "temporarily_unavailable", "JWKS")
    idp.close()


def test_missing_node_modules_message(bot: BotKeys, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import bot.demo.devidp as devidp_module

    monkeypatch.setattr(devidp_module, "DEVIDP_DIR", tmp_path)
    idp = make_idp(bot)
    with pytest.raises(DevIdPError, match="run npm ci in devidp/"):
        idp.start()
    idp.close()


def test_log_keeps_no_tokens(idp: DevIdP, bot: BotKeys) -> None:
    assertion = sign(claims_for(idp, bot), bot.ec_key)
    token = exchange(idp, assertion).json()["access_token"]
    exchange(idp, assertion)  # replay: logged as an error
    revoke(idp, token)
    log = idp.log_path.read_text()
    assert "invalid_grant" in log
    assert token not in log
    assert assertion not in log
    assert assertion.split(".")[1] not in log
    assert CLIENT_SECRET not in log


# ---------------------------------------------------------------------------- admin: hostile answers


def fresh_request_id() -> str:
    return f"req-{uuid.uuid4()}"


def exchange_form(idp: DevIdP, bot: BotKeys, request_id: str, *, scope: str = "read") -> dict[str, str]:
    assertion = sign(claims_for(idp, bot, jit={"request_id": request_id}), bot.ec_key)
    return {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": assertion,
        "subject_token_type": JWT_TYPE,
        "audience": DB,
        "scope": scope,
    }


def raw_post(url: str, form: dict[str, str]) -> socket.socket:
    """Send a client-authenticated form POST over a bare socket and return the socket, unread."""
    parts = urllib.parse.urlsplit(url)
    body = urllib.parse.urlencode(form).encode()
    credentials = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Basic {credentials}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(head.encode() + body)
    return sock


def recv_until(sock: socket.socket, deadline: float, *, limit: int | None = None) -> tuple[bytes, bool]:
    """Read until the monotonic ``deadline``, EOF or ``limit`` bytes: (data, eof)."""
    data = b""
    while (limit is None or len(data) < limit) and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def read_response(sock: socket.socket, timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    """One complete HTTP/1.1 answer with a Content-Length (the connection may stay open)."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\r\n\r\n" not in data:
        chunk, eof = recv_until(sock, deadline, limit=1)
        assert chunk or not eof, f"connection closed after {data!r}"
        assert chunk, f"no complete head within {timeout}s: {data!r}"
        data += chunk
    status, headers, body = parse_response(data)
    while len(body) < int(headers["content-length"]):
        chunk, _ = recv_until(sock, deadline, limit=int(headers["content-length"]) - len(body))
        assert chunk, f"body incomplete within {timeout}s"
        body += chunk
    return status, headers, body


def token_record(idp: DevIdP, token: str) -> dict[str, Any]:
    digest = hashlib.sha256(token.encode()).hexdigest()
    [record] = [t for t in idp.tokens() if t["sha256"] == digest]
    return record


def wait_for_tokens(idp: DevIdP, request_id: str, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not (found := [t for t in idp.tokens() if t["request_id"] == request_id]):
        assert time.monotonic() < deadline, f"no token issued for {request_id}"
        time.sleep(0.05)
    return found


def released_by_reset(idp: DevIdP) -> int:
    """Reset, and return how many held (stall/trickle/oversize) connections that closed."""
    return int(idp._admin("POST", "reset").json()["released"])


def test_fault_trickle_sends_even_the_status_line_slowly(idp: DevIdP, bot: BotKeys) -> None:
    request_id = fresh_request_id()
    assert idp.fault("token", "trickle", bytes_per_second=2) == {
        "endpoint": "token",
        "mode": "trickle",
        "count": 1,
        "bytes_per_second": 2,
    }
    sock = raw_post(idp.token_endpoint, exchange_form(idp, bot, request_id))
    try:
        first, _ = recv_until(sock, time.monotonic() + 10, limit=1)
        assert first == b"H", "the first byte comes at once, after the exchange"
        more, eof = recv_until(sock, time.monotonic() + 1.5)
        assert not eof
        assert 1 <= len(first + more) < 20
        assert b"HTTP/1.1 200 OK\r\n".startswith(first + more)
        # the exchange itself happened: the token is issued and live
        [record] = wait_for_tokens(idp, request_id)
        assert record["active"] is True
    finally:
        sock.close()
    assert idp.stats()["faults_applied"] == 1
    assert idp.stats()["faults"] == {"token": {"trickle": 1}}
    assert exchange(idp, sign(claims_for(idp, bot), bot.ec_key)).status_code == 200
    assert released_by_reset(idp) == 0, "the server let go of the connection when the client left"


def test_fault_trickle_delivers_the_complete_answer_at_the_rate(idp: DevIdP, bot: BotKeys) -> None:
    request_id = fresh_request_id()
    idp.fault("token", "trickle", bytes_per_second=600)
    sock = raw_post(idp.token_endpoint, exchange_form(idp, bot, request_id))
    try:
        first, _ = recv_until(sock, time.monotonic() + 10, limit=1)
        started = time.monotonic()
        rest, eof = recv_until(sock, started + 15)
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    data = first + rest
    assert eof, "the server closes the connection after the answer"
    assert elapsed >= 0.7 * (len(data) - 1) / 600, (elapsed, len(data))
    status, headers, body = parse_response(data)
    assert status == 200
    assert headers["connection"] == "close"
    assert headers["cache-control"] == "no-store"
    assert headers["content-type"].startswith("application/json")
    assert int(headers["content-length"]) == len(body)
    answer = json.loads(body)
    assert answer["token_type"] == "Bearer"
    assert token_record(idp, answer["access_token"])["request_id"] == request_id
    assert idp.introspect(answer["access_token"])["active"] is True


def test_fault_stall_holds_the_connection_until_the_client_leaves(idp: DevIdP, bot: BotKeys) -> None:
    request_id = fresh_request_id()
    idp.fault("token", "stall")
    sock = raw_post(idp.token_endpoint, exchange_form(idp, bot, request_id))
    try:
        data, eof = recv_until(sock, time.monotonic() + 1.0)
        assert (data, eof) == (b"", False)
        [record] = wait_for_tokens(idp, request_id)
        assert record["active"] is True
        data, eof = recv_until(sock, time.monotonic() + 0.5)
        assert (data, eof) == (b"", False)
    finally:
        sock.close()
    assert idp.stats()["faults"] == {"token": {"stall": 1}}
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key))
    assert response.status_code == 200, response.text
    assert released_by_reset(idp) == 0, "the server let go of the connection when the client left"


def test_fault_late_answers_in_full_after_the_delay(idp: DevIdP, bot: BotKeys) -> None:
    request_id = fresh_request_id()
    idp.fault("token", "late", ms=2000)
    sent = time.monotonic()
    sock = raw_post(idp.token_endpoint, exchange_form(idp, bot, request_id))
    try:
        data, eof = recv_until(sock, sent + 1.0)
        assert (data, eof) == (b"", False)
        status, headers, body = read_response(sock)
        assert time.monotonic() - sent >= 1.9
        assert status == 200
        assert token_record(idp, json.loads(body)["access_token"])["request_id"] == request_id
    finally:
        sock.close()
    # one request only: the next answer is prompt
    started = time.monotonic()
    assert exchange(idp, sign(claims_for(idp, bot), bot.ec_key)).status_code == 200
    assert time.monotonic() - started < 1.5


def test_fault_replace_after_a_real_revocation(idp: DevIdP, bot: BotKeys) -> None:
    token = exchange(idp, sign(claims_for(idp, bot), bot.ec_key)).json()["access_token"]
    idp.fault("revocation", "replace", status=400, body="[]")
    response = revoke(idp, token)
    assert response.status_code == 400
    assert response.text == "[]"
    assert response.headers["content-type"] == "application/json"
    # ...but the token was revoked for real
    assert idp.introspect(token) == {"active": False}
    assert token_record(idp, token)["active"] is False
    assert idp.revocation_count(token) == 1


def test_fault_replace_without_processing(idp: DevIdP, bot: BotKeys) -> None:
    token = exchange(idp, sign(claims_for(idp, bot), bot.ec_key)).json()["access_token"]
    idp.fault("revocation", "replace", status=200, body="", content_type="text/plain", process=False)
    response = revoke(idp, token)
    assert (response.status_code, response.text, response.headers["content-type"]) == (200, "", "text/plain")
    assert idp.introspect(token)["active"] is True
    assert idp.revocation_count(token) == 0
    assert revoke(idp, token).status_code == 200
    assert idp.introspect(token)["active"] is False


def test_fault_replace_on_jwks_and_discovery(idp: DevIdP) -> None:
    real_jwks = httpx.get(idp.jwks_uri).json()
    idp.fault("jwks", "replace", status=200, body='[{"kty":"RSA"}]', headers={"Cache-Control": "max-age=86400"})
    response = httpx.get(idp.jwks_uri)
    assert response.json() == [{"kty": "RSA"}]
    assert response.headers["cache-control"] == "max-age=86400"
    assert httpx.get(idp.jwks_uri).json() == real_jwks

    idp.fault("discovery", "replace", status=200, body='["issuer"]')
    assert httpx.get(idp.discovery_url).json() == ["issuer"]
    assert httpx.get(idp.discovery_url).json()["issuer"] == idp.issuer
    assert idp.stats()["faults"] == {"jwks": {"replace": 1}, "discovery": {"replace": 1}}
    assert idp.stats()["faults_applied"] == 2


def test_fault_rules_queue_in_order_after_fail_rules(idp: DevIdP) -> None:
    idp.fault("discovery", "replace", status=503, body="{}", count=2)
    idp.fault("discovery", "replace", status=200, body="[]")
    answers = [httpx.get(idp.discovery_url) for _ in range(3)]
    assert [(r.status_code, r.reason_phrase) for r in answers] == [(503, "Service Unavailable")] * 2 + [(200, "OK")]
    assert httpx.get(idp.discovery_url).json()["issuer"] == idp.issuer

    # a /__admin/fail rule goes first; the fault rule waits for the next request
    idp.fault("revocation", "replace", status=418, body="teapot", process=False)
    idp.fail_next(500, endpoint="revocation")
    assert revoke(idp, "whatever").status_code == 500
    assert revoke(idp, "whatever").status_code == 418
    assert revoke(idp, "whatever").status_code == 200
    assert (idp.stats()["injected_failures"], idp.stats()["faults_applied"]) == (1, 4)


def test_fault_oversize_token_answer(idp: DevIdP, bot: BotKeys) -> None:
    request_id = fresh_request_id()
    idp.fault("token", "oversize", bytes=5_000_000)
    form = exchange_form(idp, bot, request_id)
    with httpx.stream("POST", idp.token_endpoint, data=form, auth=(CLIENT_ID, CLIENT_SECRET), timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == "5000000"
        assert response.headers["content-type"] == "application/json"
        data = b""
        for chunk in response.iter_raw():
            data += chunk
            if len(data) >= 1_000_000:
                break
    assert len(data) >= 1_000_000
    assert data.startswith(b'{"access_token":"')
    head, padding_start, padding = data.partition(b',"padding":"')
    assert padding_start and set(padding) == {ord("x")}
    answer = json.loads(head + b"}")
    assert set(answer) == {"access_token", "token_type", "expires_in", "scope", "issued_token_type"}
    assert token_record(idp, answer["access_token"])["request_id"] == request_id
    assert idp.introspect(answer["access_token"])["active"] is True

    # a smaller one read whole: exactly that many bytes of valid JSON
    idp.fault("token", "oversize", bytes=300_000)
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key))
    assert len(response.content) == 300_000
    whole = response.json()
    assert set(whole["padding"]) == {"x"}
    assert idp.introspect(whole["access_token"])["active"] is True
    assert idp.stats()["faults"] == {"token": {"oversize": 2}}
    assert released_by_reset(idp) == 0, "the server stopped writing when the client left"


def test_fault_rejects_bad_rules(idp: DevIdP) -> None:
    bad_rules: list[Any] = [
        [],
        {"mode": "stall"},
        {"endpoint": "userinfo", "mode": "stall"},
        {"endpoint": "token", "mode": "explode"},
        {"endpoint": "token", "mode": "stall", "count": 0},
        {"endpoint": "token", "mode": "stall", "count": "2"},
        {"endpoint": "token", "mode": "trickle", "bytes_per_second": 0},
        {"endpoint": "token", "mode": "trickle", "bytes_per_sec": 5},
        {"endpoint": "token", "mode": "late"},
        {"endpoint": "token", "mode": "late", "ms": -1},
        {"endpoint": "token", "mode": "replace"},
        {"endpoint": "token", "mode": "replace", "status": 600},
        {"endpoint": "token", "mode": "replace", "status": 200, "body": {"not": "a string"}},
        {"endpoint": "token", "mode": "replace", "status": 200, "process": "yes"},
        {"endpoint": "token", "mode": "replace", "status": 200, "headers": {"X-A": 1}},
        {"endpoint": "token", "mode": "replace", "status": 200, "headers": {"X-A": "a\r\nb"}},
        {"endpoint": "token", "mode": "replace", "status": 200, "headers": {"Content-Length": "1"}},
        {"endpoint": "token", "mode": "oversize"},
        {"endpoint": "jwks", "mode": "oversize", "bytes": 1000},
    ]
    with httpx.Client() as client:
        for rule in bad_rules:
            response = client.post(f"{idp.issuer}/__admin/fault", json=rule)
            assert response.status_code == 400, rule
            assert response.json()["error"], rule
    with pytest.raises(DevIdPError, match="token endpoint only"):
        idp.fault("revocation", "oversize", bytes=10)
    assert idp.fault("jwks", "late", ms=0, count=3) == {"endpoint": "jwks", "mode": "late", "count": 3, "ms": 0}


def test_reset_clears_faults_and_releases_held_connections(idp: DevIdP, bot: BotKeys) -> None:
    idp.fault("token", "stall")
    idp.fault("token", "trickle", bytes_per_second=1)
    idp.fault("token", "replace", status=500, body="{}", count=5)
    stalled = raw_post(idp.token_endpoint, exchange_form(idp, bot, fresh_request_id()))
    trickling = raw_post(idp.token_endpoint, exchange_form(idp, bot, fresh_request_id()))
    try:
        first, _ = recv_until(trickling, time.monotonic() + 10, limit=1)
        assert first == b"H"
        assert recv_until(stalled, time.monotonic() + 0.3) == (b"", False)
        assert released_by_reset(idp) == 2
        assert recv_until(stalled, time.monotonic() + 5) == (b"", True)
        rest, eof = recv_until(trickling, time.monotonic() + 5)
        assert eof and len(rest) < 10
    finally:
        stalled.close()
        trickling.close()
    assert idp.stats()["faults_applied"] == 0
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key))
    assert response.status_code == 200, response.text


def test_faults_do_not_survive_a_restart(idp: DevIdP, bot: BotKeys) -> None:
    idp.fault("token", "replace", status=500, body="{}", process=False)
    idp.restart()
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key))
    assert response.status_code == 200, response.text


def test_fail_next_with_retry_after_and_a_raw_body(idp: DevIdP, bot: BotKeys) -> None:
    idp.fail_next(429, retry_after=30)
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key))
    assert_error(response, 429, "slow_down")
    assert response.headers["retry-after"] == "30"

    idp.fail_next(503, endpoint="revocation", body="<html>down for maintenance</html>", content_type="text/html")
    response = revoke(idp, "whatever")
    assert (response.status_code, response.text) == (503, "<html>down for maintenance</html>")
    assert response.headers["content-type"] == "text/html"
    assert "retry-after" not in response.headers

    idp.fail_next(400, body="[]")
    response = exchange(idp, sign(claims_for(idp, bot), bot.ec_key))
    assert (response.status_code, response.text, response.headers["content-type"]) == (400, "[]", "application/json")

    for bad in ({"retry_after": "30"}, {"retry_after": -1}, {"body": 5}, {"content_type": ""}):
        response = httpx.post(f"{idp.issuer}/__admin/fail", json={"status": 503, **bad})
        assert response.status_code == 400, bad
    assert idp.stats()["injected_failures"] == 3


def test_admin_tokens_lists_every_exchanged_token_without_values(idp: DevIdP, bot: BotKeys) -> None:
    first, second, brief = fresh_request_id(), fresh_request_id(), fresh_request_id()
    kept = exchange(idp, sign(claims_for(idp, bot, jit={"request_id": first}), bot.ec_key), scope="read write")
    revoked = exchange(idp, sign(claims_for(idp, bot, jit={"request_id": second}), bot.ec_key))
    short = exchange(idp, sign(claims_for(idp, bot, jit={"request_id": brief}), bot.ec_key), lifetime=1)
    kept_token, revoked_token, short_token = (r.json()["access_token"] for r in (kept, revoked, short))
    assert revoke(idp, revoked_token).status_code == 200
    idp.misbehave_next(ignore_revocations=1)
    assert revoke(idp, kept_token).status_code == 200  # ignored: still active

    raw = httpx.get(f"{idp.issuer}/__admin/tokens")
    assert raw.status_code == 200
    for token in (kept_token, revoked_token, short_token):
        assert token not in raw.text
    record = token_record(idp, kept_token)
    assert set(record) == {"sha256", "active", "exp", "scope", "audience", "sub", "request_id"}
    assert record["sha256"] == hashlib.sha256(kept_token.encode()).hexdigest()
    assert record["active"] is True
    assert (record["scope"], record["audience"], record["sub"], record["request_id"]) == (
        "read write",
        DB,
        "alice@example.com",
        first,
    )
    assert record["exp"] == idp.introspect(kept_token)["exp"]
    assert token_record(idp, revoked_token)["active"] is False
    assert [t["request_id"] for t in idp.active_tokens(first)] == [first]
    assert idp.active_tokens(second) == []
    assert first in {t["request_id"] for t in idp.active_tokens()}

    time.sleep(2.1)  # the one-second token expires
    assert idp.introspect(short_token) == {"active": False}
    assert token_record(idp, short_token)["active"] is False

    # kept across reset and restart
    before = idp.tokens()
    idp.reset()
    assert idp.tokens() == before
    idp.restart()
    assert idp.tokens() == before
    assert [t["request_id"] for t in idp.active_tokens(first)] == [first]


def test_introspect_sends_form_urlencoded_basic_credentials(bot: BotKeys) -> None:
    idp = make_idp(bot, client_id="jit bot:1", client_secret="s%3cr+t:&=")
    with idp:
        assertion = sign(claims_for(idp, bot), bot.ec_key)
        credentials = {"client_id": idp.client_id, "client_secret": idp.client_secret}
        token = exchange(idp, assertion, auth=None, extra=credentials).json()["access_token"]
        assert idp.introspect(token)["active"] is True
        idp.client_secret = "wrong"
        with pytest.raises(DevIdPError, match="401"):
            idp.introspect(token)
    idp.close()


def jws_header(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return result


def test_odd_kid_jwt_access_token_is_live_and_revocable(bot: BotKeys) -> None:
    idp = make_idp(bot, token_format="jwt")
    with idp:
        request_id = fresh_request_id()
        idp.misbehave_next(odd_kid=True)
        response = exchange(idp, sign(claims_for(idp, bot, jit={"request_id": request_id}), bot.ec_key))
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        header = jws_header(token)
        assert header == {"alg": "RS256", "typ": "at+jwt", "kid": 123}
        assert type(header["kid"]) is int
        # signed by the IdP's own RSA key
        [rsa_jwk] = [k for k in httpx.get(idp.jwks_uri).json()["keys"] if k["kty"] == "RSA"]
        signing_input, _, signature = token.rpartition(".")
        assert RSAAlgorithm(RSAAlgorithm.SHA256).verify(
            signing_input.encode(),
            RSAAlgorithm.from_jwk(json.dumps(rsa_jwk)),
            base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
        )

        info = idp.introspect(token)
        assert (info["active"], info["sub"], info["aud"], info["scope"]) == (True, "alice@example.com", DB, "read")
        assert token_record(idp, token) | {"exp": 0} == {
            "sha256": hashlib.sha256(token.encode()).hexdigest(),
            "active": True,
            "exp": 0,
            "scope": "read",
            "audience": DB,
            "sub": "alice@example.com",
            "request_id": request_id,
        }
        assert token_record(idp, token)["exp"] == info["exp"]
        assert revoke(idp, token).status_code == 200
        assert idp.introspect(token) == {"active": False}
        assert token_record(idp, token)["active"] is False
        assert idp.revocation_count(token) == 1

        # one exchange only
        again = exchange(idp, sign(claims_for(idp, bot), bot.ec_key)).json()["access_token"]
        assert jws_header(again)["kid"] == "devidp-rs256"
        assert token_record(idp, again)["active"] is True
        # a token signed with a numeric kid by anyone else is not live
        forged = jwt.encode(
            jwt.decode(again, options={"verify_signature": False}),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
            headers={"typ": "at+jwt", "kid": "x"},
        )
        assert idp.introspect(forged.replace(forged.split(".")[0], token.split(".")[0], 1)) == {"active": False}
    idp.close()


def test_odd_kid_has_no_effect_on_opaque_tokens(idp: DevIdP, bot: BotKeys) -> None:
    idp.misbehave_next(odd_kid=True)
    token = exchange(idp, sign(claims_for(idp, bot), bot.ec_key)).json()["access_token"]
    assert "." not in token
    assert idp.introspect(token)["active"] is True
    with pytest.raises(DevIdPError):
        idp._admin("POST", "misbehave", {"odd_kid": "yes"})
