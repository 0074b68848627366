"""Forwarding the audit trail to a webhook (JIT_AUDIT_WEBHOOK_URL): every event, in seq order, at least once.

Each event is queued in its own transaction (``bot.store.audit`` writes an ``audit_forward`` row beside
it), so an event that commits is an event the receiver gets, and one that rolls back is never sent.
One worker thread per replica leases the head of the queue and POSTs it, signed:

    X-JIT-Timestamp: <unix seconds>
    X-JIT-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

A receiver that is down, answers 5xx, or stalls (cut off by a total deadline) is retried with backoff
for as long as it takes, and gets the backlog in order when it is back. A 4xx is the receiver saying
"not this": retried a few times in case it is a passing misconfiguration, then alerted in the audit
channel and recorded in the trail. Forwarding then STOPS at that event instead of skipping it: a
receiver that silently misses an event (a grant, a revocation) is a hole in the copy a security team
relies on, and a hole it was never told of. The refused event alone is retried, slowly, so fixing the
receiver resumes the trail exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import Engine

from bot.bounded_http import CallBudget, budgeted_client
from bot.domain.audit import AuditEventType
from bot.domain.text import one_line
from bot.redact import redact_url
from bot.services.notices import AlertKind
from bot.services.outbox import Announcer
from bot.services.workers import log_failure
from bot.store import forward as forward_store
from bot.store.audit import ExportedEvent, append_event
from bot.store.db import read_scope, session_scope
from bot.store.forward import ForwardClaim
from bot.store.transitions import BOT_ACTOR

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-JIT-Timestamp"
SIGNATURE_HEADER = "X-JIT-Signature"
# A receiver's answer is read only to learn its status; anything longer than this is not an answer.
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class ForwardingPolicy:
    # One POST, connect to last byte (JIT_AUDIT_WEBHOOK_DEADLINE).
    deadline: float = 10.0
    # How long a claim on the head lasts. Well past the deadline, so a live sender always finishes
    # (or gives up) before another replica may take the event: that is what keeps sends exclusive.
    lease: timedelta = timedelta(seconds=60)
    poll_interval: float = 1.0
    first_retry: float = 1.0
    max_retry: float = 60.0
    # 4xx answers to one event before it is alerted and forwarding stops at it.
    max_refusals: int = 5
    # How often a refused event is tried again once forwarding has stopped at it.
    refused_retry: float = 600.0
    keep_sent: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if self.lease.total_seconds() < 2 * self.deadline:
            raise ValueError("the lease must outlast two deadlines, or two replicas could send one event")


def payload_of(event: ExportedEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": event.at.isoformat(timespec="microseconds"),
        "event_type": event.event_type,
        "actor": event.actor,
        "request_id": event.request_id,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def body_of(event: ExportedEvent) -> bytes:
    return json.dumps(payload_of(event), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``timestamp + "." + body``: the timestamp is signed, so a captured request
    cannot be replayed later with a fresh one."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class _Outcome:
    sent: bool
    refused: bool  # a 4xx: the receiver answered, and said no
    error: str  # for last_error and the log; never the URL's credentials nor the secret


class AuditForwarder:
    def __init__(
        self,
        *,
        engine: Engine,
        url: str,
        secret: SecretStr,
        announcer: Announcer,
        clock: Callable[[], datetime],
        settings: ForwardingPolicy | None = None,
        wall: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._engine = engine
        self._url = url
        self._shown_url = redact_url(url)
        self._secret = secret
        self._announcer = announcer
        self._clock = clock
        self._settings = settings or ForwardingPolicy()
        # The signature's timestamp is the receiver's replay window: always real Unix time.
        self._wall = wall
        self._ssl = ssl_context or ssl.create_default_context()
        self._claim_id = secrets.token_hex(16)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        log.info("forwarding the audit trail to %s (%d events waiting)", self._shown_url, self.backlog())
        self._thread = threading.Thread(target=self._run, name="jit-audit-forward", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the POST under way; the rest stays queued for the next start (or another replica)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self._settings.deadline + 5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                busy = self.step()
            except Exception:
                busy = False
                log_failure(log, "audit forwarding failed; it tries again in a moment")
            if not busy:
                self._stopping.wait(self._settings.poll_interval)

    # --- one event -----------------------------------------------------------------------------

    def step(self) -> bool:
        """Lease the head of the queue and POST it once; False when there was nothing to try now."""
        now = self._clock()
        with session_scope(self._engine) as session:
            claim = forward_store.claim_head(
                session=session, now=now, claim_id=self._claim_id, lease_until=now + self._settings.lease
            )
        if claim is None:
            return False
        outcome = self._post(body_of(claim.event))
        if outcome.sent:
            with session_scope(self._engine) as session:
                now = self._clock()
                done = forward_store.mark_sent(session=session, seq=claim.seq, claim_id=self._claim_id, now=now)
                if not done:
                    log.warning("audit event %s was forwarded after its lease ran out", claim.seq)
            return True
        if outcome.refused:
            self._refused(claim, outcome)
        else:
            self._failed(claim, outcome)
        return True

    def _post(self, body: bytes) -> _Outcome:
        timestamp = str(int(self._wall()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self._secret.get_secret_value().encode(), timestamp, body),
        }
        budget = CallBudget.starting_now(self._settings.deadline, max_bytes=MAX_ANSWER_BYTES)
        try:
            with budgeted_client(budget, ssl_context=self._ssl, url=self._url) as http:
                answer = http.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException:
            return _Outcome(False, False, f"no complete answer within {self._settings.deadline:g} s")
        except httpx.HTTPError as exc:
            what = "answer too large" if budget.too_large else type(exc).__name__
            return _Outcome(False, False, what)
        if 200 <= answer.status_code < 300:
            return _Outcome(True, False, "")
        # The receiver answered, and not with yes: a 4xx, or a redirect (never followed: the signed
        # event goes only where JIT_AUDIT_WEBHOOK_URL says). 408 and 429 say "later", not "no".
        refused = answer.status_code < 500 and answer.status_code not in (408, 429)
        return _Outcome(False, refused, f"HTTP {answer.status_code}")

    def _backoff(self, attempts: int) -> float:
        return float(min(self._settings.first_retry * 2.0 ** max(attempts, 0), self._settings.max_retry))

    def _failed(self, claim: ForwardClaim, outcome: _Outcome) -> None:
        wait = self._backoff(claim.attempts)
        level = logging.WARNING if claim.attempts < 5 else logging.ERROR
        log.log(
            level,
            "the audit webhook %s did not take event %s (attempt %d): %s; retrying in %.1f s",
            self._shown_url,
            claim.seq,
            claim.attempts + 1,
            outcome.error,
            wait,
        )
        with session_scope(self._engine) as session:
            forward_store.put_back(
                session=session,
                seq=claim.seq,
                claim_id=self._claim_id,
                at=self._clock() + timedelta(seconds=wait),
                error=outcome.error,
                refused=False,
            )

    def _refused(self, claim: ForwardClaim, outcome: _Outcome) -> None:
        refusals = claim.refusals + 1
        hold = refusals >= self._settings.max_refusals
        wait = self._settings.refused_retry if hold else self._backoff(claim.attempts)
        now = self._clock()
        with session_scope(self._engine) as session:
            if not forward_store.put_back(
                session=session,
                seq=claim.seq,
                claim_id=self._claim_id,
                at=now + timedelta(seconds=wait),
                error=outcome.error,
                refused=True,
                hold=hold,
            ):
                return
            if hold and not claim.alerted:
                # Once per event, in the transaction that stops forwarding at it: the alert and the
                # trail's own record of it (which is itself queued, behind the refused event).
                status = one_line(outcome.error, 40)
                details: dict[str, str | int | None] = {"seq": claim.seq, "status": status, "refusals": refusals}
                append_event(
                    session=session,
                    at=now,
                    event_type=AuditEventType.AUDIT_FORWARDING_REFUSED.value,
                    actor=BOT_ACTOR,
                    request_id=None,
                    details=details,
                )
                self._announcer.alert(session, AlertKind.AUDIT_FORWARDING_REFUSED, None, **details)
        if hold:
            log.error(
                "the audit webhook %s refused event %s %d times (%s); forwarding stops at it, retrying it every %.0f s",
                self._shown_url,
                claim.seq,
                refusals,
                outcome.error,
                wait,
            )
        else:
            log.warning(
                "the audit webhook %s refused event %s (%s, %d of %d); retrying in %.1f s",
                self._shown_url,
                claim.seq,
                outcome.error,
                refusals,
                self._settings.max_refusals,
                wait,
            )

    # --- housekeeping --------------------------------------------------------------------------

    def backlog(self) -> int:
        with read_scope(self._engine) as session:
            return forward_store.backlog(session=session)

    def purge(self) -> int:
        with session_scope(self._engine) as session:
            return forward_store.purge(session=session, before=self._clock() - self._settings.keep_sent)
