"""OpenID Provider metadata from ``{issuer}/.well-known/openid-configuration``, cached."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from bot.bounded_http import CallBudget, budgeted_client
from bot.idp.errors import IdPError, idp_error_for, waiting_within


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    token_endpoint: str
    revocation_endpoint: str | None
    introspection_endpoint: str | None
    jwks_uri: str | None


class Discovery:
    """Fetched once and kept; ``invalidate()`` after a failed call makes the next use fetch it again,
    so an IdP that moved an endpoint is followed without a restart."""

    def __init__(self, issuer: str, *, timeout: float, ssl_context: ssl.SSLContext) -> None:
        self._issuer = issuer.rstrip("/")
        self._timeout = timeout
        self._tls = ssl_context
        self._lock = threading.Lock()
        self._metadata: ProviderMetadata | None = None

    def get(self, budget: CallBudget | None = None) -> ProviderMetadata:
        budget = budget or CallBudget.starting_now(self._timeout)
        # Another thread may be fetching (against a slow IdP): waiting for it counts against this call.
        with waiting_within(self._lock, budget, during="discovery"):
            if self._metadata is None:
                self._metadata = self._fetch(budget)
            return self._metadata

    def invalidate(self) -> None:
        with self._lock:
            self._metadata = None

    def _fetch(self, budget: CallBudget) -> ProviderMetadata:
        url = f"{self._issuer}/.well-known/openid-configuration"
        try:
            with budgeted_client(budget, ssl_context=self._tls, url=url) as http:
                response = http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise idp_error_for(exc, budget, during="discovery") from None
        if response.status_code != 200:
            raise IdPError(
                "discovery_failed",
                f"{url} answered HTTP {response.status_code}",
                transient=response.status_code >= 500 or response.status_code == 429,
                status=response.status_code,
            )
        try:
            data: Any = response.json()
        except ValueError:
            raise IdPError("discovery_failed", "the discovery document is not JSON", transient=False) from None
        if not isinstance(data, dict):
            raise IdPError("discovery_failed", "the discovery document is not a JSON object", transient=False)
        # OpenID Connect Discovery 1.0 section 4.3: the issuer in the document must be the one we asked.
        if not isinstance(data.get("issuer"), str) or data["issuer"].rstrip("/") != self._issuer:
            raise IdPError("discovery_failed", "issuer in the metadata does not match OIDC_ISSUER", transient=False)
        endpoints = {
            name: data.get(name)
            for name in ("token_endpoint", "revocation_endpoint", "introspection_endpoint", "jwks_uri")
        }
        for name, value in endpoints.items():
            if value is not None and not (isinstance(value, str) and value.startswith(("https://", "http://"))):
                raise IdPError("discovery_failed", f"{name} in the metadata is not a URL", transient=False)
        if not endpoints["token_endpoint"]:
            raise IdPError("discovery_failed", "the IdP publishes no token_endpoint", transient=False)
        return ProviderMetadata(
            issuer=str(data["issuer"]),
            token_endpoint=str(endpoints["token_endpoint"]),
            revocation_endpoint=endpoints["revocation_endpoint"],
            introspection_endpoint=endpoints["introspection_endpoint"],
            jwks_uri=endpoints["jwks_uri"],
        )


def discovery_problem(exc: IdPError, url: str, seconds: float) -> str:
    """One sentence for a discovery document at ``url`` (redacted) that did not load, and what to do."""
    if exc.code == "idp_timeout":
        return f"{url} did not answer within {seconds:g} s; check OIDC_ISSUER, the network and any proxy"
    if exc.code == "idp_unreachable":
        return f"cannot reach {url} ({exc.description}); check OIDC_ISSUER, and that the IdP is up"
    return f"{url}: {exc.description or exc.code}; check OIDC_ISSUER"
