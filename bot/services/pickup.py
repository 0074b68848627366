"""The one-time pickup link: the only way a token leaves the bot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine

from bot.services.audit import AuditEventType, record
from bot.store import grants as grant_store
from bot.store.crypto import TokenCipher, pickup_hash
from bot.store.db import session_scope


class PickupOutcome(StrEnum):
    OK = "ok"
    GONE = "gone"  # used, expired, or the grant ended: 410
    UNKNOWN = "unknown"  # 404


@dataclass(frozen=True)
class PickedToken:
    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime
    scope: str
    audience: str


@dataclass(frozen=True)
class PickupResult:
    outcome: PickupOutcome
    token: PickedToken | None = None


@dataclass
class PickupService:
    engine: Engine
    cipher: TokenCipher
    clock: Callable[[], datetime]

    def claim(self, pickup_id: str) -> PickupResult:
        if not pickup_id or len(pickup_id) > 128:
            return PickupResult(PickupOutcome.UNKNOWN)
        hashed = pickup_hash(pickup_id)
        now = self.clock()
        with session_scope(self.engine) as session:
            claimed = grant_store.claim_pickup(session=session, hashed=hashed, now=now)
            grant = grant_store.get_grant_by_pickup(session=session, hashed=hashed)
            if grant is None:
                return PickupResult(PickupOutcome.UNKNOWN)
            if not claimed or grant.token_ciphertext is None:
                record(
                    AuditEventType.PICKUP_REFUSED,
                    session=session,
                    at=now,
                    actor="pickup-link",
                    request_id=grant.request_id,
                    why="already used" if grant.picked_up_at is not None else "expired or grant ended",
                )
                return PickupResult(PickupOutcome.GONE)
            record(
                AuditEventType.TOKEN_PICKED_UP,
                session=session,
                at=now,
                actor="pickup-link",
                request_id=grant.request_id,
                token_fingerprint=grant.token_fingerprint,
            )
            return PickupResult(
                PickupOutcome.OK,
                PickedToken(
                    access_token=self.cipher.decrypt(grant.token_ciphertext),
                    token_type=grant.token_type,
                    expires_at=grant.expires_at,
                    scope=grant.granted_scopes,
                    audience=grant.audience,
                ),
            )
