"""The revocation engine's use cases: claim due grants, revoke at the IdP, prove it, wipe, report.

The ``grant`` table is the only source of truth. Any number of workers (threads, replicas) may call
``sweep``; a grant is claimed by one worker at a time under a lease, and only the worker that moves
it to ``revoked`` reports it, so nothing is revoked or posted twice. The sweep claims no more than
there are idle workers, so a lease starts when work on it starts. An attempt has a total deadline
well inside its lease; a failed attempt never sleeps: it records the error and the next attempt
time, and a later sweep retries it, forever, until introspection proves the token dead. A lease
that runs out with no outcome recorded counts as a failed attempt. Nothing here swallows an error.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from bot.domain.audit import AuditEventType
from bot.domain.policy import Policy
from bot.domain.status import GrantStatus, RequestStatus
from bot.idp.client import IdPClient
from bot.idp.errors import IdPError
from bot.services import lifecycle
from bot.services.audit import record
from bot.services.backlog import RevocationBacklog
from bot.services.extensions import cancel_pending_extension
from bot.services.notices import AlertKind, GrantLife
from bot.services.outbox import Announcer
from bot.services.snapshots import load_snapshot
from bot.services.workers import log_failure, submit_logged
from bot.store import audit as audit_store
from bot.store import grants as grant_store
from bot.store.crypto import TokenCipher
from bot.store.db import read_scope, session_scope
from bot.store.models import Grant
from bot.store.transitions import BOT_ACTOR, Audit, fail_mint, move_grant, move_request

log = logging.getLogger(__name__)

ALERT_AFTER_FAILURES = 3
MAX_RETRY_DELAY = timedelta(seconds=60)


class StillActive(Exception):
    """The IdP accepted the revocation but introspection still calls the token active."""


def retry_delay(attempts: int) -> timedelta:
    """1 s, 2 s, 4 s, … capped at a minute: quick recovery from blips, no hammering in an outage."""
    return min(timedelta(seconds=2 ** max(0, attempts - 1)), MAX_RETRY_DELAY)


@dataclass(frozen=True)
class RevocationTiming:
    # Each claim lasts this long. An attempt (discovery, revocation, introspection) must end well
    # within it, so ``attempt_budget`` < ``lease``: a slow IdP can fail an attempt, never outlive it.
    lease: timedelta = timedelta(seconds=30)
    attempt_budget: float = 20.0
    call_timeout: float = 5.0
    batch: int = 200
    # The *Revocation pending* card waits this long before it is sent: most revocations finish
    # sooner, and their *Revoked* card replaces it unsent (a Slack call saved per grant, and no
    # flicker); a slower one shows pending this soon after the claim.
    pending_card_hold: timedelta = timedelta(seconds=1)
    # The watchdog alerts a grant that is still not confirmed revoked this long after its expiry.
    overdue_after: timedelta = timedelta(seconds=30)


@dataclass
class RevocationService:
    engine: Engine
    policy: Policy
    idp: IdPClient
    cipher: TokenCipher
    announcer: Announcer
    clock: Callable[[], datetime]
    workers: Executor
    worker_count: int
    # Told about every future moment the engine must wake up (retries).
    wake: Callable[[datetime], None] = lambda _when: None
    timing: RevocationTiming = RevocationTiming()
    _busy: int = 0
    # Raised while due grants wait for a worker (the outbox then delivers less; see bot.services.backlog).
    backlog: RevocationBacklog = field(default_factory=RevocationBacklog)
    _busy_lock: threading.Lock = field(default_factory=threading.Lock)

    def sweep(self) -> list[str]:
        """Claim what is due, as much as idle workers can start now, and hand it to them.

        The idle workers are reserved before the claim, so two sweeps at once (the timer and a
        freed worker) never claim more than there are workers to start: a claimed grant's lease
        runs from the moment it is claimed.
        """
        with self._busy_lock:
            limit = min(self.timing.batch, self.worker_count - self._busy)
            if limit <= 0:
                self.backlog.report(behind=True)
                return []
            self._busy += limit
        claimed: list[grant_store.ClaimedGrant] = []
        claim_id = secrets.token_hex(16)
        try:
            claimed = self._claim(limit, claim_id)
        finally:
            with self._busy_lock:
                self._busy -= limit - len(claimed)
                # Claiming all it could may have left due grants behind; fewer means none are left.
                self.backlog.report(behind=len(claimed) >= limit)
        for held in claimed:
            future = submit_logged(
                self.workers, log, f"revocation worker for {held.request_id}", self.revoke_claimed, held, claim_id
            )
            future.add_done_callback(self._worker_done)
        return [held.request_id for held in claimed]

    def _claim(self, limit: int, claim_id: str) -> list[grant_store.ClaimedGrant]:
        """Claim due grants, and on a grant's first attempt let its card say revocation is pending.

        The claim returns what the attempts need, and the cards are queued in its transaction, so
        a revocation costs no transaction of its own before it reaches the IdP.
        """
        now = self.clock()
        with session_scope(self.engine) as session:
            claim = grant_store.claim_due(
                session=session, now=now, claim_id=claim_id, lease_until=now + self.timing.lease, limit=limit
            )
            for held in claim.grants:
                if held.refusal is None and held.attempts == 0:
                    self.announcer.card(
                        session,
                        load_snapshot(session, held.request_id, policy=self.policy),
                        hold=self.timing.pending_card_hold,
                    )
            for request_id, attempts in claim.lapsed:
                _failed_attempt(session, request_id, attempts, now, error="lease_expired")
        for request_id, attempts in claim.lapsed:
            log.warning(
                "revocation of %s: attempt %d recorded no outcome before its lease ran out", request_id, attempts
            )
        return claim.grants

    def _worker_done(self, _future: object) -> None:
        with self._busy_lock:
            self._busy -= 1
        # A worker is free: if the last sweep left grants behind for want of workers, claim one now.
        if self.backlog.behind():
            self.wake(self.clock())

    def has_idle_worker(self) -> bool:
        with self._busy_lock:
            return self._busy < self.worker_count

    def next_due(self) -> datetime | None:
        with read_scope(self.engine) as session:
            return grant_store.next_due(session=session)

    def revoke_claimed(self, held: grant_store.ClaimedGrant, claim_id: str) -> None:
        """One attempt at one claimed grant. Every outcome is recorded; no exception escapes silently."""
        try:
            self._attempt(held, claim_id)
        except Exception:
            # The attempt's own bookkeeping failed (database down?). The claim's lease runs out and
            # the next sweep counts it as a failed attempt and retries.
            log_failure(
                log, f"revocation of {held.request_id} could not be recorded; it is retried when its lease ends"
            )

    def _attempt(self, held: grant_store.ClaimedGrant, claim_id: str) -> None:
        request_id = held.request_id
        deadline = time.monotonic() + self.timing.attempt_budget
        proof: dict[str, Any]
        try:
            if held.token_ciphertext is None:
                raise RuntimeError("no stored token to revoke")
            token = self.cipher.decrypt(held.token_ciphertext)
            self.idp.revoke(token, timeout=self._call_timeout(deadline))
            proof = self._prove(token, deadline)
        except Exception as exc:  # IdPError, StillActive, or anything else: all count as a failed attempt
            self._failed(request_id, claim_id, exc)
            return
        self._revoked(request_id, claim_id, held, proof)

    def _call_timeout(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise IdPError("idp_timeout", "the attempt's deadline passed", transient=True)
        return min(self.timing.call_timeout, left)

    def _prove(self, token: str, deadline: float) -> dict[str, Any]:
        if not self.idp.metadata().introspection_endpoint:
            return {"revocation": "accepted", "introspection": "not offered by the IdP"}
        answer = self.idp.introspect(token, timeout=self._call_timeout(deadline))
        if answer.get("active") is not False:
            raise StillActive("the token still introspects as active after revocation")
        return {"revocation": "accepted", "introspection": {"active": False}}

    def _revoked(self, request_id: str, claim_id: str, held: grant_store.ClaimedGrant, proof: dict[str, Any]) -> None:
        now = self.clock()
        with session_scope(self.engine) as session:
            if not move_grant(
                session=session,
                request_id=request_id,
                source=GrantStatus.REVOKING,
                target=GrantStatus.REVOKED,
                now=now,
                claim_id=claim_id,
                event=Audit(
                    AuditEventType.GRANT_REVOKED,
                    actor=BOT_ACTOR,
                    details={
                        "token_fingerprint": held.token_fingerprint,
                        "expires_at": held.expires_at.isoformat(),
                        "lag_ms": int((now - held.expires_at).total_seconds() * 1000),
                        "proof": proof,
                        "refusal": held.refusal,
                    },
                ),
                revoked_at=now,
                token_ciphertext=None,
                lease_until=None,
                last_error=None,
                in_attempt=False,
            ):
                # Our lease ran out and another worker took over; it will report the result.
                log.warning("revocation of %s finished after its claim moved on", request_id)
                return
            lag_ms = int((now - held.expires_at).total_seconds() * 1000)
            if held.refusal is None:
                self._grant_ended(session, request_id, now, held=held, proof=proof, lag_ms=lag_ms)
            else:
                self._refused_token_dead(session, request_id, held, now)
                lifecycle.note(
                    session,
                    lifecycle.Step.REVOKED,
                    request_id,
                    proof=_proof_words(proof),
                    refused=held.refusal,
                    token_fingerprint=held.token_fingerprint,
                )

    def _grant_ended(
        self,
        session: Session,
        request_id: str,
        now: datetime,
        *,
        held: grant_store.ClaimedGrant,
        proof: dict[str, Any],
        lag_ms: int,
    ) -> None:
        if move_request(
            session=session,
            request_id=request_id,
            source=RequestStatus.ACTIVE,
            target=RequestStatus.REVOKED,
            now=now,
            event=None,
        ):
            grant = grant_store.get_grant(session=session, request_id=request_id, fresh=True)
            view = load_snapshot(session, request_id, policy=self.policy, grant=grant)
            self.announcer.outcome(session, view, life=_life(session, request_id, grant, held, now, proof))
            lifecycle.note(session, lifecycle.Step.REVOKED, view, proof=_proof_words(proof), lag_ms=lag_ms)
            cancel_pending_extension(session, request_id, now=now, policy=self.policy, announcer=self.announcer)
        else:
            log.warning("grant %s is revoked but its request was no longer active", request_id)

    def _refused_token_dead(
        self, session: Session, request_id: str, held: grant_store.ClaimedGrant, now: datetime
    ) -> None:
        """A token that was never handed out is dead. If its mint was interrupted while it waited for
        its checks, the request is failed now; either way the audit channel hears it is resolved."""
        detail = "the bot stopped while checking the token; the token was revoked"
        if held.refusal == grant_store.UNCHECKED and fail_mint(
            session=session, request_id=request_id, code="mint_interrupted", detail=detail, now=now
        ):
            view = load_snapshot(session, request_id, policy=self.policy)
            self.announcer.outcome(session, view)
            lifecycle.note(session, lifecycle.Step.MINT_FAILED, view, error="mint_interrupted", detail=detail)
        self.announcer.alert(
            session,
            AlertKind.REFUSED_TOKEN_REVOKED,
            request_id,
            fingerprint=held.token_fingerprint,
            proof="the IdP accepted the revocation and introspection says inactive",
        )

    def _failed(self, request_id: str, claim_id: str, exc: Exception) -> None:
        still_active = isinstance(exc, StillActive)
        code = exc.code if isinstance(exc, IdPError) else ("still_active" if still_active else type(exc).__name__)
        if not isinstance(exc, IdPError | StillActive):
            log_failure(log, f"revocation of {request_id} failed unexpectedly ({type(exc).__name__})", exc)
        now = self.clock()
        with session_scope(self.engine) as session:
            grant = grant_store.get_grant(session=session, request_id=request_id)
            attempts_before = grant.attempts if grant is not None else 0
            # Read before this failure is recorded: was the token already found still active?
            was_still_active = grant is not None and grant.last_error == "still_active"
            wait = retry_delay(attempts_before + 1)
            if isinstance(exc, IdPError) and exc.retry_after is not None:
                wait = max(wait, timedelta(seconds=exc.retry_after))
            retry_at = now + wait
            attempts = grant_store.record_failure(
                session=session, request_id=request_id, claim_id=claim_id, retry_at=retry_at, error=code
            )
            if attempts is None:
                return
            _failed_attempt(session, request_id, attempts, now, error=code, retry_at=retry_at.isoformat())
            if still_active:
                self.announcer.alert(session, AlertKind.STILL_ACTIVE, request_id)
            elif attempts == ALERT_AFTER_FAILURES:
                self.announcer.alert(session, AlertKind.REVOCATION_FAILING, request_id, attempts=attempts, error=code)
            # One line when the alerts begin, not one per retry (a still-active token is alerted each time).
            if (still_active and not was_still_active) or (not still_active and attempts == ALERT_AFTER_FAILURES):
                lifecycle.note(
                    session,
                    lifecycle.Step.REVOCATION_FAILING,
                    request_id,
                    attempts=attempts,
                    error=code,
                    retry_at=retry_at.isoformat(timespec="seconds"),
                )
        log.warning("revocation of %s failed (attempt %d, %s); retrying at %s", request_id, attempts, code, retry_at)
        self.wake(retry_at)

    def watch(self) -> list[str]:
        """The watchdog: alert, once each, the grants still not confirmed revoked well after expiry."""
        now = self.clock()
        with session_scope(self.engine) as session:
            overdue = grant_store.alert_overdue(session=session, now=now, grace=self.timing.overdue_after, limit=100)
            for request_id, expires_at in overdue:
                grant: Grant | None = grant_store.get_grant(session=session, request_id=request_id)
                late = int((now - expires_at).total_seconds())
                record(
                    AuditEventType.REVOCATION_OVERDUE,
                    session=session,
                    at=now,
                    actor=BOT_ACTOR,
                    request_id=request_id,
                    late_seconds=late,
                    attempts=grant.attempts if grant else None,
                )
                self.announcer.alert(
                    session,
                    AlertKind.REVOCATION_OVERDUE,
                    request_id,
                    late_seconds=late,
                    attempts=grant.attempts if grant else 0,
                    last_error=(grant.last_error if grant else None) or "none yet",
                )
                lifecycle.note(
                    session,
                    lifecycle.Step.REVOCATION_OVERDUE,
                    request_id,
                    late_seconds=late,
                    attempts=grant.attempts if grant else 0,
                    last_error=(grant.last_error if grant else None) or "none yet",
                )
        return [request_id for request_id, _ in overdue]


def _life(
    session: Session,
    request_id: str,
    grant: Grant | None,
    held: grant_store.ClaimedGrant,
    confirmed_at: datetime,
    proof: dict[str, Any],
) -> GrantLife:
    """What the grant did, for its summary: read in the transaction that ends it."""
    activated_at = audit_store.first_event_at(
        session=session, request_id=request_id, event_type=AuditEventType.GRANT_ACTIVE
    )
    if activated_at is None:  # a trail without the event (it is always written with the activation)
        activated_at = grant.issued_at if grant is not None else held.expires_at
    return GrantLife(
        activated_at=_aware(activated_at),
        ended_at=_aware(held.expires_at),
        picked_up_at=_aware(grant.picked_up_at) if grant is not None and grant.picked_up_at else None,
        confirmed_at=_aware(confirmed_at),
        introspected_inactive=proof.get("introspection") == {"active": False},
    )


def _aware(moment: datetime) -> datetime:
    """UTC, with its zone (SQLite's driver hands back naive datetimes, all in UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _proof_words(proof: dict[str, Any]) -> str:
    """What proves the token dead, in the words of a log line."""
    if proof.get("introspection") == {"active": False}:
        return "introspection inactive"
    return f"revocation accepted; introspection {proof.get('introspection')}"


def _failed_attempt(session: Session, request_id: str, attempts: int, now: datetime, **details: str) -> None:
    record(
        AuditEventType.REVOCATION_FAILED,
        session=session,
        at=now,
        actor=BOT_ACTOR,
        request_id=request_id,
        attempt=attempts,
        **details,
    )
