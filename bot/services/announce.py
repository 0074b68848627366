"""Telling people what happened: the card, the requester, the audit channel, alerts.

Every use case ends the same way once its transaction has committed, so they share this. Slack
being unreachable never undoes a committed state change: card and channel failures are logged, a
requester who could not be told is recorded in the audit trail, an alert that cannot be posted is
logged at ERROR.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session

from bot.domain.policy import Policy
from bot.services.audit import AuditEventType, record
from bot.services.ports import DeliveryError, Notifier, RequestSnapshot
from bot.services.snapshots import snapshot
from bot.store import grants as grant_store
from bot.store import requests as store
from bot.store.db import session_scope

log = logging.getLogger(__name__)


def load_snapshot(session: Session, request_id: str, *, policy: Policy) -> RequestSnapshot:
    """The request as committed, with its votes and grant."""
    request = store.get_request(session=session, request_id=request_id)
    if request is None:
        raise LookupError(f"request {request_id} does not exist")
    session.refresh(request)
    votes = store.votes_for(session=session, request_id=request_id)
    grant = grant_store.get_grant(session=session, request_id=request_id)
    return snapshot(request, votes, policy=policy, grant=grant)


@dataclass
class Announcer:
    engine: Engine
    policy: Policy
    notifier: Notifier
    clock: Callable[[], datetime]

    def card(self, request: RequestSnapshot) -> None:
        try:
            self.notifier.update_card(request)
        except DeliveryError as exc:
            log.warning("card for %s could not be updated: %s", request.id, exc)

    def requester(self, request: RequestSnapshot, *, pickup: tuple[str, datetime] | None = None) -> None:
        try:
            if pickup is not None:
                self.notifier.send_pickup_link(request, pickup[0], pickup[1])
            else:
                self.notifier.tell_requester(request)
        except DeliveryError as exc:
            log.error("requester of %s could not be told (%s): %s", request.id, request.status, exc)
            with session_scope(self.engine) as session:
                record(
                    AuditEventType.DELIVERY_FAILED,
                    session=session,
                    at=self.clock(),
                    actor="jit-bot",
                    request_id=request.id,
                    what="pickup link DM" if pickup else f"{request.status} DM",
                    slack_error=str(exc),
                )

    def summary(self, request: RequestSnapshot, event: str) -> None:
        channel = self.policy.channels.audit
        if channel is None:
            return
        try:
            self.notifier.audit_summary(channel, request, event)
        except DeliveryError as exc:
            # The audit table is the record; the channel is a convenience.
            log.warning("audit summary for %s could not be posted: %s", request.id, exc)

    def outcome(self, request: RequestSnapshot, *, pickup: tuple[str, datetime] | None = None) -> None:
        """A request reached a new state: card, requester and audit channel, in that order."""
        self.card(request)
        self.requester(request, pickup=pickup)
        self.summary(request, request.status)

    def alert(self, text: str) -> None:
        channel = self.policy.channels.audit
        if channel is None:
            log.error("ALERT (no audit channel configured): %s", text)
            return
        try:
            self.notifier.alert(channel, text)
        except DeliveryError as exc:
            log.error("ALERT could not be posted (%s): %s", exc, text)
