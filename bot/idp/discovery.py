"""OpenID Provider metadata from ``{issuer}/.well-known/openid-configuration``, cached."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import httpx

from bot.idp.errors import IdPError


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

    def __init__(self, issuer: str, *, timeout: float) -> None:
        self._issuer = issuer.rstrip("/")
        self._timeout = timeout
        self._lock = threading.Lock()
        self._metadata: ProviderMetadata | None = None

    def get(self) -> ProviderMetadata:
        with self._lock:
            if self._metadata is None:
                self._metadata = self._fetch()
            return self._metadata

    def invalidate(self) -> None:
        with self._lock:
            self._metadata = None

    def _fetch(self) -> ProviderMetadata:
        url = f"{self._issuer}/.well-known/openid-configuration"
        try:
            response = httpx.get(url, timeout=self._timeout, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise IdPError("idp_unreachable", f"discovery failed: {type(exc).__name__}", transient=True) from None
        if response.status_code != 200:
            raise IdPError(
                "discovery_failed",
                f"{url} answered HTTP {response.status_code}",
                transient=response.status_code >= 500,
                status=response.status_code,
            )
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise IdPError("discovery_failed", f"{url} did not answer JSON", transient=False) from None
        # OpenID Connect Discovery 1.0 section 4.3: the issuer in the document must be the one we asked.
        if str(data.get("issuer", "")).rstrip("/") != self._issuer:
            raise IdPError("discovery_failed", "issuer in the metadata does not match OIDC_ISSUER", transient=False)
        if not data.get("token_endpoint"):
            raise IdPError("discovery_failed", "the IdP publishes no token_endpoint", transient=False)
        return ProviderMetadata(
            issuer=str(data["issuer"]),
            token_endpoint=str(data["token_endpoint"]),
            revocation_endpoint=data.get("revocation_endpoint"),
            introspection_endpoint=data.get("introspection_endpoint"),
            jwks_uri=data.get("jwks_uri"),
        )
