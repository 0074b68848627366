"""Reminders and escalation of pending requests nobody has decided (the policy's ``reminders:``).

The job (``approval-reminders``, registered in the composition root) reads the pending requests whose
next look has come, asks ``bot.domain.reminders.plan`` what is due, and claims it with a guarded update
(``bot.store.reminders.claim``) in the transaction that queues the reminder in the outbox and audits it.
So a crash loses neither, a second replica at the same instant sends nothing, and a decided request
(the guard checks ``pending``) gets nothing. The reminder is delivered in the card's thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from bot.domain.audit import AuditEventType
from bot.domain.policy import Policy
from bot.domain.reminders import awaited, escalation_entries, plan
from bot.services.audit import record
from bot.services.extensions import window_end
from bot.services.notices import ApprovalReminder
from bot.services.outbox import Announcer
from bot.services.snapshots import load_snapshot
from bot.store import reminders as store
from bot.store import requests as request_store
from bot.store.db import read_scope, session_scope
from bot.store.transitions import BOT_ACTOR

log = logging.getLogger(__name__)

REMINDERS_JOB = "approval-reminders"
# Reminders are minutes apart; a look every few seconds puts each within seconds of its moment.
REMINDERS_INTERVAL_SECONDS = 10.0


@dataclass
class ReminderService:
    engine: Engine
    policy: Policy
    announcer: Announcer
    clock: Callable[[], datetime]
    batch: int = 200

    def run(self) -> int:
        """One look at every pending request that is due; returns how many messages were queued."""
        now = self.clock()
        with read_scope(self.engine) as session:
            found = store.due(
                session=session, now=now, created_after=now - self.policy.request_timeout, limit=self.batch
            )
        return sum(1 for seen in found if self._nudge(seen, now))

    def _nudge(self, seen: store.Due, now: datetime) -> bool:
        # A request of a resource no longer in the policy cannot be decided (votes are refused), so
        # nobody is asked to, and it is not escalated: the policy's own reminders are not its.
        known = self.policy.resource(seen.resource) is not None
        reminders = self.policy.reminders_for(seen.resource) if known else None
        nudge = plan(
            created=seen.created_at,
            expires=seen.created_at + self.policy.request_timeout,
            reminders=reminders,
            scheduled=seen.next_reminder_at,
            escalated=seen.escalated,
            now=now,
        )
        escalate_to = escalation_entries(reminders, self.policy.groups) if nudge.escalate and reminders else None
        with session_scope(self.engine) as session:
            pending = request_store.get_request(session=session, request_id=seen.id)
            if pending is not None and pending.extends is not None and window_end(session, pending, now) is None:
                # More time on a grant that has reached its end (its revocation not yet confirmed, which
                # cancels this) cannot be given: nobody is asked to. Its schedule still moves on, so it
                # does not come back to the head of every run's batch.
                store.claim(session=session, seen=seen, next_at=nudge.next_at, remind=False, escalate_to=None, now=now)
                return False
            won = store.claim(
                session=session,
                seen=seen,
                next_at=nudge.next_at,
                remind=nudge.remind,
                escalate_to=escalate_to,
                now=now,
            )
            if not won or not nudge.says_something:
                return False
            view = load_snapshot(session, seen.id, policy=self.policy)
            request = request_store.get_request(session=session, request_id=seen.id)
            assert request is not None
            resource = self.policy.resource(seen.resource)
            entries = tuple(request.approvers.split()) if request.approvers is not None else ()
            if request.approvers is None and resource is not None:
                entries = resource.approvers
            asked = awaited(
                (*entries, *view.escalated_to), voters=(v.voter for v in view.votes), requester=view.requester
            )
            number = seen.reminders_sent + 1 if nudge.remind else 0
            if escalate_to is not None:
                record(
                    AuditEventType.REQUEST_ESCALATED,
                    session=session,
                    at=now,
                    actor=BOT_ACTOR,
                    request_id=seen.id,
                    escalated_to=list(escalate_to),
                    waited_seconds=int((now - seen.created_at).total_seconds()),
                )
                # The card says so, and the escalation approvers' clicks count from this commit on.
                self.announcer.card(session, view)
            if nudge.remind:
                record(
                    AuditEventType.REMINDER_SENT,
                    session=session,
                    at=now,
                    actor=BOT_ACTOR,
                    request_id=seen.id,
                    number=number,
                    mentioned=list(asked),
                    waited_seconds=int((now - seen.created_at).total_seconds()),
                )
            self.announcer.queue(
                session,
                ApprovalReminder(
                    view,
                    number=number,
                    mention=asked,
                    at=now,
                    expires_at=seen.created_at + self.policy.request_timeout,
                    escalated_to=escalate_to or (),
                ),
            )
        return True
