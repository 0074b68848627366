"""Submitting a request: checks, storage, the approval card."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from bot.domain.commands import RequestDraft
from bot.domain.policy import Policy
from bot.domain.status import RequestStatus
from bot.services.announce import Announcer
from bot.services.audit import AuditEventType, record
from bot.services.errors import DeliveryFailed
from bot.services.identity import resolve_subject
from bot.services.ports import DeliveryError, Directory, Notifier, RequestSnapshot
from bot.services.snapshots import snapshot
from bot.store import requests as store
from bot.store.db import session_scope
from bot.store.models import AccessRequest

log = logging.getLogger(__name__)

# Crockford base32 without easily confused letters; ids are read aloud and typed into /jit revoke.
_ID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_request_id() -> str:
    return "R" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def normalise_request_id(text: str) -> str:
    return text.strip().upper()


@dataclass
class RequestService:
    engine: Engine
    policy: Policy
    directory: Directory
    notifier: Notifier
    clock: Callable[[], datetime]

    def submit(self, draft: RequestDraft, *, requester: str) -> RequestSnapshot:
        """Store a checked request and post its approval card.

        Raises UnmappedRequester before anything is stored, and DeliveryFailed (after cancelling the
        request) when the card cannot be posted, so no request is ever left pending unseen.
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
        )
        with session_scope(self.engine) as session:
            store.add_request(session=session, request=row)
            record(
                AuditEventType.REQUEST_SUBMITTED,
                session=session,
                at=now,
                actor=requester,
                request_id=row.id,
                resource=row.resource,
                scopes=list(draft.scopes),
                duration_seconds=row.duration_seconds,
                reason=row.reason,
                subject=subject,
            )
            pending = snapshot(row, [], policy=self.policy)

        try:
            channel, ts = self.notifier.post_card(pending)
        except DeliveryError as exc:
            self._cancel_unposted(row.id, requester, str(exc))
            raise DeliveryFailed(
                f"The approval card could not be posted to <#{resource.approver_channel}> (Slack said "
                f"`{exc}`), so request `{row.id}` was cancelled. Ask an admin to invite the bot to that "
                "channel, then try again."
            ) from None

        with session_scope(self.engine) as session:
            store.set_card(session=session, request_id=row.id, channel=channel, ts=ts)
            record(
                AuditEventType.CARD_POSTED,
                session=session,
                at=self.clock(),
                actor="jit-bot",
                request_id=row.id,
                channel=channel,
                ts=ts,
            )
            stored = store.get_request(session=session, request_id=row.id)
            assert stored is not None
            posted = snapshot(stored, [], policy=self.policy)
        Announcer(engine=self.engine, policy=self.policy, notifier=self.notifier, clock=self.clock).summary(
            posted, "submitted"
        )
        return posted

    def _cancel_unposted(self, request_id: str, requester: str, slack_error: str) -> None:
        now = self.clock()
        with session_scope(self.engine) as session:
            store.transition(
                session=session,
                request_id=request_id,
                from_status=RequestStatus.PENDING,
                to_status=RequestStatus.CANCELLED,
                now=now,
                decided_at=now,
            )
            record(
                AuditEventType.REQUEST_CANCELLED,
                session=session,
                at=now,
                actor="jit-bot",
                request_id=request_id,
                cause="approval card could not be posted",
                slack_error=slack_error,
                requester=requester,
            )
