"""Minting: approved request -> RFC 8693 token exchange -> encrypted grant -> one-time pickup link.

The rule this module keeps: once the IdP has handed over a token, the token is in the grant table,
as a usable grant or as one due for revocation, before anything else is done with it. It is
stored the moment it arrives, marked ``unchecked`` with a short hold; only when every check has
passed, and the request is still ours to activate, does it become a grant with a pickup link. An
over-scoped token, a late one, one whose answer was odd, one that fails verification, or one whose
checks crashed, is refused: due at once, so the revocation engine revokes it and proves it dead.
A crash at any point after the token was stored leaves it to the revocation engine too.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from bot.domain.audit import AuditEventType
from bot.domain.policy import Policy
from bot.domain.status import GrantStatus, RequestStatus, VoteChoice
from bot.idp.assertion import ApprovalClaims, subject_assertion
from bot.idp.client import UNHOLDABLE_TOKEN, ExchangedToken, IdPClient
from bot.idp.errors import IdPError
from bot.idp.keys import SigningKey
from bot.services import lifecycle
from bot.services.audit import record
from bot.services.extensions import EXTENDED_GRANT_ENDED, ended_early, window_end
from bot.services.notices import AlertKind
from bot.services.outbox import Announcer
from bot.services.snapshots import load_snapshot
from bot.services.workers import log_failure, submit_logged
from bot.store import grants as grant_store
from bot.store import requests as store
from bot.store.crypto import TokenCipher, fingerprint, pickup_hash
from bot.store.db import session_scope
from bot.store.models import AccessRequest, Grant
from bot.store.transitions import BOT_ACTOR, Audit, fail_mint, move_request

log = logging.getLogger(__name__)

PICKUP_LINK_LIFETIME = timedelta(minutes=10)
# How long a fresh token is held, unchecked, before the revocation engine takes it anyway. The
# checks are at most a JWKS fetch or two, each under the IdP call deadline; a bot that dies while
# checking leaves the token to be revoked after this.
CHECK_HOLD = timedelta(seconds=60)
# Tokens longer than this are refused (and revoked): no honest access token is this big.
MAX_TOKEN_CHARS = 16 * 1024
# Pauses between tries to store a token the database refused (a failover takes a few seconds).
STORE_RETRY_PAUSES = (0.0, 0.25, 1.0, 2.0)
# Clock difference allowed between the bot and the IdP when reading a JWT's exp.
JWT_CLOCK_LEEWAY = timedelta(seconds=60)


@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts, 429 and 5xx are retried with exponential backoff until ``budget_seconds`` is spent.

    ``attempt_timeout`` is the total deadline of one exchange (connect to last byte), so a mint
    ends within about ``budget_seconds + attempt_timeout`` whatever the IdP does.
    """

    budget_seconds: float = 10.0
    first_delay: float = 0.25
    attempt_timeout: float = 4.0


@dataclass(frozen=True)
class Refusal:
    code: str
    detail: str


class MintQueue:
    """Hands approved requests to the mint workers, each at most once at a time."""

    def __init__(self, workers: Executor, *, mint: Callable[[str], object]) -> None:
        self._workers = workers
        self._mint = mint
        self._lock = threading.Lock()
        self._queued: set[str] = set()

    def submit(self, request_id: str) -> None:
        mint = self._mint
        with self._lock:
            if request_id in self._queued:
                return
            self._queued.add(request_id)

        def run() -> None:
            try:
                mint(request_id)
            finally:
                with self._lock:
                    self._queued.discard(request_id)

        submit_logged(self._workers, log, f"mint of {request_id} failed", run)


@dataclass
class MintService:
    engine: Engine
    policy: Policy
    idp: IdPClient
    signing_key: SigningKey
    cipher: TokenCipher
    announcer: Announcer
    clock: Callable[[], datetime]
    public_url: str
    # Told when a grant is due (a refused token at once; a new grant at its expiry).
    wake: Callable[[datetime], None]
    retry: RetryPolicy = RetryPolicy()
    sleep: Callable[[float], None] = time.sleep

    def mint(self, request_id: str) -> None:
        """Mint the token for an approved request. Does nothing if someone else is minting it.

        The guarded ``approved -> minting`` move is what makes one approval mint one token,
        whatever races or retries led here.
        """
        now = self.clock()
        with session_scope(self.engine) as session:
            request = store.get_request(session=session, request_id=request_id)
            if request is None:
                return
            if not move_request(
                session=session,
                request_id=request_id,
                source=RequestStatus.APPROVED,
                target=RequestStatus.MINTING,
                now=now,
                event=Audit(
                    AuditEventType.MINT_STARTED,
                    actor=BOT_ACTOR,
                    details={
                        "audience": request.audience,
                        "scopes": list(request.scope_list),
                        "subject": request.requester_subject,
                    },
                ),
            ):
                return
            session.refresh(request)
            approvers = tuple(
                v.voter_slack_id
                for v in store.votes_for(session=session, request_id=request_id)
                if v.choice == VoteChoice.APPROVE.value
            )
            # An extension's window runs on from the end of the grant it extends; none once that grant
            # has ended, and then nothing is minted: access is never given past a revocation.
            window = window_end(session, request, now)
            if window is None:
                self._fail_in(
                    session,
                    request_id,
                    EXTENDED_GRANT_ENDED,
                    f"the grant of {request.extends} had ended before this extension could be issued",
                )
                return
        expires_at = window
        try:
            token = self._exchange(request, approvers, expires_at)
        except IdPError as exc:
            if exc.code == UNHOLDABLE_TOKEN:
                self._unholdable(request_id, exc)
                return
            self._fail(request_id, exc.code, exc.description)
            return
        except Exception:
            ref = log_failure(log, f"unexpected error minting {request_id}")
            self._fail(request_id, "internal_error", f"unexpected error in the bot (ref {ref})")
            return
        self._hold(request, token, started_at=now, expires_at=expires_at)

    # --- the exchange ----------------------------------------------------------------------------

    def _claims_of(self, resource_name: str) -> dict[str, str | bool | int | float]:
        # As the policy says now: a resource dropped from it since the request carries no claims.
        resource = self.policy.resource(resource_name)
        return dict(resource.claims) if resource is not None else {}

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
                    claims=self._claims_of(request.resource),
                    break_glass=request.break_glass,
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
                wait = max(delay, exc.retry_after or 0.0)
                remaining = deadline - time.monotonic()
                if not exc.transient or remaining <= wait:
                    if exc.transient:
                        raise IdPError(
                            exc.code, f"{exc.description or exc.code}; gave up after {attempt} attempts", transient=True
                        ) from None
                    raise
                self._audit_retry(request.id, attempt, exc, jti)
                self.sleep(wait)
                delay = min(delay * 2, 4.0)

    def _audit_retry(self, request_id: str, attempt: int, exc: IdPError, jti: str) -> None:
        with session_scope(self.engine) as session:
            record(
                AuditEventType.MINT_RETRY,
                session=session,
                at=self.clock(),
                actor=BOT_ACTOR,
                request_id=request_id,
                attempt=attempt,
                error=exc.code,
                assertion_jti=jti,
            )

    # --- holding the token -----------------------------------------------------------------------

    def _hold(
        self, request: AccessRequest, token: ExchangedToken, *, started_at: datetime, expires_at: datetime
    ) -> None:
        """Store the token before anything else, then check it, then activate it or refuse it."""
        try:
            refusal = self._quick_refusal(request, token, expires_at)
            opaque = refusal is None and not self.idp.is_jwt(token.access_token)
        except Exception:
            ref = log_failure(log, f"unexpected error checking the token for {request.id}")
            refusal, opaque = Refusal("internal_error", f"the token's checks failed unexpectedly (ref {ref})"), False
        if opaque:
            # An opaque token: every check was the pure one above, so storing it and making it the
            # grant are one transaction (either both happen or neither). Should that transaction
            # fail, the token is stored on its own, unchecked, and activated after.
            try:
                with session_scope(self.engine) as session:
                    self._store_in(session, request, token, started_at=started_at, expires_at=expires_at, refusal=None)
                    late = self._activate_in(session, request, token, expires_at=expires_at)
            except Exception:
                log_failure(log, f"could not store and activate the token for {request.id} at once; storing it first")
            else:
                self.wake(self.clock() if late is not None else expires_at)
                return
        if not self._retrying(
            f"store the token minted for {request.id}",
            lambda: self._store(request, token, started_at=started_at, expires_at=expires_at, refusal=refusal),
        ):
            self._could_not_store(request.id, token, expires_at=expires_at)
            return
        if refusal is not None:
            self.wake(self.clock())
            return
        outlives_grant = False
        if not opaque:
            try:
                refusal, outlives_grant = self._verify(request, token, expires_at=expires_at)
            except Exception:
                ref = log_failure(log, f"unexpected error checking the token for {request.id}")
                refusal = Refusal("internal_error", f"the token's checks failed unexpectedly (ref {ref})")
        if refusal is not None:
            self._refuse(request.id, refusal, fingerprint(token.access_token))
            return
        # Stored but not yet activated: should this fail, the hold runs out and the engine revokes it.
        self._activate(request, token, expires_at=expires_at, outlives_grant=outlives_grant)

    def _retrying(self, what: str, step: Callable[[], None]) -> bool:
        """Run a database step, trying again after short pauses: a failover or a lock timeout
        should not turn a good token into a lost one."""
        for attempt, pause in enumerate(STORE_RETRY_PAUSES, start=1):
            if pause:
                self.sleep(pause)
            try:
                step()
            except Exception:
                log_failure(log, f"could not {what} (attempt {attempt} of {len(STORE_RETRY_PAUSES)})")
            else:
                return True
        return False

    def _quick_refusal(self, request: AccessRequest, token: ExchangedToken, expires_at: datetime) -> Refusal | None:
        """The checks that need no I/O: is this a token we may hand out at all?"""
        if token.anomaly is not None:
            return Refusal("invalid_response", f"the IdP's answer was malformed: {token.anomaly}")
        if len(token.access_token) > MAX_TOKEN_CHARS:
            return Refusal("token_too_large", f"the access token is {len(token.access_token)} characters long")
        approved = set(request.scope_list)
        granted = set(token.scope) if token.scope is not None else approved
        if not granted <= approved:
            extra = " ".join(sorted(granted - approved))
            return Refusal("scope_wider_than_approved", f"the IdP granted scopes that were not approved: {extra}")
        if self.clock() >= expires_at:
            return Refusal("token_too_late", "the token arrived after the grant would have ended")
        return None

    def _verify(
        self, request: AccessRequest, token: ExchangedToken, *, expires_at: datetime
    ) -> tuple[Refusal | None, bool]:
        """Verify a JWT access token, and read what it claims rather than what the answer said.

        A JWT is what a resource server reads, so its own ``scope``/``scp`` must be within what was
        approved, and its ``exp`` must not be later than the answer's ``expires_in`` said. Returns
        the refusal, if any, and whether the token outlives the grant (a warning, as for
        ``expires_in``: revocation at expiry is then the cut-off).
        """
        try:
            claims = self.idp.verify_jwt_access_token(token.access_token, audience=request.audience)
        except IdPError as exc:
            return Refusal(exc.code, exc.description), False
        if claims is None:
            return None, False
        approved = set(request.scope_list)
        for name in ("scope", "scp"):
            claimed = claims.get(name)
            if claimed is None:
                continue
            if isinstance(claimed, str):
                scopes = set(claimed.split())
            elif isinstance(claimed, list) and all(isinstance(s, str) for s in claimed):
                scopes = set(claimed)
            else:
                return Refusal("invalid_token", f"the access token's {name} claim is not a list of scopes"), False
            if not scopes <= approved:
                extra = " ".join(sorted(scopes - approved))
                return Refusal(
                    "scope_wider_than_approved", f"the access token claims scopes that were not approved: {extra}"
                ), False
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return Refusal("invalid_token", "the access token's exp is not a number"), False
        now = self.clock().timestamp()
        if token.expires_in is not None and exp > now + token.expires_in + JWT_CLOCK_LEEWAY.total_seconds():
            return Refusal(
                "invalid_response", "the access token's exp is later than the answer's expires_in said"
            ), False
        return None, exp > expires_at.timestamp() + JWT_CLOCK_LEEWAY.total_seconds()

    def _store(
        self,
        request: AccessRequest,
        token: ExchangedToken,
        *,
        started_at: datetime,
        expires_at: datetime,
        refusal: Refusal | None,
    ) -> None:
        with session_scope(self.engine) as session:
            self._store_in(session, request, token, started_at=started_at, expires_at=expires_at, refusal=refusal)

    def _store_in(
        self,
        session: Session,
        request: AccessRequest,
        token: ExchangedToken,
        *,
        started_at: datetime,
        expires_at: datetime,
        refusal: Refusal | None,
    ) -> None:
        now = self.clock()
        granted = token.scope if token.scope is not None else request.scope_list
        grant_store.add_grant(
            session=session,
            grant=Grant(
                request_id=request.id,
                status=GrantStatus.ACTIVE.value,
                audience=request.audience,
                granted_scopes=" ".join(granted)[:2048],
                token_type=token.token_type[:32],
                token_ciphertext=self.cipher.encrypt(token.access_token),
                token_fingerprint=fingerprint(token.access_token),
                # The grant's clock started when minting did: expires_at was promised to the IdP then.
                issued_at=started_at,
                # Unchecked: held briefly, then revoked unless the checks pass. Refused: due now.
                expires_at=now if refusal is not None else min(now + CHECK_HOLD, expires_at),
                idp_expires_in=token.expires_in,
                refusal=refusal.code if refusal is not None else grant_store.UNCHECKED,
            ),
        )
        record(
            AuditEventType.TOKEN_RECEIVED,
            session=session,
            at=now,
            actor=BOT_ACTOR,
            request_id=request.id,
            token_fingerprint=fingerprint(token.access_token),
            granted_scopes=list(granted),
            idp_expires_in=token.expires_in,
        )
        if refusal is not None:
            self._refused_in(session, request.id, refusal, fingerprint(token.access_token), now)

    def _could_not_store(self, request_id: str, token: ExchangedToken, *, expires_at: datetime) -> None:
        """The database refused the token, again and again. It exists only in this thread's memory
        now, so this thread keeps it until it is dead or in the grant table: each round it tries to
        store it as refused (the revocation engine then takes over) and to revoke it directly, until
        introspection proves it inactive or the grant's own end has passed."""
        ref = log_failure(log, f"could not store the token minted for {request_id}; revoking it directly")
        token_fingerprint = fingerprint(token.access_token)
        refusal = Refusal("token_unstored", f"the database refused the token at first (ref {ref})")
        pause = 1.0
        outcome = "not confirmed"
        while True:
            try:
                with session_scope(self.engine) as session:
                    request = store.get_request(session=session, request_id=request_id)
                    if request is None:
                        raise LookupError(request_id)
                    self._store_in(
                        session, request, token, started_at=self.clock(), expires_at=expires_at, refusal=refusal
                    )
            except Exception:
                log.warning("token %s for %s: still cannot store it", token_fingerprint, request_id)
            else:
                log.critical(
                    "token %s for %s is stored at last, as refused (ref %s)", token_fingerprint, request_id, ref
                )
                self.wake(self.clock())
                return
            try:
                self.idp.revoke(token.access_token)
                if not self.idp.introspect(token.access_token).get("active"):
                    outcome = "succeeded"
                    break
                outcome = "failed (still active)"
            except Exception as exc:
                outcome = f"failed ({exc.code if isinstance(exc, IdPError) else type(exc).__name__})"
            if self.clock() >= expires_at:
                break
            log.warning("token %s for %s: direct revocation %s; trying again", token_fingerprint, request_id, outcome)
            self.sleep(pause)
            pause = min(pause * 2, 30.0)
        log.critical(
            "token %s for %s could not be stored (ref %s); direct revocation %s",
            token_fingerprint,
            request_id,
            ref,
            outcome,
        )
        try:
            with session_scope(self.engine) as session:
                self.announcer.alert(
                    session, AlertKind.TOKEN_UNSTORED, request_id, fingerprint=token_fingerprint, revocation=outcome
                )
                self._fail_in(session, request_id, "internal_error", f"the token could not be stored (ref {ref})")
        except Exception:
            log_failure(log, f"could not record that {request_id} failed")

    # --- outcomes --------------------------------------------------------------------------------

    def _refuse(self, request_id: str, refusal: Refusal, token_fingerprint: str) -> None:
        now = self.clock()
        with session_scope(self.engine) as session:
            if not grant_store.refuse(session=session, request_id=request_id, refusal=refusal.code, now=now):
                log.warning("the token of %s was already being revoked when its checks failed", request_id)
            self._refused_in(session, request_id, refusal, token_fingerprint, now)
        self.wake(now)

    def _refused_in(
        self, session: Session, request_id: str, refusal: Refusal, token_fingerprint: str, now: datetime
    ) -> None:
        # Logged by _fail_in as the request's mint_failed line (or, if the request was failed
        # already, as "no longer minting"), with the refusal and the token's fingerprint.
        record(
            AuditEventType.TOKEN_REFUSED,
            session=session,
            at=now,
            actor=BOT_ACTOR,
            request_id=request_id,
            error=refusal.code,
            detail=refusal.detail,
            token_fingerprint=token_fingerprint,
        )
        self.announcer.alert(
            session,
            AlertKind.TOKEN_REFUSED,
            request_id,
            code=refusal.code,
            detail=refusal.detail,
            fingerprint=token_fingerprint,
        )
        self._fail_in(
            session,
            request_id,
            refusal.code,
            f"{refusal.detail}; the token was never handed out and is being revoked at the IdP",
            token_fingerprint=token_fingerprint,
        )

    def _unholdable(self, request_id: str, exc: IdPError) -> None:
        """The IdP issued something the bot cannot hold or send back: a person must revoke it."""
        log.critical("the IdP answered %s an access token the bot cannot hold: %s", request_id, exc.description)
        with session_scope(self.engine) as session:
            self.announcer.alert(session, AlertKind.TOKEN_UNHOLDABLE, request_id)
            self._fail_in(session, request_id, exc.code, exc.description)

    def _fail(self, request_id: str, code: str, detail: str) -> None:
        with session_scope(self.engine) as session:
            self._fail_in(session, request_id, code, detail)

    def _fail_in(
        self, session: Session, request_id: str, code: str, detail: str, *, token_fingerprint: str | None = None
    ) -> None:
        if fail_mint(
            session=session,
            request_id=request_id,
            code=code,
            detail=detail,
            now=self.clock(),
            token_fingerprint=token_fingerprint,
        ):
            view = load_snapshot(session, request_id, policy=self.policy)
            self.announcer.outcome(session, view)
            lifecycle.note(
                session,
                lifecycle.Step.MINT_FAILED,
                view,
                error=code,
                detail=detail,
                token_fingerprint=token_fingerprint,
            )
        else:
            log.warning(
                "request %s was no longer minting when its mint failed (%s: %s; token %s)",
                request_id,
                code,
                detail,
                token_fingerprint or "none",
            )

    def _activate(
        self, request: AccessRequest, token: ExchangedToken, *, expires_at: datetime, outlives_grant: bool
    ) -> None:
        with session_scope(self.engine) as session:
            late = self._activate_in(session, request, token, expires_at=expires_at, outlives_grant=outlives_grant)
        self.wake(self.clock() if late is not None else expires_at)

    def _activate_in(
        self,
        session: Session,
        request: AccessRequest,
        token: ExchangedToken,
        *,
        expires_at: datetime,
        outlives_grant: bool = False,
    ) -> Refusal | None:
        """The checked token becomes the grant, unless it lost its hold or its request; then it is refused."""
        now = self.clock()
        pickup_id = secrets.token_urlsafe(32)
        link_expires_at = min(now + PICKUP_LINK_LIFETIME, expires_at)
        granted = token.scope if token.scope is not None else request.scope_list
        # An extension's token lives from now to the old grant's end plus the extra time.
        approved_seconds = request.duration_seconds
        if request.extends is not None:
            approved_seconds = max(approved_seconds, int((expires_at - now).total_seconds()) + 1)
        lifetime_warning = outlives_grant or (token.expires_in is not None and token.expires_in > approved_seconds)
        if lifetime_warning:
            log.warning(
                "IdP token for %s lives longer than the approved %ss (expires_in %s, JWT exp later: %s); "
                "revocation at expiry is the cut-off",
                request.id,
                request.duration_seconds,
                token.expires_in,
                outlives_grant,
            )
        if ended_early(session, request):
            # The grant it extends was ended (revoked early) while this token was on its way: refused in
            # this same transaction, so its pickup link never works for a moment.
            late = Refusal(EXTENDED_GRANT_ENDED, f"the grant of {request.extends} was ended while this was minted")
            grant_store.refuse(session=session, request_id=request.id, refusal=late.code, now=now)
            self._refused_in(session, request.id, late, fingerprint(token.access_token), now)
            return late
        if not grant_store.activate(
            session=session,
            request_id=request.id,
            expires_at=expires_at,
            pickup_hash=pickup_hash(pickup_id),
            pickup_expires_at=link_expires_at,
        ):
            # The hold ran out first: the revocation engine already has the token.
            late = Refusal("checks_too_slow", "the token's checks outlasted its hold, so it is being revoked")
            self._refused_in(session, request.id, late, fingerprint(token.access_token), now)
            return late
        if not move_request(
            session=session,
            request_id=request.id,
            source=RequestStatus.MINTING,
            target=RequestStatus.ACTIVE,
            now=now,
            event=Audit(
                AuditEventType.GRANT_ACTIVE,
                actor=BOT_ACTOR,
                details={
                    "token_fingerprint": fingerprint(token.access_token),
                    "granted_scopes": list(granted),
                    "audience": request.audience,
                    "expires_at": expires_at.isoformat(),
                    "idp_expires_in": token.expires_in,
                    "idp_lifetime_exceeds_grant": lifetime_warning,
                },
            ),
        ):
            # Someone else ended the mint (it was declared interrupted): this token came too late.
            # Refused in this same transaction, so its pickup link never works for a moment.
            late = Refusal("token_too_late", "the token arrived after the request had been failed")
            grant_store.refuse(session=session, request_id=request.id, refusal=late.code, now=now)
            self._refused_in(session, request.id, late, fingerprint(token.access_token), now)
            return late
        active = load_snapshot(session, request.id, policy=self.policy)
        self.announcer.activated(
            session, active, url=f"{self.public_url}/pickup/{pickup_id}", link_expires_at=link_expires_at
        )
        lifecycle.note(
            session,
            lifecycle.Step.MINTED,
            active,
            scopes=granted,
            until=expires_at.isoformat(timespec="seconds"),
            token_fingerprint=fingerprint(token.access_token),
        )
        return None
