"""The one-time pickup link: the only way a token leaves the bot."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine
from sqlmodel import Session

from bot.domain.networks import IPAddress, within
from bot.domain.policy import Policy
from bot.domain.status import GrantStatus
from bot.services import lifecycle
from bot.services.audit import AuditEventType, record
from bot.store import grants as grant_store
from bot.store import requests as request_store
from bot.store.crypto import TokenCipher, pickup_hash
from bot.store.db import read_scope, session_scope
from bot.store.models import Grant

log = logging.getLogger(__name__)


class PickupOutcome(StrEnum):
    OK = "ok"
    GONE = "gone"  # used, expired, or the grant ended: 410
    UNKNOWN = "unknown"  # 404
    ELSEWHERE = "elsewhere"  # opened from outside the resource's pickup_networks: 403, link kept


class GoneReason(StrEnum):
    """Why a link that exists shows no token: the person holding it (it is a secret) is told which."""

    USED = "already used"
    LINK_EXPIRED = "link expired"
    GRANT_ENDED = "grant ended"


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
    gone: GoneReason | None = None


def _gone_reason(grant: Grant, now: datetime) -> GoneReason:
    if grant.picked_up_at is not None:
        return GoneReason.USED
    ended = grant.status != GrantStatus.ACTIVE.value or grant.refusal is not None or grant.expires_at <= now
    return GoneReason.GRANT_ENDED if ended else GoneReason.LINK_EXPIRED


class _UnknownLinks:
    """Counts requests for links that do not exist and logs the count at most once a minute, so a
    scanner is visible in the log without writing a line (or an audit row) per guess."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._since = time.monotonic()

    def seen(self) -> None:
        with self._lock:
            self._count += 1
            if time.monotonic() - self._since < 60:
                return
            count, self._count, self._since = self._count, 0, time.monotonic()
        log.warning("%d requests for unknown pickup links in the last minute", count)


@dataclass
class PickupService:
    engine: Engine
    cipher: TokenCipher
    clock: Callable[[], datetime]
    policy: Policy
    # Wakes the revocation engine when an extension's pickup makes the grant it replaces due now.
    wake: Callable[[datetime], None] = lambda _when: None
    _unknown: _UnknownLinks = field(default_factory=_UnknownLinks)

    def claim(self, pickup_id: str, *, client: IPAddress | None = None) -> PickupResult:
        """``client``: the address the link is opened from (None: unknown), for ``pickup_networks``."""
        if not pickup_id or len(pickup_id) > 128:
            return PickupResult(PickupOutcome.UNKNOWN)
        hashed = pickup_hash(pickup_id)
        # Unknown links (guesses, scanners) are answered from a read: no write lock, no audit row
        # each. Only a link that exists goes on to the claim, which writes.
        with read_scope(self.engine) as session:
            resource_name = grant_store.resource_of_pickup(session=session, hashed=hashed)
            if resource_name is None:
                self._unknown.seen()
                return PickupResult(PickupOutcome.UNKNOWN)
        now = self.clock()
        resource = self.policy.resource(resource_name)
        networks = resource.pickup_cidrs if resource is not None else ()
        if networks and (client is None or not within(client, networks)):
            # Refused before the claim, so the link stays usable from where it is meant to be opened.
            with session_scope(self.engine) as session:
                grant = grant_store.get_grant_by_pickup(session=session, hashed=hashed)
                if grant is not None:
                    shown = str(client) if client is not None else "unknown"
                    why = "address outside pickup_networks"
                    _audit(session, now, AuditEventType.PICKUP_REFUSED, grant.request_id, why=why, address=shown)
            return PickupResult(PickupOutcome.ELSEWHERE)
        with session_scope(self.engine) as session:
            # The rows of the grants this one extends first, as an early end takes them (see there).
            if (picked := grant_store.request_of_pickup(session=session, hashed=hashed)) is not None:
                grant_store.lock_chain_above(session=session, request_id=picked)
            claimed = grant_store.claim_pickup(session=session, hashed=hashed, now=now)
            grant = grant_store.get_grant_by_pickup(session=session, hashed=hashed)
            if grant is None:
                return PickupResult(PickupOutcome.UNKNOWN)
            if not claimed or grant.token_ciphertext is None:
                why = _gone_reason(grant, now)
                _audit(session, now, AuditEventType.PICKUP_REFUSED, grant.request_id, why=why.value)
                return PickupResult(PickupOutcome.GONE, gone=why)
            _audit(
                session,
                now,
                AuditEventType.TOKEN_PICKED_UP,
                grant.request_id,
                token_fingerprint=grant.token_fingerprint,
            )
            lifecycle.note(session, lifecycle.Step.PICKED_UP, grant.request_id)
            replaced = self._replace_extended(session, grant.request_id, now)
            result = PickupResult(
                PickupOutcome.OK,
                PickedToken(
                    access_token=self.cipher.decrypt(grant.token_ciphertext),
                    token_type=grant.token_type,
                    expires_at=grant.expires_at,
                    scope=grant.granted_scopes,
                    audience=grant.audience,
                ),
            )
        if replaced:
            self.wake(now)
        return result

    def _replace_extended(self, session: Session, request_id: str, now: datetime) -> bool:
        """An extension's new token is in its requester's hands: the token of the grant it extends is
        due now (the revocation engine revokes it and proves it dead), in the pickup's transaction."""
        replaced = False
        request = request_store.get_request(session=session, request_id=request_id)
        # Every grant before it in the chain: when an extension of an extension is picked up, the
        # middle one never was, and the token its requester holds is the first one's.
        while request is not None and request.extends is not None:
            # False: it had ended already, at its expiry or early.
            if grant_store.replace_now(session=session, request_id=request.extends, now=now, by=request_id):
                _audit(session, now, AuditEventType.GRANT_REPLACED, request.extends, replaced_by=request_id)
                replaced = True
            request = request_store.get_request(session=session, request_id=request.extends)
        return replaced


def _audit(session: Session, at: datetime, event: AuditEventType, request_id: str, **details: str | None) -> None:
    record(event, session=session, at=at, actor="pickup-link", request_id=request_id, **details)
