"""The subject assertion: a short-lived JWT, signed by the bot, that carries the approval itself."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import jwt

from bot.idp.keys import SigningKey

# The token-exchange profile (docs/architecture.md) allows exp at most 120 s after iat. Shorter is
# safer; 60 s leaves room for retries.
ASSERTION_LIFETIME_SECONDS = 60


@dataclass(frozen=True)
class ApprovalClaims:
    request_id: str
    resource: str
    scopes: tuple[str, ...]
    approvers: tuple[str, ...]
    reason: str
    expires_at: datetime
    # The resource's static claims (policy `claims:`), for the IdP to copy into the token.
    claims: Mapping[str, str | bool | int | float] = field(default_factory=dict)
    # Opened with /jit breakglass, with no approval: the IdP may copy it into the token (the dev IdP does).
    break_glass: bool = False


def subject_assertion(
    *,
    key: SigningKey,
    issuer: str,
    subject: str,
    audience: str,
    approval: ApprovalClaims,
    now: datetime,
) -> tuple[str, str]:
    """Returns (compact JWT, jti)."""
    iat = int(now.timestamp())
    jti = secrets.token_urlsafe(18)
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": iat,
        "nbf": iat,
        "exp": iat + ASSERTION_LIFETIME_SECONDS,
        "jti": jti,
        "jit": {
            "request_id": approval.request_id,
            "resource": approval.resource,
            "scopes": list(approval.scopes),
            "approvers": list(approval.approvers),
            "reason": approval.reason,
            "expires_at": int(approval.expires_at.timestamp()),
            "claims": dict(approval.claims),
            "break_glass": approval.break_glass,
        },
    }
    token = jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"})
    return token, jti
