"""Run the development IdP (devidp/server.js, oidc-provider) as a subprocess for tests.

    with DevIdP(client_id="jit-bot", client_secret="s3cret", trusted_issuer=bot_url,
                trusted_jwks_url=f"{bot_url}/.well-known/jwks.json",
                resources={"https://db.internal.example": ["read", "write"]}) as idp:
        idp.issuer, idp.stats(), idp.fail_next(503, 1), ...

Faults: ``fail_next`` (an error answer, the request not handled), ``fault`` (the answer of a
request handled for real arrives slowly, late, never, replaced or oversized), ``misbehave_next``
(wrong claims in an answer, revocations ignored, a JSON-number kid), ``set_delay``. End states:
``tokens()`` / ``active_tokens()`` (every exchanged token by sha256, never its value) and
``introspect()``, which talks to the IdP directly, not through bot code.

The IdP keeps its signing keys and its state (tokens, seen jtis, stats) in a tmp dir, so
``restart()`` brings back the same issuer, keys and tokens; delay, failure, fault and misbehave
injections do not survive a restart. ``reset()`` clears those too but keeps the tokens.
The subprocess's stdout and stderr go to ``log_path`` in that dir.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

# The clone's devidp/ folder (the demo and the tests run from a clone, where npm ci installed it).
DEVIDP_DIR = Path(__file__).resolve().parents[2] / "devidp"
READY_PREFIX = "devidp listening on "


class DevIdPError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _private_jwks() -> dict[str, Any]:
    rsa_jwk = RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), as_dict=True)
    ec_jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    keys = []
    for jwk, alg in ((rsa_jwk, "RS256"), (ec_jwk, "ES256")):
        jwk.pop("key_ops", None)  # pyjwt says ["sign"]; published as-is it would forbid verifying
        keys.append({**jwk, "alg": alg, "use": "sig", "kid": f"devidp-{alg.lower()}"})
    return {"keys": keys}


class DevIdP:
    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        trusted_issuer: str,
        trusted_jwks_url: str | None = None,
        resources: dict[str, list[str]],
        lifetime_param: str = "requested_lifetime",
        token_format: str = "opaque",
        default_ttl: int = 3600,
        jwks_cache_seconds: int = 0,
        port: int | None = None,
        admin: bool = True,
        node: str = "node",
        startup_timeout: float = 10.0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.trusted_issuer = trusted_issuer
        self.trusted_jwks_url = trusted_jwks_url or f"{trusted_issuer.rstrip('/')}/.well-known/jwks.json"
        self.resources = resources
        self.lifetime_param = lifetime_param
        self.token_format = token_format
        self.default_ttl = default_ttl
        self.jwks_cache_seconds = jwks_cache_seconds
        self._port = port or free_port()
        self.admin = admin
        self.node = node
        self.startup_timeout = startup_timeout
        self._tmp = Path(tempfile.mkdtemp(prefix="devidp-"))
        self.log_path = self._tmp / "devidp.log"
        self.state_path = self._tmp / "state.json"
        self._jwks = _private_jwks()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    # The server's fixed routes, so that a discovery fault does not get in the way.
    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def revocation_endpoint(self) -> str:
        return f"{self.issuer}/token/revocation"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer}/token/introspection"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DEVIDP_PORT=str(self._port),
            DEVIDP_CLIENT_ID=self.client_id,
            DEVIDP_CLIENT_SECRET=self.client_secret,
            DEVIDP_TRUSTED_ISSUER=self.trusted_issuer,
            DEVIDP_TRUSTED_JWKS_URL=self.trusted_jwks_url,
            DEVIDP_RESOURCES=json.dumps(self.resources),
            DEVIDP_LIFETIME_PARAM=self.lifetime_param,
            DEVIDP_DEFAULT_TTL=str(self.default_ttl),
            DEVIDP_TOKEN_FORMAT=self.token_format,
            DEVIDP_JWKS_CACHE_SECONDS=str(self.jwks_cache_seconds),
            DEVIDP_JWKS=json.dumps(self._jwks),
            DEVIDP_STATE_FILE=str(self.state_path),
            DEVIDP_ADMIN="1" if self.admin else "0",
        )
        return env

    def start(self) -> DevIdP:
        if self.running:
            return self
        if not (DEVIDP_DIR / "node_modules" / "oidc-provider").is_dir():
            raise DevIdPError(f"{DEVIDP_DIR}/node_modules is missing: run npm ci in devidp/")
        if shutil.which(self.node) is None:
            raise DevIdPError(f"{self.node!r} not found on PATH; the dev IdP needs Node.js >= 20.19")
        self._log = open(self.log_path, "ab")  # closed in stop()
        offset = self._log.tell()
        self._proc = subprocess.Popen(
            [self.node, str(DEVIDP_DIR / "server.js")],
            cwd=DEVIDP_DIR,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        try:
            self._wait_ready(offset)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, offset: int) -> None:
        assert self._proc is not None
        ready = f"{READY_PREFIX}{self.issuer}\n".encode()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                if ready in log.read():
                    break
            if self._proc.poll() is not None:
                raise DevIdPError(f"devidp exited with {self._proc.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise DevIdPError(f"devidp did not become ready in {self.startup_timeout}s: {self._log_tail()}")
            time.sleep(0.01)
        response = httpx.get(self.discovery_url, timeout=5)
        if response.status_code != 200 or response.json().get("issuer") != self.issuer:
            raise DevIdPError(f"devidp discovery answered {response.status_code}: {response.text[:200]}")

    def _log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> DevIdP:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the tmp dir (log included)."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> DevIdP:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- admin -----------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        if not self.admin:
            raise DevIdPError("admin endpoints are disabled (admin=False)")
        response = httpx.request(method, f"{self.issuer}/__admin/{path}", json=body, timeout=10)
        if response.status_code not in (200, 404) or (response.status_code == 404 and path != "last_assertion"):
            raise DevIdPError(f"devidp admin {method} {path} answered {response.status_code}: {response.text}")
        return response

    def stats(self) -> dict[str, Any]:
        """{exchanges, exchange_errors, revocations: {sha256 hex: n}, introspections, jwks_fetches,
        injected_failures, faults_applied, faults: {endpoint: {mode: n}}}, plus ignored_revocations
        once a revocation was ignored."""
        result: dict[str, Any] = self._admin("GET", "stats").json()
        return result

    def revocation_count(self, token: str) -> int:
        return int(self.stats()["revocations"].get(hashlib.sha256(token.encode()).hexdigest(), 0))

    def set_delay(self, ms: int) -> None:
        """Hold every token/revocation/introspection response for ``ms`` after handling it."""
        self._admin("POST", "delay", {"ms": ms})

    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        endpoint: str = "token",
        error: str | None = None,
        retry_after: int | None = None,
        body: str | None = None,
        content_type: str | None = None,
    ) -> None:
        """Answer the next ``count`` calls to ``endpoint`` (token|revocation|introspection) with ``status``,
        unhandled. ``retry_after`` (s) adds a Retry-After header; ``body`` replaces the JSON error body
        (sent as ``content_type``, default application/json)."""
        request: dict[str, Any] = {"status": status, "count": count, "endpoint": endpoint}
        optional = {"error": error, "retry_after": retry_after, "body": body, "content_type": content_type}
        request.update({name: value for name, value in optional.items() if value is not None})
        self._admin("POST", "fail", request)

    def fault(self, endpoint: str, mode: str, *, count: int = 1, **params: Any) -> dict[str, Any]:
        """Deliver the answers of the next ``count`` requests to ``endpoint`` (token|revocation|
        introspection|jwks|discovery) the ``mode`` way (trickle|stall|late|replace|gzip|status|oversize; the
        parameters are in devidp/README.md). Returns the rule as queued, defaults filled in."""
        result: dict[str, Any] = self._admin(
            "POST", "fault", {"endpoint": endpoint, "mode": mode, "count": count, **params}
        ).json()
        return result

    def misbehave_next(
        self,
        *,
        extra_scope: str | None = None,
        expires_in: int | None = None,
        ignore_revocations: int | None = None,
        odd_kid: bool | None = None,
        jwt_claims: dict[str, Any] | None = None,
    ) -> None:
        """Make the next exchange claim a wider scope and/or a longer expires_in than it should, and/or
        (jwt format only) sign its token with the JWS header kid the JSON number 123 and/or with
        ``jwt_claims`` merged into its payload; and/or make the next N revocations answer 200
        without revoking."""
        body: dict[str, Any] = {}
        if ignore_revocations is not None:
            body["ignore_revocations"] = ignore_revocations
        if extra_scope is not None:
            body["extra_scope"] = extra_scope
        if expires_in is not None:
            body["expires_in"] = expires_in
        if odd_kid is not None:
            body["odd_kid"] = odd_kid
        if jwt_claims is not None:
            body["jwt_claims"] = jwt_claims
        self._admin("POST", "misbehave", body)

    def last_assertion(self) -> dict[str, Any] | None:
        response = self._admin("GET", "last_assertion")
        if response.status_code == 404:
            return None
        result: dict[str, Any] = response.json()
        return result

    def tokens(self) -> list[dict[str, Any]]:
        """Every token issued by exchange since the first start, oldest first: {sha256, active, exp,
        scope, audience, sub, request_id}; ``active`` is what introspection would answer now."""
        result: list[dict[str, Any]] = self._admin("GET", "tokens").json()
        return result

    def active_tokens(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The active ones of ``tokens()``, only those minted for ``request_id`` if given."""
        return [t for t in self.tokens() if t["active"] and (request_id is None or t["request_id"] == request_id)]

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 introspection of ``token`` at the IdP, as the client (HTTP Basic, RFC 6749 2.3.1)."""
        credentials = f"{urllib.parse.quote(self.client_id, safe='')}:{urllib.parse.quote(self.client_secret, safe='')}"
        response = httpx.post(
            self.introspection_endpoint,
            data={"token": token},
            headers={"Authorization": f"Basic {base64.b64encode(credentials.encode()).decode()}"},
            timeout=10,
        )
        if response.status_code != 200:
            raise DevIdPError(f"devidp introspection answered {response.status_code}: {response.text[:200]}")
        result: dict[str, Any] = response.json()
        return result

    def reset(self) -> None:
        """Zero the stats, forget the last assertion, clear delay, failure, fault and misbehave
        injections, and close the connections of stall, trickle and oversize answers still in progress.
        Keeps ``tokens()``."""
        self._admin("POST", "reset")
