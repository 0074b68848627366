"""Ending access early: ``/jit revoke`` (or ``cancel``) and the Revoke now button."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine
from sqlmodel import Session

from bot.domain.audit import AuditEventType
from bot.domain.policy import Policy
from bot.domain.status import GrantStatus, RequestStatus
from bot.services import lifecycle
from bot.services.audit import record
from bot.services.extensions import cancel_pending_extension
from bot.services.identity import OnSlackFailure, resolve_approvers
from bot.services.outbox import Announcer
from bot.services.ports import Directory
from bot.services.snapshots import load_snapshot
from bot.store import grants as grant_store
from bot.store import requests as store
from bot.store.db import read_scope, session_scope
from bot.store.transitions import Audit, move_request


class RevokeOutcome(StrEnum):
    REVOKING = "revoking"  # the grant's revocation has begun
    CANCELLED = "cancelled"  # the requester's pending request is cancelled
    NO_SUCH_REQUEST = "no_such_request"
    NOT_ALLOWED = "not_allowed"  # neither the requester nor an approver
    APPROVER_ON_PENDING = "approver_on_pending"  # approvers decide pending requests on the card
    DECIDED_MEANWHILE = "decided_meanwhile"  # the cancel lost a race with a vote or the timeout
    TOKEN_REVOKED = "token_revoked"
    REFUSED_TOKEN = "refused_token"  # a token was refused and is being revoked; it was never handed out
    ALREADY_REVOKING = "already_revoking"
    NOTHING_TO_REVOKE = "nothing_to_revoke"


@dataclass(frozen=True)
class RevokeResult:
    outcome: RevokeOutcome
    # As given (NO_SUCH_REQUEST: as typed, which may be anything).
    request_id: str
    # The request's status, where the outcome reports it.
    status: str = ""
    # NOTHING_TO_REVOKE: the grant is still being minted, so trying again soon may work.
    still_minting: bool = False


@dataclass
class EarlyEndService:
    engine: Engine
    policy: Policy
    directory: Directory
    announcer: Announcer
    clock: Callable[[], datetime]
    # Wakes the revocation engine now (a no-op without an IdP).
    wake: Callable[[datetime], None] = lambda _when: None

    def revoke(self, request_id: str, *, actor: str) -> RevokeResult:
        """End an active grant now, or cancel one's own pending request.

        What can be done is read from the grant, not only from the request: a request that failed
        may still hold a refused token that is being revoked, and a grant being revoked says so.
        """
        with read_scope(self.engine) as session:
            request = store.get_request(session=session, request_id=request_id)
            if request is None:
                return RevokeResult(RevokeOutcome.NO_SUCH_REQUEST, request_id)
            requester, resource_name, status = request.requester_slack_id, request.resource, request.status
            grant = grant_store.get_grant(session=session, request_id=request_id)
            grant_status, refusal = (grant.status, grant.refusal) if grant is not None else (None, None)
        allowed = actor == requester or actor in self._approvers(resource_name)
        now = self.clock()
        if not allowed:
            with session_scope(self.engine) as session:
                record(
                    AuditEventType.UNAUTHORIZED_ATTEMPT,
                    session=session,
                    at=now,
                    actor=actor,
                    request_id=request_id,
                    action="revoke",
                    refusal="not_requester_or_approver",
                    request_status=status,
                )
            return RevokeResult(RevokeOutcome.NOT_ALLOWED, request_id, status)
        if status == RequestStatus.PENDING.value:
            return self._cancel(request_id, actor=actor, requester=requester, now=now)
        if grant_status == GrantStatus.REVOKED.value:
            return RevokeResult(RevokeOutcome.TOKEN_REVOKED, request_id, status)
        if refusal is not None and refusal != grant_store.UNCHECKED:
            return RevokeResult(RevokeOutcome.REFUSED_TOKEN, request_id, status)
        if grant_status == GrantStatus.REVOKING.value:
            return RevokeResult(RevokeOutcome.ALREADY_REVOKING, request_id, status)
        if grant_status != GrantStatus.ACTIVE.value or refusal is not None:
            minting = status in (RequestStatus.APPROVED.value, RequestStatus.MINTING.value)
            return RevokeResult(RevokeOutcome.NOTHING_TO_REVOKE, request_id, status, still_minting=minting)
        with session_scope(self.engine) as session:
            if not self.end_now(session=session, request_id=request_id, now=now, actor=actor, by=actor):
                return RevokeResult(RevokeOutcome.ALREADY_REVOKING, request_id, status)
        self.wake(now)
        return RevokeResult(RevokeOutcome.REVOKING, request_id, status)

    def end_now(self, *, session: Session, request_id: str, now: datetime, actor: str, by: str) -> bool:
        """End an active, handed-out grant now, in the caller's transaction: what Revoke now does once
        it is allowed, and what the bot does itself when a grant's reason ends (``by`` is what the
        card and DMs say ended it). False if it is not such a grant (already ending, say). The caller
        wakes the revocation engine once its transaction has committed."""
        # The chain's rows first grant first, as a pickup takes them: the two wait, neither is killed.
        grant_store.lock_chain_above(session=session, request_id=request_id)
        if not grant_store.expire_now(session=session, request_id=request_id, now=now, by=by):
            return False
        record(AuditEventType.REVOKE_REQUESTED, session=session, at=now, actor=actor, request_id=request_id)
        lifecycle.note(session, lifecycle.Step.REVOKE_REQUESTED, request_id, by=by)
        self._end_chain(session, request_id, now=now, actor=actor, by=by)
        return True

    def _end_chain(self, session: Session, request_id: str, *, now: datetime, actor: str, by: str) -> None:
        """The other live grants of the chain end with this one, so no link of it carries the access on
        past this revocation: each extension after it minted but not yet picked up (its link would hand
        out a new token), however deep the chain, and the grants before it not yet replaced (their
        tokens are the ones the requester still holds until this one is picked up). A grant that has
        been replaced already is left to its own revocation. An extension still pending at the chain's
        end is cancelled now, not once the revocation is confirmed (which a failing IdP can put off for
        hours): until then approvers were reminded of it, escalated to and could approve more time on
        access that had ended. One being minted is refused at its activation."""
        later = request_id
        while (extension := store.latest_extension(session=session, request_id=later)) is not None:
            if extension[1] == RequestStatus.PENDING.value:
                cancel_pending_extension(session, later, now=now, policy=self.policy, announcer=self.announcer)
                break
            if extension[1] != RequestStatus.ACTIVE.value:
                break
            later = extension[0]
            self._end_link(session, later, f"its grant {request_id} was revoked", now=now, actor=actor, by=by)
        request = store.get_request(session=session, request_id=request_id)
        earlier = request.extends if request is not None else None
        while earlier is not None:
            grant = grant_store.get_grant(session=session, request_id=earlier, fresh=True)
            if grant is None or grant.replaced_by is not None:
                break
            self._end_link(session, earlier, f"its extension {request_id} was revoked", now=now, actor=actor, by=by)
            above = store.get_request(session=session, request_id=earlier)
            earlier = above.extends if above is not None else None

    @staticmethod
    def _end_link(session: Session, request_id: str, cause: str, *, now: datetime, actor: str, by: str) -> None:
        if grant_store.expire_now(session=session, request_id=request_id, now=now, by=by):
            record(
                AuditEventType.REVOKE_REQUESTED,
                session=session,
                at=now,
                actor=actor,
                request_id=request_id,
                cause=cause,
            )
            lifecycle.note(session, lifecycle.Step.REVOKE_REQUESTED, request_id, by=by)

    def _cancel(self, request_id: str, *, actor: str, requester: str, now: datetime) -> RevokeResult:
        if actor != requester:
            return RevokeResult(RevokeOutcome.APPROVER_ON_PENDING, request_id, RequestStatus.PENDING.value)
        with session_scope(self.engine) as session:
            if not move_request(
                session=session,
                request_id=request_id,
                source=RequestStatus.PENDING,
                target=RequestStatus.CANCELLED,
                now=now,
                event=Audit(
                    AuditEventType.REQUEST_CANCELLED, actor=actor, details={"cause": "cancelled by the requester"}
                ),
                decided_at=now,
                decided_by=actor,
            ):
                return RevokeResult(RevokeOutcome.DECIDED_MEANWHILE, request_id)
            view = load_snapshot(session, request_id, policy=self.policy)
            # No DM: the requester did it themselves.
            self.announcer.card(session, view)
            self.announcer.audit_line(session, view)
            lifecycle.note(session, lifecycle.Step.CANCELLED, view, by=actor)
        return RevokeResult(RevokeOutcome.CANCELLED, request_id, RequestStatus.CANCELLED.value)

    def _approvers(self, resource_name: str) -> frozenset[str]:
        resource = self.policy.resource(resource_name)
        if resource is None:
            return frozenset()
        # Slack down: approvers the policy names by id can still end a grant, and so can the requester.
        return resolve_approvers(resource, directory=self.directory, on_slack_failure=OnSlackFailure.LISTED_USERS_ONLY)
