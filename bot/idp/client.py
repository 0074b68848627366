"""Token exchange (RFC 8693), revocation (RFC 7009) and introspection (RFC 7662) at the IdP.

authlib authenticates the client (``client_secret_basic``, ``client_secret_post``, and
``private_key_jwt`` with an assertion signed here); sending the request and reading the answer is
done here, because an IdP's answer is untrusted input: every call has a total deadline and a size
cap (``bot.bounded_http``), and every field is type-checked before use. An exchange answer that
carries an access token always yields that token, however odd the rest of it, so the caller can
hold it and revoke it.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx
import jwt
from authlib.common.urls import add_params_to_qs

from bot.bounded_http import CallBudget, budgeted_transport
from bot.config import ClientAuth
from bot.domain.text import one_line
from bot.idp.discovery import Discovery, ProviderMetadata
from bot.idp.errors import IdPError, idp_error_for, retry_after_seconds, waiting_within
from bot.idp.keys import SigningKey

with warnings.catch_warnings():
    # authlib prefers the httpx2 fork when installed and warns when it falls back to httpx, which we use.
    # Its deprecate module adds an "always" filter when first imported: imported first, ours wins.
    import authlib.deprecate  # noqa: F401

    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import OAuth2Client

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# JWT access tokens are verified only with asymmetric algorithms; "none" and HMAC are refused.
_JWT_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})


@dataclass(frozen=True)
class IdPConfig:
    issuer: str
    client_id: str
    client_secret: str | None
    client_auth: ClientAuth
    lifetime_param: str | None
    # The total deadline of one IdP call (connect, TLS, headers, body), discovery included.
    timeout: float = 5.0


@dataclass(frozen=True)
class ExchangedToken:
    access_token: str = field(repr=False)
    token_type: str
    expires_in: int | None
    scope: tuple[str, ...] | None
    issued_token_type: str | None
    # Set when the answer carried a token but something else in it was malformed: the token is
    # held (and then revoked), never handed out.
    anomaly: str | None = None


def _basic_auth_rfc6749(client: Any, method: Any, uri: Any, headers: Any, body: Any) -> tuple[Any, Any, Any]:  # noqa: ARG001
    """RFC 6749 section 2.3.1: id and secret are form-urlencoded before Basic encoding.

    authlib sends them raw, which strict IdPs (oidc-provider among them) decode wrongly as soon as a
    secret holds characters such as ``+`` or ``%``.
    """
    text = f"{quote(client.client_id, safe='')}:{quote(client.client_secret, safe='')}"
    headers["Authorization"] = "Basic " + base64.b64encode(text.encode()).decode()
    return uri, headers, body


def _private_key_jwt(key: SigningKey, token_endpoint: str) -> Callable[..., tuple[Any, Any, Any]]:
    """RFC 7523 section 2.2 client authentication, signed with pyjwt.

    authlib's own PrivateKeyJWT reads a PEM as an RSA key only (authlib 1.9), so the bot's default
    EC P-256 key failed with a traceback before anything was sent.
    """

    def sign(client: Any, method: Any, uri: Any, headers: Any, body: Any) -> tuple[Any, Any, Any]:  # noqa: ARG001
        now = int(time.time())
        claims = {
            "iss": client.client_id,
            "sub": client.client_id,
            # RFC 7523 section 3: the client assertion's aud is the token endpoint, for every endpoint.
            "aud": token_endpoint,
            "iat": now,
            "exp": now + 60,
            "jti": secrets.token_urlsafe(18),
        }
        assertion = jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid})
        fields = [("client_assertion_type", CLIENT_ASSERTION_TYPE), ("client_assertion", assertion)]
        return uri, headers, add_params_to_qs(body or "", fields)

    return sign


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _oauth_error(response: httpx.Response, default: str, *, during: str) -> IdPError:
    """An IdP's refusal. 429 and 5xx are transient (and may say when to come back)."""
    status = response.status_code
    if status >= 500 or status == 429:
        return IdPError(
            "temporarily_unavailable",
            f"{during}: the IdP answered HTTP {status}",
            transient=True,
            status=status,
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
        )
    body = _json(response)
    code = body.get("error") if isinstance(body, dict) else None
    description = body.get("error_description") if isinstance(body, dict) else None
    return IdPError(
        code if isinstance(code, str) and code else default,
        description if isinstance(description, str) else f"{during} answered HTTP {status}",
        transient=False,
        status=status,
    )


class IdPClient:
    def __init__(self, config: IdPConfig, *, signing_key: SigningKey) -> None:
        self._config = config
        self._signing_key = signing_key
        # Built once: a new context otherwise loads the CA bundle again, ~20 ms of CPU per IdP call.
        self._tls = httpx.create_ssl_context()
        self.discovery = Discovery(config.issuer, timeout=config.timeout, ssl_context=self._tls)
        self._jwks_lock = threading.Lock()
        self._jwks: jwt.PyJWKSet | None = None

    @property
    def issuer(self) -> str:
        return self._config.issuer

    @property
    def timeout(self) -> float:
        """The total deadline of one call, in seconds."""
        return self._config.timeout

    def budget(self, timeout: float | None = None) -> CallBudget:
        """A budget for one call: ``timeout`` seconds, never more than the configured deadline."""
        seconds = self._config.timeout if timeout is None else min(timeout, self._config.timeout)
        return CallBudget.starting_now(max(seconds, 0.0))

    def metadata(self, budget: CallBudget | None = None) -> ProviderMetadata:
        return self.discovery.get(budget)

    @contextmanager
    def _oauth(self, budget: CallBudget, url: str, *, token_endpoint: str, during: str) -> Iterator[Any]:
        config = self._config
        client = OAuth2Client(
            client_id=config.client_id,
            client_secret=config.client_secret,
            token_endpoint_auth_method=config.client_auth.value,
            transport=budgeted_transport(budget, ssl_context=self._tls, url=url),
            timeout=httpx.Timeout(max(budget.remaining(), 0.001)),
            trust_env=False,
        )
        client.register_client_auth_method(("client_secret_basic", _basic_auth_rfc6749))
        if config.client_auth is ClientAuth.PRIVATE_KEY_JWT:
            client.register_client_auth_method(("private_key_jwt", _private_key_jwt(self._signing_key, token_endpoint)))
        try:
            yield client
        except httpx.HTTPError as exc:
            if not isinstance(exc, httpx.TimeoutException) and not budget.too_large and budget.encoded is None:
                self.discovery.invalidate()  # perhaps the endpoint moved
            raise idp_error_for(exc, budget, during=during) from None
        finally:
            client.close()

    def _token_call(
        self, token: str, endpoint: Literal["revocation", "introspection"], timeout: float | None
    ) -> httpx.Response:
        """POST a token to the revocation or introspection endpoint (RFC 7009 / RFC 7662 share the form)."""
        budget = self.budget(timeout)
        metadata = self.metadata(budget)
        url = metadata.revocation_endpoint if endpoint == "revocation" else metadata.introspection_endpoint
        if not url:
            raise IdPError(f"{endpoint}_unsupported", f"the IdP publishes no {endpoint}_endpoint", transient=False)
        return self._post(budget, metadata, url, {"token": token, "token_type_hint": "access_token"}, during=endpoint)

    def _post(
        self, budget: CallBudget, metadata: ProviderMetadata, url: str, form: dict[str, str], *, during: str
    ) -> httpx.Response:
        with self._oauth(budget, url, token_endpoint=metadata.token_endpoint, during=during) as client:
            auth = client.client_auth(self._config.client_auth.value)
            response: httpx.Response = client.request(
                "POST", url, data=form, auth=auth, withhold_token=True, headers={"Accept": "application/json"}
            )
            return response

    def exchange(
        self,
        *,
        assertion: str,
        audience: str,
        scopes: tuple[str, ...],
        lifetime_seconds: int,
        timeout: float | None = None,
    ) -> ExchangedToken:
        budget = self.budget(timeout)
        metadata = self.metadata(budget)
        form: dict[str, str] = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": assertion,
            "subject_token_type": JWT_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "audience": audience,
            "scope": " ".join(scopes),
        }
        if self._config.lifetime_param:
            form[self._config.lifetime_param] = str(lifetime_seconds)
        response = self._post(budget, metadata, metadata.token_endpoint, form, during="token exchange")
        if response.status_code != 200:
            # RFC 6749 section 5.1 says 200, but a token in any other answer was still issued:
            # it is held (and, being an anomaly, refused and revoked) rather than dropped.
            held = _token_in_odd_answer(response)
            if held is not None:
                return held
            raise _oauth_error(response, "token_request_failed", during="token exchange")
        return parse_exchange(_json(response))

    def revoke(self, token: str, *, timeout: float | None = None) -> None:
        response = self._token_call(token, "revocation", timeout)
        # RFC 7009 section 2.2: 200 for success, including tokens that were already invalid.
        if response.status_code != 200:
            raise _oauth_error(response, "revocation_failed", during="revocation")

    def introspect(self, token: str, *, timeout: float | None = None) -> dict[str, Any]:
        response = self._token_call(token, "introspection", timeout)
        if response.status_code != 200:
            raise _oauth_error(response, "introspection_failed", during="introspection")
        answer = _json(response)
        # RFC 7662 section 2.2: "active" is REQUIRED and a boolean. Anything else proves nothing.
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            raise IdPError("invalid_response", 'introspection did not answer {"active": …}', transient=True)
        return answer

    @staticmethod
    def is_jwt(token: str) -> bool:
        """Whether the token looks like a JWT (and so must be verified against the IdP's JWKS).

        A JWT-shaped token with a header RFC 7515 does not allow still counts: verifying it fails.
        """
        try:
            jwt.get_unverified_header(token)
        except jwt.DecodeError:
            return False
        except jwt.PyJWTError:
            return True
        return True

    def verify_jwt_access_token(
        self, token: str, *, audience: str, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """Verify a JWT access token against the IdP's JWKS; None when the token is not a JWT.

        Raises IdPError(invalid_token) when it is a JWT that does not verify, whatever is odd about
        it (a header that is not what RFC 7515 allows, a key set that is not one, …).
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            return None  # opaque token: introspection is the IdP's word on it
        except jwt.PyJWTError as exc:
            raise IdPError("invalid_token", f"the access token's header is malformed: {exc}", transient=False) from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in _JWT_ALGORITHMS:
            raise IdPError(
                "invalid_token", "the access token is not signed with an asymmetric algorithm", transient=False
            )
        if kid is not None and not isinstance(kid, str):
            raise IdPError("invalid_token", "the access token's kid is not a string", transient=False)
        budget = self.budget(timeout)
        metadata = self.metadata(budget)
        if not metadata.jwks_uri:
            raise IdPError("invalid_token", "a JWT access token but the IdP publishes no jwks_uri", transient=False)
        key = self._signing_key_for(kid, metadata.jwks_uri, budget)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audience,
                issuer=metadata.issuer,
                options={"require": ["exp", "iat"]},
                leeway=5,
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise IdPError(
                "invalid_token", f"the access token did not verify: {type(exc).__name__}", transient=False
            ) from None
        return claims

    def _signing_key_for(self, kid: str | None, jwks_uri: str, budget: CallBudget) -> Any:
        for refresh in (False, True):
            with waiting_within(self._jwks_lock, budget, during="JWKS"):
                if self._jwks is None or refresh:
                    self._jwks = self._fetch_jwks(jwks_uri, budget)
                jwks = self._jwks
            for key in jwks.keys:
                if kid is None or key.key_id == kid:
                    return key.key
        raise IdPError("invalid_token", "the access token's kid is not in the IdP's JWKS", transient=False)

    def _fetch_jwks(self, jwks_uri: str, budget: CallBudget) -> jwt.PyJWKSet:
        try:
            with httpx.Client(
                transport=budgeted_transport(budget, ssl_context=self._tls, url=jwks_uri),
                timeout=httpx.Timeout(max(budget.remaining(), 0.001)),
                trust_env=False,
            ) as http:
                response = http.get(jwks_uri, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise idp_error_for(exc, budget, during="JWKS") from None
        if response.status_code != 200:
            raise IdPError("jwks_unavailable", f"the JWKS answered HTTP {response.status_code}", transient=True)
        document = _json(response)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise IdPError("jwks_unavailable", "the JWKS is not a JSON object with a keys list", transient=False)
        try:
            return jwt.PyJWKSet.from_dict(document)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise IdPError(
                "jwks_unavailable", f"the JWKS holds no usable key ({type(exc).__name__})", transient=False
            ) from None


# The IdP answered something that may be a token the bot cannot represent, so cannot revoke.
UNHOLDABLE_TOKEN = "unholdable_token"


def _token_in_odd_answer(response: httpx.Response) -> ExchangedToken | None:
    try:
        answer = response.json()
    except ValueError:
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        return None
    try:
        token = parse_exchange(answer)
    except IdPError:
        return None
    odd = f"the token came in an HTTP {response.status_code} answer"
    return dataclasses.replace(token, anomaly=one_line(f"{odd}; {token.anomaly}" if token.anomaly else odd, 300))


def _seconds(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("not a number")
    seconds = int(float(value))
    if seconds < 0:
        raise ValueError("negative")
    return seconds


def parse_exchange(answer: Any) -> ExchangedToken:
    """RFC 8693 section 2.2.1, read defensively. Without a usable access_token there is nothing to
    hold: IdPError. With one, the token is always returned; anything else malformed is an anomaly."""
    if not isinstance(answer, dict):
        raise IdPError("invalid_response", "the token answer is not a JSON object", transient=False)
    token = answer.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise IdPError("invalid_response", "the token answer has no access_token", transient=False)
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        # JSON can carry a lone surrogate ("\\ud800"); no byte string is that token, so it can be
        # neither stored nor sent back to be revoked.
        raise IdPError(UNHOLDABLE_TOKEN, "the access_token is not valid text", transient=False) from None
    anomalies: list[str] = []
    token_type = answer.get("token_type")
    if token_type is None:
        token_type = "Bearer"
    elif not isinstance(token_type, str) or not token_type.isascii() or not token_type.isalnum():
        anomalies.append("token_type is not a token type")
        token_type = "Bearer"
    expires_in: int | None = None
    if answer.get("expires_in") is not None:
        try:
            expires_in = _seconds(answer["expires_in"])
        except (ValueError, OverflowError):
            anomalies.append("expires_in is not a number of seconds")
    scope: tuple[str, ...] | None = None
    if answer.get("scope") is not None:
        if isinstance(answer["scope"], str):
            scope = tuple(answer["scope"].split())
        else:
            anomalies.append("scope is not a string")
    issued = answer.get("issued_token_type")
    if issued is not None and not isinstance(issued, str):
        anomalies.append("issued_token_type is not a string")
        issued = None
    return ExchangedToken(
        access_token=token,
        token_type=token_type,
        expires_in=expires_in,
        scope=scope,
        issued_token_type=issued,
        anomaly=one_line("; ".join(anomalies), 300) or None,
    )
