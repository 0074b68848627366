"""Submitting a request: checks, storage, and (through the outbox) the approval card."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bot.domain.audit import AuditEventType
from bot.domain.commands import RequestDraft
from bot.domain.durations import format_duration
from bot.domain.policy import Policy
from bot.domain.status import RequestStatus
from bot.services import lifecycle
from bot.services.errors import TooManyPending
from bot.services.identity import resolve_subject
from bot.services.outbox import Announcer
from bot.services.ports import Directory
from bot.services.snapshots import RequestSnapshot, snapshot
from bot.store import requests as store
from bot.store.audit import append_event
from bot.store.db import session_scope
from bot.store.models import AccessRequest

log = logging.getLogger(__name__)

# Crockford base32 without easily confused letters; ids are read aloud and typed into /jit revoke.
_ID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_request_id() -> str:
    return "R" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def origin_key(kind: str, slack_id: str) -> str:
    """The idempotency key of a request created by one Slack interaction (its trigger, its view)."""
    return hashlib.sha256(f"{kind}:{slack_id}".encode()).hexdigest()


@dataclass
class RequestService:
    engine: Engine
    policy: Policy
    directory: Directory
    announcer: Announcer
    clock: Callable[[], datetime]

    def submit(self, draft: RequestDraft, *, requester: str, origin: str | None = None) -> RequestSnapshot:
        """Store a checked request; its approval card goes out through the outbox.

        Raises UnmappedRequester or TooManyPending before anything is stored. ``origin`` makes the
        call idempotent: the same Slack interaction delivered twice (a replay, a retry) gets the
        request the first delivery made, and nothing new is stored or posted.
        """
        resource = self.policy.resource(draft.resource)
        if resource is None:  # parse_command already checked; the policy is immutable while we run.
            raise RuntimeError(f"resource {draft.resource!r} vanished from the policy")
        subject = resolve_subject(requester, policy=self.policy, directory=self.directory)
        now = self.clock()
        row = AccessRequest(
            id=new_request_id(),
            requester_slack_id=requester,
            requester_subject=subject,
            resource=resource.name,
            audience=resource.audience,
            scopes=" ".join(draft.scopes),
            duration_seconds=int(draft.duration.total_seconds()),
            reason=draft.reason,
            approvals_required=resource.approvals_required,
            approver_channel=resource.approver_channel,
            status=RequestStatus.PENDING.value,
            created_at=now,
            updated_at=now,
            origin=origin,
        )
        try:
            with session_scope(self.engine) as session:
                if origin is not None and (earlier := store.request_by_origin(session=session, origin=origin)):
                    log.info("a repeated Slack delivery asked again for request %s; nothing new was made", earlier.id)
                    return snapshot(earlier, [], policy=self.policy)
                self._check_quota(session, requester)
                store.add_request(session=session, request=row)
                append_event(
                    session=session,
                    at=now,
                    event_type=AuditEventType.REQUEST_SUBMITTED.value,
                    actor=requester,
                    request_id=row.id,
                    details={
                        "resource": row.resource,
                        "scopes": list(draft.scopes),
                        "duration_seconds": row.duration_seconds,
                        "reason": row.reason,
                        "subject": subject,
                    },
                )
                pending = snapshot(row, [], policy=self.policy)
                self.announcer.submitted(session, pending)
                lifecycle.note(
                    session,
                    lifecycle.Step.SUBMITTED,
                    pending,
                    scopes=draft.scopes,
                    duration=format_duration(draft.duration),
                )
        except IntegrityError:
            # Two deliveries of one interaction raced past the lookup; the other one made the request.
            if origin is None:
                raise
            with session_scope(self.engine) as session:
                earlier = store.request_by_origin(session=session, origin=origin)
                if earlier is None:
                    raise
                return snapshot(earlier, [], policy=self.policy)
        return pending

    def _check_quota(self, session: Session, requester: str) -> None:
        limit = self.policy.limits.pending_per_requester
        if session.get_bind().dialect.name == "postgresql":
            # Serialise one requester's submissions so two at once cannot both squeeze under the limit.
            session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:who))"), {"who": f"jit-quota:{requester}"})
        pending = store.count_in_status(
            session=session, requester=requester, statuses=frozenset({RequestStatus.PENDING})
        )
        if pending >= limit:
            raise TooManyPending(pending=pending, limit=limit)
