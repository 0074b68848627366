"""The IdP call deadline holds where the socket timeouts cannot reach: a resolver that hangs, and a
wait behind another thread's slow call. And private_key_jwt: what the client sends in place of a secret."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import urllib.parse
from typing import Any

import httpx
import jwt
import pytest

from bot.bounded_http import CallBudget, budgeted_client
from bot.idp.errors import IdPError, waiting_within


def test_a_hanging_name_lookup_ends_at_the_calls_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    released = threading.Event()

    def hanging_getaddrinfo(*_args: Any, **_kwargs: Any) -> Any:
        # A resolver that answers long after anyone asked (getaddrinfo itself takes no timeout).
        released.wait(30)
        raise socket.gaierror("too late")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    budget = CallBudget.starting_now(0.3)
    try:
        with (
            budgeted_client(budget, ssl_context=httpx.create_ssl_context(), url="https://idp.example") as http,
            pytest.raises(httpx.ConnectTimeout, match="looking up idp.example"),
        ):
            http.get("https://idp.example/.well-known/openid-configuration")
    finally:
        released.set()


def test_a_name_that_does_not_resolve_is_a_connect_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_getaddrinfo(*_args: Any, **_kwargs: Any) -> Any:
        raise socket.gaierror("Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing_getaddrinfo)
    with (
        budgeted_client(
            CallBudget.starting_now(5), ssl_context=httpx.create_ssl_context(), url="https://x.invalid"
        ) as http,
        pytest.raises(httpx.ConnectError, match=r"could not resolve x\.invalid"),
    ):
        http.get("https://x.invalid/")


def test_waiting_behind_another_threads_call_counts_against_the_deadline() -> None:
    lock = threading.Lock()
    holding = threading.Event()
    done = threading.Event()

    def slow_call() -> None:
        with lock:
            holding.set()
            done.wait(30)

    other = threading.Thread(target=slow_call)
    other.start()
    try:
        assert holding.wait(5)
        with pytest.raises(IdPError) as raised, waiting_within(lock, CallBudget.starting_now(0.2), during="JWKS"):
            pytest.fail("the lock was taken although another call held it")
        assert raised.value.code == "idp_timeout" and raised.value.transient
        assert "JWKS" in raised.value.description
    finally:
        done.set()
        other.join()
    with waiting_within(lock, CallBudget.starting_now(0.2), during="JWKS"):
        assert lock.locked(), "free again, the lock is taken and held inside the block"
    assert not lock.locked()


class _RecordingIdP(http.server.ThreadingHTTPServer):
    """Discovery and an introspection endpoint on loopback that record the forms they are sent."""

    forms: list[dict[str, list[str]]]


class _IdPHandler(http.server.BaseHTTPRequestHandler):
    server: _RecordingIdP

    def log_message(self, *_args: Any) -> None:
        pass

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._json({"issuer": issuer, "token_endpoint": f"{issuer}/token", "introspection_endpoint": f"{issuer}/in"})

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.forms.append(urllib.parse.parse_qs(self.rfile.read(length).decode()))
        self._json({"active": False})


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_private_key_jwt_sends_a_client_assertion_signed_with_the_signing_key(key_type: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from bot.config import ClientAuth
    from bot.idp.client import CLIENT_ASSERTION_TYPE, IdPClient, IdPConfig
    from bot.idp.keys import generate_signing_key, signing_key_from_pem
    from bot.idp.keys import serialization as pem

    key = generate_signing_key()
    if key_type == "rsa":  # the bot's default key is EC P-256; RSA keys are supported too
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key = signing_key_from_pem(private.private_bytes(pem.Encoding.PEM, pem.PrivateFormat.PKCS8, pem.NoEncryption()))
    server = _RecordingIdP(("127.0.0.1", 0), _IdPHandler)
    server.forms = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    issuer = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        idp = IdPClient(
            IdPConfig(
                issuer=issuer,
                client_id="jit-bot",
                client_secret=None,
                client_auth=ClientAuth.PRIVATE_KEY_JWT,
                lifetime_param=None,
            ),
            signing_key=key,
        )
        assert idp.introspect("some-token") == {"active": False}
    finally:
        server.shutdown()
        server.server_close()
    (form,) = server.forms
    assert form["client_assertion_type"] == [CLIENT_ASSERTION_TYPE]
    (assertion,) = form["client_assertion"]
    assert jwt.get_unverified_header(assertion)["kid"] == key.kid
    claims = jwt.decode(
        assertion, key.private_key.public_key(), algorithms=[key.alg], audience=f"{issuer}/token", issuer="jit-bot"
    )
    assert claims["sub"] == "jit-bot" and claims["exp"] - claims["iat"] <= 60 and claims["jti"]
