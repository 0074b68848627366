"""Token exchange (RFC 8693), revocation (RFC 7009) and introspection (RFC 7662) at the IdP."""

from __future__ import annotations

import base64
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from authlib.oauth2.rfc7523 import PrivateKeyJWT

from bot.config import ClientAuth
from bot.idp.discovery import Discovery, ProviderMetadata
from bot.idp.errors import IdPError
from bot.idp.keys import SigningKey

with warnings.catch_warnings():
    # authlib prefers the httpx2 fork when installed and warns when it falls back to httpx, which we use.
    warnings.simplefilter("ignore")
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.httpx_client import OAuth2Client

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass(frozen=True)
class IdPConfig:
    issuer: str
    client_id: str
    client_secret: str | None
    client_auth: ClientAuth
    lifetime_param: str | None
    timeout: float = 5.0


@dataclass(frozen=True)
class ExchangedToken:
    access_token: str = field(repr=False)
    token_type: str
    expires_in: int | None
    scope: tuple[str, ...] | None
    issued_token_type: str | None


def _basic_auth_rfc6749(client: Any, method: Any, uri: Any, headers: Any, body: Any) -> tuple[Any, Any, Any]:  # noqa: ARG001
    """RFC 6749 section 2.3.1: id and secret are form-urlencoded before Basic encoding.

    authlib sends them raw, which strict IdPs (oidc-provider among them) decode wrongly as soon as a
    secret holds characters such as ``+`` or ``%``.
    """
    text = f"{quote(client.client_id, safe='')}:{quote(client.client_secret, safe='')}"
    headers["Authorization"] = "Basic " + base64.b64encode(text.encode()).decode()
    return uri, headers, body


def _raise_for_server_trouble(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 500 or response.status_code == 429:
        raise IdPError(
            "temporarily_unavailable",
            f"the IdP answered HTTP {response.status_code}",
            transient=True,
            status=response.status_code,
        )
    return response


class IdPClient:
    def __init__(self, config: IdPConfig, *, signing_key: SigningKey) -> None:
        self._config = config
        self._signing_key = signing_key
        self.discovery = Discovery(config.issuer, timeout=config.timeout)
        # Built once: a new httpx client otherwise loads the CA bundle again, ~20 ms of CPU per IdP call.
        self._tls = httpx.create_ssl_context()
        self._jwks_lock = threading.Lock()
        self._jwks: jwt.PyJWKSet | None = None

    @property
    def issuer(self) -> str:
        return self._config.issuer

    def metadata(self) -> ProviderMetadata:
        return self.discovery.get()

    @contextmanager
    def _oauth(self, metadata: ProviderMetadata, timeout: float) -> Iterator[Any]:
        config = self._config
        secret = config.client_secret
        if config.client_auth is ClientAuth.PRIVATE_KEY_JWT:
            secret = self._signing_key.pem().decode()
        client = OAuth2Client(
            client_id=config.client_id,
            client_secret=secret,
            token_endpoint_auth_method=config.client_auth.value,
            timeout=timeout,
            verify=self._tls,
        )
        client.register_client_auth_method(("client_secret_basic", _basic_auth_rfc6749))
        if config.client_auth is ClientAuth.PRIVATE_KEY_JWT:
            client.register_client_auth_method(
                PrivateKeyJWT(
                    metadata.token_endpoint, alg=self._signing_key.alg, headers={"kid": self._signing_key.kid}
                )
            )
        client.register_compliance_hook("access_token_response", _raise_for_server_trouble)
        try:
            yield client
        except httpx.TimeoutException:
            raise IdPError("idp_timeout", "the IdP did not answer in time", transient=True) from None
        except httpx.HTTPError as exc:
            self.discovery.invalidate()
            raise IdPError("idp_unreachable", type(exc).__name__, transient=True) from None
        except OAuthError as exc:
            raise IdPError(str(exc.error or "invalid_request"), exc.description, transient=False) from None
        except ValueError:
            raise IdPError("invalid_response", "the IdP's answer was not valid JSON", transient=False) from None
        finally:
            client.close()

    def exchange(
        self,
        *,
        assertion: str,
        audience: str,
        scopes: tuple[str, ...],
        lifetime_seconds: int,
        timeout: float | None = None,
    ) -> ExchangedToken:
        metadata = self.metadata()
        params: dict[str, str] = {
            "subject_token": assertion,
            "subject_token_type": JWT_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "audience": audience,
            "scope": " ".join(scopes),
        }
        if self._config.lifetime_param:
            params[self._config.lifetime_param] = str(lifetime_seconds)
        with self._oauth(metadata, timeout or self._config.timeout) as client:
            answer = client.fetch_token(metadata.token_endpoint, grant_type=TOKEN_EXCHANGE, **params)
            client.token = None  # the client object must not keep the token around
        return _parse_exchange(dict(answer))

    def revoke(self, token: str, *, timeout: float | None = None) -> None:
        metadata = self.metadata()
        if not metadata.revocation_endpoint:
            raise IdPError("revocation_unsupported", "the IdP publishes no revocation_endpoint", transient=False)
        with self._oauth(metadata, timeout or self._config.timeout) as client:
            response = client.revoke_token(metadata.revocation_endpoint, token=token, token_type_hint="access_token")
            _raise_for_server_trouble(response)
            # RFC 7009 section 2.2: 200 for success, including tokens that were already invalid.
            if response.status_code != 200:
                raise IdPError(
                    _error_code(response, "revocation_failed"),
                    f"revocation answered HTTP {response.status_code}",
                    transient=False,
                    status=response.status_code,
                )

    def introspect(self, token: str, *, timeout: float | None = None) -> dict[str, Any]:
        metadata = self.metadata()
        if not metadata.introspection_endpoint:
            raise IdPError("introspection_unsupported", "the IdP publishes no introspection_endpoint", transient=False)
        with self._oauth(metadata, timeout or self._config.timeout) as client:
            response = client.introspect_token(
                metadata.introspection_endpoint, token=token, token_type_hint="access_token"
            )
            _raise_for_server_trouble(response)
            if response.status_code != 200:
                raise IdPError(
                    _error_code(response, "introspection_failed"),
                    f"introspection answered HTTP {response.status_code}",
                    transient=False,
                    status=response.status_code,
                )
            answer: dict[str, Any] = response.json()
            return answer

    def verify_jwt_access_token(self, token: str, *, audience: str) -> dict[str, Any] | None:
        """Verify a JWT access token against the IdP's JWKS; None when the token is not a JWT.

        Raises IdPError(invalid_token) when it is a JWT that does not verify.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            return None  # opaque token: introspection is the IdP's word on it
        metadata = self.metadata()
        if not metadata.jwks_uri:
            raise IdPError("invalid_token", "a JWT access token but the IdP publishes no jwks_uri", transient=False)
        key = self._signing_key_for(header.get("kid"), metadata.jwks_uri)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[header.get("alg", "RS256")] if header.get("alg") not in (None, "none") else ["RS256"],
                audience=audience,
                issuer=metadata.issuer,
                options={"require": ["exp", "iat"]},
                leeway=5,
            )
        except jwt.PyJWTError as exc:
            raise IdPError(
                "invalid_token", f"the access token did not verify: {type(exc).__name__}", transient=False
            ) from None
        return claims

    def _signing_key_for(self, kid: str | None, jwks_uri: str) -> Any:
        for refresh in (False, True):
            with self._jwks_lock:
                if self._jwks is None or refresh:
                    self._jwks = self._fetch_jwks(jwks_uri)
                jwks = self._jwks
            for key in jwks.keys:
                if kid is None or key.key_id == kid:
                    return key.key
        raise IdPError("invalid_token", "the access token's kid is not in the IdP's JWKS", transient=False)

    def _fetch_jwks(self, jwks_uri: str) -> jwt.PyJWKSet:
        try:
            response = httpx.get(jwks_uri, timeout=self._config.timeout, verify=self._tls)
            response.raise_for_status()
            return jwt.PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            raise IdPError("jwks_unavailable", type(exc).__name__, transient=True) from None


def _error_code(response: httpx.Response, default: str) -> str:
    try:
        return str(response.json().get("error") or default)
    except ValueError:
        return default


def _seconds(value: Any) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _parse_exchange(answer: dict[str, Any]) -> ExchangedToken:
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise IdPError("invalid_response", "the IdP's answer has no access_token", transient=False)
    expires_in = answer.get("expires_in")
    scope = answer.get("scope")
    return ExchangedToken(
        access_token=token,
        token_type=str(answer.get("token_type") or "Bearer"),
        expires_in=_seconds(expires_in),
        scope=tuple(str(scope).split()) if scope is not None else None,
        issued_token_type=answer.get("issued_token_type"),
    )
