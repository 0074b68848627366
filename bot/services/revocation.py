"""The revocation engine's use cases: claim due grants, revoke at the IdP, prove it, wipe, report.

The ``grant`` table is the only source of truth. Any number of workers (threads, replicas) may call
``sweep``; a grant is claimed by one worker at a time under a lease, and only the worker that moves
it to ``revoked`` announces it, so nothing is revoked or posted twice. A failed attempt never
sleeps: it records the error and sets the lease to the next attempt time, and a later sweep
retries it. Nothing here swallows an error on the revocation path.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from bot.domain.policy import Policy
from bot.domain.status import RequestStatus
from bot.idp.client import IdPClient
from bot.idp.errors import IdPError
from bot.services.announce import Announcer, load_snapshot
from bot.services.audit import AuditEventType, record
from bot.services.ports import Notifier
from bot.store import grants as grant_store
from bot.store import requests as store
from bot.store.crypto import TokenCipher
from bot.store.db import session_scope

log = logging.getLogger(__name__)

ALERT_AFTER_FAILURES = 3
MAX_RETRY_DELAY = timedelta(seconds=60)


class StillActive(Exception):
    """The IdP accepted the revocation but introspection still calls the token active."""


def retry_delay(attempts: int) -> timedelta:
    """1 s, 2 s, 4 s, … capped at a minute: quick recovery from blips, no hammering in an outage."""
    return min(timedelta(seconds=2 ** max(0, attempts - 1)), MAX_RETRY_DELAY)


@dataclass
class RevocationService:
    engine: Engine
    policy: Policy
    idp: IdPClient
    cipher: TokenCipher
    notifier: Notifier
    clock: Callable[[], datetime]
    workers: Executor
    # Told about every future moment the engine must wake up (new expiries, retries).
    on_schedule: Callable[[datetime], None] = lambda _when: None
    # Long enough for one attempt (discovery, revocation, introspection at 5 s each, worst case),
    # short enough that a grant held by a crashed worker is retried soon after a restart.
    lease: timedelta = timedelta(seconds=30)
    batch: int = 200
    _in_flight: set[Future[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._announce = Announcer(engine=self.engine, policy=self.policy, notifier=self.notifier, clock=self.clock)

    def sweep(self) -> list[str]:
        """Claim what is due and hand each grant to a worker. Returns the claimed request ids."""
        now = self.clock()
        claim_id = secrets.token_hex(16)
        with session_scope(self.engine) as session:
            claimed = grant_store.claim_due(
                session=session, now=now, claim_id=claim_id, lease_until=now + self.lease, limit=self.batch
            )
        for request_id in claimed:
            future = self.workers.submit(self.revoke_claimed, request_id, claim_id)
            self._in_flight.add(future)
            future.add_done_callback(self._in_flight.discard)
        return claimed

    def next_due(self) -> datetime | None:
        with session_scope(self.engine) as session:
            return grant_store.next_due(session=session)

    def revoke_claimed(self, request_id: str, claim_id: str) -> None:
        """One attempt at one claimed grant. Every outcome is recorded; no exception escapes silently."""
        try:
            self._attempt(request_id, claim_id)
        except Exception:
            # The attempt's own bookkeeping failed (database down?). The claim's lease runs out and
            # the next sweep retries; say so loudly rather than lose it in the executor.
            log.exception("revocation of %s could not be recorded; it will be retried when its lease ends", request_id)

    def _attempt(self, request_id: str, claim_id: str) -> None:
        with session_scope(self.engine) as session:
            grant = grant_store.get_grant(session=session, request_id=request_id)
            if grant is None or grant.claim_id != claim_id or grant.status != "revoking":
                return  # claimed by someone else after our lease ran out
            ciphertext = grant.token_ciphertext
            fingerprint = grant.token_fingerprint
            expires_at = grant.expires_at
        proof: dict[str, Any]
        try:
            if ciphertext is None:
                raise RuntimeError("no stored token to revoke")
            token = self.cipher.decrypt(ciphertext)
            self.idp.revoke(token)
            proof = self._prove(token)
        except Exception as exc:  # IdPError, StillActive, or anything else: all count as a failed attempt
            self._failed(request_id, claim_id, exc)
            return
        self._revoked(request_id, claim_id, fingerprint, expires_at, proof)

    def _prove(self, token: str) -> dict[str, Any]:
        if not self.idp.metadata().introspection_endpoint:
            return {"revocation": "accepted", "introspection": "not offered by the IdP"}
        answer = self.idp.introspect(token)
        if answer.get("active") is not False:
            raise StillActive("the token still introspects as active after revocation")
        return {"revocation": "accepted", "introspection": {"active": False}}

    def _revoked(
        self, request_id: str, claim_id: str, fingerprint: str, expires_at: datetime, proof: dict[str, Any]
    ) -> None:
        now = self.clock()
        with session_scope(self.engine) as session:
            if not grant_store.finish_revocation(session=session, request_id=request_id, claim_id=claim_id, now=now):
                # Our lease ran out and another worker took over; it will announce the result.
                log.warning("revocation of %s finished after its claim moved on", request_id)
                return
            store.transition(
                session=session,
                request_id=request_id,
                from_status=RequestStatus.ACTIVE,
                to_status=RequestStatus.REVOKED,
                now=now,
            )
            record(
                AuditEventType.GRANT_REVOKED,
                session=session,
                at=now,
                actor="jit-bot",
                request_id=request_id,
                token_fingerprint=fingerprint,
                expires_at=expires_at.isoformat(),
                lag_ms=int((now - expires_at).total_seconds() * 1000),
                proof=proof,
            )
            revoked = load_snapshot(session, request_id, policy=self.policy)
        self._announce.outcome(revoked)

    def _failed(self, request_id: str, claim_id: str, exc: Exception) -> None:
        still_active = isinstance(exc, StillActive)
        code = exc.code if isinstance(exc, IdPError) else ("still_active" if still_active else type(exc).__name__)
        if not isinstance(exc, IdPError | StillActive):
            log.error("revocation of %s failed unexpectedly: %s", request_id, type(exc).__name__, exc_info=exc)
        now = self.clock()
        with session_scope(self.engine) as session:
            grant = grant_store.get_grant(session=session, request_id=request_id)
            attempts_before = grant.attempts if grant is not None else 0
            retry_at = now + retry_delay(attempts_before + 1)
            attempts = grant_store.record_failure(
                session=session, request_id=request_id, claim_id=claim_id, retry_at=retry_at, error=code
            )
            if attempts is None:
                return
            record(
                AuditEventType.REVOCATION_FAILED,
                session=session,
                at=now,
                actor="jit-bot",
                request_id=request_id,
                attempt=attempts,
                error=code,
                retry_at=retry_at.isoformat(),
            )
            pending = load_snapshot(session, request_id, policy=self.policy)
        log.warning("revocation of %s failed (attempt %d, %s); retrying at %s", request_id, attempts, code, retry_at)
        self.on_schedule(retry_at)
        if attempts == 1:
            self._announce.card(pending)
        if still_active or attempts == ALERT_AFTER_FAILURES:
            why = (
                "the IdP accepted the revocation but the token still introspects as ACTIVE"
                if still_active
                else f"{attempts} attempts failed ({code})"
            )
            self._announce.alert(
                f":rotating_light: Revocation of grant `{request_id}` is not done: {why}. "
                "jit-bot keeps retrying; check the IdP."
            )
