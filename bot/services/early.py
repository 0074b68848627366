"""Ending access early (``/jit revoke``, the Revoke now button) and listing one's own requests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from bot.domain.policy import Policy
from bot.domain.status import RequestStatus
from bot.services.announce import Announcer, load_snapshot
from bot.services.audit import AuditEventType, record
from bot.services.identity import resolve_approvers
from bot.services.ports import Directory, DirectoryError, Notifier, RequestSnapshot
from bot.services.snapshots import snapshot
from bot.store import grants as grant_store
from bot.store import requests as store
from bot.store.db import session_scope


@dataclass
class EarlyEndService:
    engine: Engine
    policy: Policy
    directory: Directory
    notifier: Notifier
    clock: Callable[[], datetime]
    # Wakes the revocation engine now (set when an IdP is configured).
    on_schedule: Callable[[datetime], None] | None = None

    def revoke(self, request_id: str, *, actor: str) -> str:
        """End an active grant now, or cancel one's own pending request. Returns the reply text."""
        with session_scope(self.engine) as session:
            request = store.get_request(session=session, request_id=request_id)
            if request is None:
                return f"There is no request `{request_id[:16]}`. `/jit list` shows yours."
            requester, resource_name, status = request.requester_slack_id, request.resource, request.status
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
        if status != RequestStatus.ACTIVE.value:
            hint = " It is still being minted; try again in a moment." if status in ("approved", "minting") else ""
            return f"Request `{request_id}` is {status}, so there is nothing to revoke.{hint}"
        with session_scope(self.engine) as session:
            if not grant_store.expire_now(session=session, request_id=request_id, now=now):
                return f"Grant `{request_id}` is already being revoked."
            record(
                AuditEventType.REVOKE_REQUESTED,
                session=session,
                at=now,
                actor=actor,
                request_id=request_id,
            )
        if self.on_schedule is not None:
            self.on_schedule(now)
        return f"Revoking `{request_id}` now. The card and the requester are told once the IdP confirms."

    def _cancel(self, request_id: str, *, actor: str, requester: str, now: datetime) -> str:
        if actor != requester:
            return "Approvers decide pending requests with the Deny button on the card."
        with session_scope(self.engine) as session:
            if not store.transition(
                session=session,
                request_id=request_id,
                from_status=RequestStatus.PENDING,
                to_status=RequestStatus.CANCELLED,
                now=now,
                decided_at=now,
                decided_by=actor,
            ):
                return f"Request `{request_id}` was decided meanwhile; `/jit list` shows where it stands."
            record(
                AuditEventType.REQUEST_CANCELLED,
                session=session,
                at=now,
                actor=actor,
                request_id=request_id,
                cause="cancelled by the requester",
            )
            cancelled = load_snapshot(session, request_id, policy=self.policy)
        Announcer(engine=self.engine, policy=self.policy, notifier=self.notifier, clock=self.clock).card(cancelled)
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
        with session_scope(self.engine) as session:
            rows = store.open_requests_of(session=session, requester=user)
            grants = {
                g.request_id: g for g in grant_store.active_for(session=session, request_ids=[r.id for r in rows])
            }
            return [
                snapshot(
                    r, store.votes_for(session=session, request_id=r.id), policy=self.policy, grant=grants.get(r.id)
                )
                for r in rows
            ]
