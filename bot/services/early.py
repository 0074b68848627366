"""Ending access early (``/jit revoke``, the Revoke now button) and listing one's own requests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from bot.domain.audit import AuditEventType
from bot.domain.policy import Policy
from bot.domain.status import GrantStatus, RequestStatus
from bot.services.audit import record
from bot.services.identity import resolve_approvers
from bot.services.outbox import Announcer
from bot.services.ports import Directory, DirectoryError, RequestSnapshot
from bot.services.snapshots import load_snapshot, snapshot
from bot.store import grants as grant_store
from bot.store import requests as store
from bot.store.db import read_scope, session_scope
from bot.store.transitions import Audit, move_request


@dataclass
class EarlyEndService:
    engine: Engine
    policy: Policy
    directory: Directory
    announcer: Announcer
    clock: Callable[[], datetime]
    # Wakes the revocation engine now (a no-op without an IdP).
    wake: Callable[[datetime], None] = lambda _when: None

    def revoke(self, request_id: str, *, actor: str) -> str:
        """End an active grant now, or cancel one's own pending request. Returns the reply text.

        What can be done is read from the grant, not only from the request: a request that failed
        may still hold a refused token that is being revoked, and a grant being revoked says so.
        """
        with read_scope(self.engine) as session:
            request = store.get_request(session=session, request_id=request_id)
            if request is None:
                return f"There is no request `{request_id[:16]}`. `/jit list` shows yours."
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
            return "Only the requester or an approver of this resource can revoke it."
        if status == RequestStatus.PENDING.value:
            return self._cancel(request_id, actor=actor, requester=requester, now=now)
        if grant_status == GrantStatus.REVOKED.value:
            return f"Request `{request_id}` is {status}, so there is nothing to revoke: its token is revoked."
        if refusal is not None and refusal != grant_store.UNCHECKED:
            return (
                f"Request `{request_id}` is {status}: its token was never handed out and is being revoked at the IdP."
            )
        if grant_status == GrantStatus.REVOKING.value:
            return f"Grant `{request_id}` is already being revoked."
        if grant_status != GrantStatus.ACTIVE.value or refusal is not None:
            hint = " It is still being minted; try again in a moment." if status in ("approved", "minting") else ""
            return f"Request `{request_id}` is {status}, so there is nothing to revoke.{hint}"
        with session_scope(self.engine) as session:
            if not grant_store.expire_now(session=session, request_id=request_id, now=now):
                return f"Grant `{request_id}` is already being revoked."
            record(AuditEventType.REVOKE_REQUESTED, session=session, at=now, actor=actor, request_id=request_id)
        self.wake(now)
        return f"Revoking `{request_id}` now. The card and the requester are told once the IdP confirms."

    def _cancel(self, request_id: str, *, actor: str, requester: str, now: datetime) -> str:
        if actor != requester:
            return "Approvers decide pending requests with the Deny button on the card."
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
                return f"Request `{request_id}` was decided meanwhile; `/jit list` shows where it stands."
            self.announcer.card(session, load_snapshot(session, request_id, policy=self.policy))
        return f"Request `{request_id}` was cancelled."

    def _approvers(self, resource_name: str) -> frozenset[str]:
        resource = self.policy.resource(resource_name)
        if resource is None:
            return frozenset()
        try:
            return resolve_approvers(resource.approvers, directory=self.directory)
        except DirectoryError:
            return resource.user_approvers  # usergroups unknown right now: only listed users qualify

    def list_for(self, user: str) -> list[RequestSnapshot]:
        now = self.clock()
        with read_scope(self.engine) as session:
            rows = store.open_requests_of(session=session, requester=user)
            grants = {
                g.request_id: g for g in grant_store.grants_for(session=session, request_ids=[r.id for r in rows])
            }
            return [
                snapshot(
                    r,
                    store.votes_for(session=session, request_id=r.id),
                    policy=self.policy,
                    grant=grants.get(r.id),
                    now=now,
                )
                for r in rows
            ]
