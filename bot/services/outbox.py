"""Queueing what people are told, in the same transaction as the change it reports.

    with session_scope(engine) as session:
        ...state change...
        announcer.outcome(session, snapshot)     # card, requester DM, audit channel

If the transaction rolls back, nothing is told; once it commits, the messages are in the outbox and
the delivery workers (``bot.services.delivery``) get them to Slack however long Slack takes. The
doorbell wakes the workers the moment a transaction with messages commits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event
from sqlmodel import Session

from bot.domain.policy import Policy
from bot.domain.status import REQUEST_TRANSITIONS, RequestStatus
from bot.services.notices import (
    Alert,
    AlertKind,
    ApprovalCard,
    AuditSummary,
    CardChanged,
    EndSummary,
    GrantLife,
    Notice,
    PickupLink,
    RequesterTold,
    notice_codec,
)
from bot.services.snapshots import RequestSnapshot, load_snapshot
from bot.store import outbox as outbox_store
from bot.store.crypto import TokenCipher

log = logging.getLogger(__name__)

# The statuses a request ends in (none leads anywhere): each is told to the audit channel once, as its EndSummary.
ENDED = frozenset(status for status, onward in REQUEST_TRANSITIONS.items() if not onward)


class Doorbell:
    """Rung after a commit that queued messages; the delivery pump waits on it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def ring(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        rung = self._event.wait(timeout)
        self._event.clear()
        return rung


_PENDING = "jit_outbox_pending"


def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)


# eq=False: compared and hashed by identity, as SQLAlchemy's event registry expects of a listener's owner.
@dataclass(frozen=True, kw_only=True, eq=False)
class Announcer:
    """Turns "this happened" into notices in the outbox. One per process, built in the composition root."""

    policy: Policy
    clock: Callable[[], datetime]
    doorbell: Doorbell
    cipher: TokenCipher | None = None

    # --- what use cases say ------------------------------------------------------------------

    def submitted(self, session: Session, request: RequestSnapshot) -> None:
        self.queue(session, ApprovalCard(request))
        self.queue(session, AuditSummary(request, "submitted"))

    def decided_by_rule(self, session: Session, request: RequestSnapshot, *, minting: bool) -> None:
        """A rule approved or denied the request as it was submitted: the card is still posted (in
        its decided state, without Approve / Deny) so that nothing happens unseen. ``minting``: the
        mint tells the requester and the audit channel once the grant is live."""
        self.queue(session, ApprovalCard(request))
        if not minting:
            self.requester(session, request)
        self.audit_line(session, request)

    def card(self, session: Session, request: RequestSnapshot, *, hold: timedelta | None = None) -> None:
        """The card changed. ``hold``: send it no sooner than that from now, so that a state likely
        to last only a moment (*Revocation pending*) is replaced by the next version, unsent."""
        self.queue(session, CardChanged(request), not_before=self.clock() + hold if hold else None)

    def requester(self, session: Session, request: RequestSnapshot) -> None:
        self.queue(session, RequesterTold(request))

    def outcome(self, session: Session, request: RequestSnapshot, *, life: GrantLife | None = None) -> None:
        """A request reached a new state: card, requester and audit channel, in that order.
        ``life``: what its grant did, for a request whose grant has just been revoked."""
        self.card(session, request)
        self.requester(session, request)
        self.audit_line(session, request, life=life)

    def audit_line(self, session: Session, request: RequestSnapshot, *, life: GrantLife | None = None) -> None:
        """The audit channel's line for the state the request reached: a step's line, or, once it has
        ended, its one summary (so an ending is never told twice)."""
        if RequestStatus(request.status) in ENDED:
            self.queue(session, EndSummary(request, life))
        else:
            self.queue(session, AuditSummary(request, request.status))

    def activated(self, session: Session, request: RequestSnapshot, *, url: str, link_expires_at: datetime) -> None:
        """The grant is live: the card, the requester's one-time link, and the audit channel."""
        if self.cipher is None:
            raise RuntimeError("pickup links need the token cipher")
        self.card(session, request)
        self.queue(session, PickupLink(request, link_expires_at), secret=self.cipher.encrypt(url))
        self.queue(session, AuditSummary(request, request.status))

    def alert(self, session: Session, kind: AlertKind, request_id: str | None, **facts: str | int | None) -> None:
        self.queue(session, Alert(kind, request_id, dict(facts)))

    # --- the outbox ----------------------------------------------------------------------------

    def queue(
        self, session: Session, notice: Notice, *, secret: bytes | None = None, not_before: datetime | None = None
    ) -> None:
        """Add the notice to the transaction's messages: they are written together, in one INSERT,
        when it commits (and not at all if it rolls back), and the doorbell rings after.

        A change to an extension's card redraws the card of the grant it extends too, in the same
        transaction, so that card always says where its extension stands."""
        self._enqueue(session, notice, secret=secret, not_before=not_before)
        if isinstance(notice, ApprovalCard | CardChanged) and notice.request.extends is not None:
            extended = load_snapshot(session, notice.request.extends, policy=self.policy, now=self.clock())
            self._enqueue(session, CardChanged(extended), secret=None, not_before=not_before)

    def _enqueue(self, session: Session, notice: Notice, *, secret: bytes | None, not_before: datetime | None) -> None:
        where = self._route(notice)
        if where is None:
            return
        lane, channel = where
        pending: list[dict[str, Any]] | None = session.info.get(_PENDING)
        if pending is None:
            pending = session.info[_PENDING] = []
            # Ahead of every other before_commit listener: the audit chain's link is written last,
            # because it takes the head-row lock that every writer queues on (bot.store.audit).
            event.listen(session, "before_commit", self._write, once=True, insert=True)
            event.listen(session, "after_commit", self._ring, once=True)
            event.listen(session, "after_rollback", _forget, once=True)
        pending.append(
            {
                "lane": lane,
                "channel": channel,
                "kind": notice.kind,
                "request_id": notice.request_id,
                "payload": _payload(notice),
                "secret": secret,
                "not_before": not_before,
            }
        )

    def _write(self, session: Session) -> None:
        outbox_store.add_many(session=session, messages=session.info.pop(_PENDING, None) or [], now=self.clock())

    def _ring(self, session: Session) -> None:  # noqa: ARG002 - the event's signature
        self.doorbell.ring()

    def _route(self, notice: Notice) -> tuple[str, str] | None:
        where = notice.route(self.policy.channels.audit)
        if where is None and isinstance(notice, Alert):
            # Nowhere to post it; the log is all a security lead gets, so make it loud.
            log.error("ALERT (no audit channel configured): %s %s %s", notice.alert, notice.request_id, notice.facts)
        return where


def _payload(notice: Notice) -> dict[str, Any]:
    dumped: dict[str, Any] = notice_codec().dump_python(notice, mode="json")
    return dumped
