"""Minting: approved request -> RFC 8693 token exchange -> encrypted grant -> one-time pickup link."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from bot.domain.policy import Policy
from bot.domain.status import RequestStatus, VoteChoice
from bot.idp.assertion import ApprovalClaims, subject_assertion
from bot.idp.client import ExchangedToken, IdPClient
from bot.idp.errors import IdPError
from bot.idp.keys import SigningKey
from bot.services.announce import Announcer, load_snapshot
from bot.services.audit import AuditEventType, record
from bot.services.ports import Notifier, RequestSnapshot
from bot.store import grants as grant_store
from bot.store import requests as store
from bot.store.crypto import TokenCipher, fingerprint, pickup_hash
from bot.store.db import session_scope
from bot.store.models import AccessRequest, Grant

log = logging.getLogger(__name__)

PICKUP_LINK_LIFETIME = timedelta(minutes=10)


@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts and 5xx are retried with exponential backoff until ``budget_seconds`` is spent."""

    budget_seconds: float = 10.0
    first_delay: float = 0.25
    attempt_timeout: float = 4.0


@dataclass
class MintService:
    engine: Engine
    policy: Policy
    idp: IdPClient
    signing_key: SigningKey
    cipher: TokenCipher
    notifier: Notifier
    clock: Callable[[], datetime]
    public_url: str
    retry: RetryPolicy = RetryPolicy()
    # Told each new grant's expiry, so the revocation engine wakes exactly then.
    on_grant_active: Callable[[datetime], None] = lambda _expires_at: None
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self._announce = Announcer(engine=self.engine, policy=self.policy, notifier=self.notifier, clock=self.clock)

    def mint(self, request_id: str) -> RequestSnapshot | None:
        """Mint the token for an approved request. Returns None if someone else is minting it.

        The guarded ``approved -> minting`` transition is what makes one approval mint one token,
        whatever races or retries led here.
        """
        now = self.clock()
        with session_scope(self.engine) as session:
            if not store.transition(
                session=session,
                request_id=request_id,
                from_status=RequestStatus.APPROVED,
                to_status=RequestStatus.MINTING,
                now=now,
            ):
                return None
            request = store.get_request(session=session, request_id=request_id)
            assert request is not None
            approvers = tuple(
                v.voter_slack_id
                for v in store.votes_for(session=session, request_id=request_id)
                if v.choice == VoteChoice.APPROVE.value
            )
            record(
                AuditEventType.MINT_STARTED,
                session=session,
                at=now,
                actor="jit-bot",
                request_id=request_id,
                audience=request.audience,
                scopes=request.scope_list,
                subject=request.requester_subject,
            )
        expires_at = now + timedelta(seconds=request.duration_seconds)
        try:
            token = self._exchange(request, approvers, expires_at)
        except IdPError as exc:
            return self._fail(request_id, exc.code, exc.description)
        except Exception:
            # A bug must not leave the request in `minting` with nobody told.
            log.exception("unexpected error minting %s", request_id)
            return self._fail(request_id, "internal_error", "unexpected error in the bot; see its logs")
        problem = self._check(request, token)
        if problem is not None:
            return self._refuse_token(request, token, problem)
        return self._activate(request, token, started_at=now, expires_at=expires_at)

    # --- the exchange ----------------------------------------------------------------------------

    def _exchange(self, request: AccessRequest, approvers: tuple[str, ...], expires_at: datetime) -> ExchangedToken:
        deadline = time.monotonic() + self.retry.budget_seconds
        delay = self.retry.first_delay
        attempt = 0
        while True:
            attempt += 1
            now = self.clock()
            # A fresh assertion (new jti) per attempt: the IdP rightly refuses a replayed one.
            assertion, jti = subject_assertion(
                key=self.signing_key,
                issuer=self.public_url,
                subject=request.requester_subject,
                audience=self.idp.issuer,
                approval=ApprovalClaims(
                    request_id=request.id,
                    resource=request.resource,
                    scopes=request.scope_list,
                    approvers=approvers,
                    reason=request.reason,
                    expires_at=expires_at,
                ),
                now=now,
            )
            remaining = deadline - time.monotonic()
            try:
                return self.idp.exchange(
                    assertion=assertion,
                    audience=request.audience,
                    scopes=request.scope_list,
                    lifetime_seconds=max(1, int((expires_at - now).total_seconds())),
                    timeout=max(0.5, min(self.retry.attempt_timeout, remaining)),
                )
            except IdPError as exc:
                log.warning("token exchange for %s, attempt %d: %s", request.id, attempt, exc.code)
                remaining = deadline - time.monotonic()
                if not exc.transient or remaining <= delay:
                    if exc.transient:
                        raise IdPError(
                            exc.code, f"{exc.description or exc.code}; gave up after {attempt} attempts", transient=True
                        ) from None
                    raise
                self._audit_retry(request.id, attempt, exc, jti)
                self.sleep(delay)
                delay = min(delay * 2, 4.0)

    def _audit_retry(self, request_id: str, attempt: int, exc: IdPError, jti: str) -> None:
        with session_scope(self.engine) as session:
            record(
                AuditEventType.MINT_RETRY,
                session=session,
                at=self.clock(),
                actor="jit-bot",
                request_id=request_id,
                attempt=attempt,
                error=exc.code,
                assertion_jti=jti,
            )

    # --- checking the answer ---------------------------------------------------------------------

    def _check(self, request: AccessRequest, token: ExchangedToken) -> tuple[str, str] | None:
        approved = set(request.scope_list)
        granted = set(token.scope) if token.scope is not None else approved
        if not granted <= approved:
            extra = " ".join(sorted(granted - approved))
            return "scope_wider_than_approved", f"the IdP granted scopes that were not approved: {extra}"
        try:
            self.idp.verify_jwt_access_token(token.access_token, audience=request.audience)
        except IdPError as exc:
            return exc.code, exc.description
        return None

    def _refuse_token(self, request: AccessRequest, token: ExchangedToken, problem: tuple[str, str]) -> RequestSnapshot:
        code, detail = problem
        revoked = "revoked at the IdP"
        try:
            self.idp.revoke(token.access_token)
        except IdPError as exc:
            revoked = f"REVOCATION FAILED ({exc.code}); revoke it at the IdP by hand"
            log.error("could not revoke refused token for %s: %s", request.id, exc.code)
        self._announce.alert(
            f":rotating_light: Grant `{request.id}` was failed: {detail}. The token "
            f"(fingerprint `{fingerprint(token.access_token)}`) was {revoked}."
        )
        return self._fail(
            request.id, code, f"{detail}; token {revoked}", token_fingerprint=fingerprint(token.access_token)
        )

    # --- outcomes --------------------------------------------------------------------------------

    def _fail(
        self, request_id: str, code: str, detail: str, *, token_fingerprint: str | None = None
    ) -> RequestSnapshot:
        now = self.clock()
        with session_scope(self.engine) as session:
            store.transition(
                session=session,
                request_id=request_id,
                from_status=RequestStatus.MINTING,
                to_status=RequestStatus.FAILED,
                now=now,
                failure_code=code[:64],
                failure_detail=detail[:500],
            )
            record(
                AuditEventType.MINT_FAILED,
                session=session,
                at=now,
                actor="jit-bot",
                request_id=request_id,
                error=code,
                detail=detail,
                token_fingerprint=token_fingerprint,
            )
            failed = load_snapshot(session, request_id, policy=self.policy)
        self._announce.outcome(failed)
        return failed

    def _activate(
        self, request: AccessRequest, token: ExchangedToken, *, started_at: datetime, expires_at: datetime
    ) -> RequestSnapshot:
        now = self.clock()
        pickup_id = secrets.token_urlsafe(32)
        link_expires_at = min(now + PICKUP_LINK_LIFETIME, expires_at)
        granted = token.scope if token.scope is not None else request.scope_list
        lifetime_warning = token.expires_in is not None and token.expires_in > request.duration_seconds
        if lifetime_warning:
            log.warning(
                "IdP token for %s lives %ss, longer than the approved %ss; revocation at expiry is the cut-off",
                request.id,
                token.expires_in,
                request.duration_seconds,
            )
        with session_scope(self.engine) as session:
            grant_store.add_grant(
                session=session,
                grant=Grant(
                    request_id=request.id,
                    status="active",
                    audience=request.audience,
                    granted_scopes=" ".join(granted),
                    token_type=token.token_type,
                    token_ciphertext=self.cipher.encrypt(token.access_token),
                    token_fingerprint=fingerprint(token.access_token),
                    # The grant's clock started when minting did: expires_at was promised to the IdP then.
                    issued_at=started_at,
                    expires_at=expires_at,
                    idp_expires_in=token.expires_in,
                    pickup_hash=pickup_hash(pickup_id),
                    pickup_expires_at=link_expires_at,
                ),
            )
            store.transition(
                session=session,
                request_id=request.id,
                from_status=RequestStatus.MINTING,
                to_status=RequestStatus.ACTIVE,
                now=now,
            )
            record(
                AuditEventType.GRANT_ACTIVE,
                session=session,
                at=now,
                actor="jit-bot",
                request_id=request.id,
                token_fingerprint=fingerprint(token.access_token),
                granted_scopes=list(granted),
                audience=request.audience,
                expires_at=expires_at.isoformat(),
                idp_expires_in=token.expires_in,
                idp_lifetime_exceeds_grant=lifetime_warning,
            )
            active = load_snapshot(session, request.id, policy=self.policy)
        self.on_grant_active(expires_at)
        self._announce.outcome(active, pickup=(f"{self.public_url}/pickup/{pickup_id}", link_expires_at))
        return active
