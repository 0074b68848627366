"""The expiry notice: the requester is DMed ``expiry_notice`` before their grant ends, with Extend and
Revoke now, so access can be kept or given up before it lapses unseen."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from bot.domain.audit import AuditEventType
from bot.domain.policy import Policy
from bot.services.audit import record
from bot.services.notices import ExpiryNotice
from bot.services.outbox import Announcer
from bot.services.snapshots import load_snapshot
from bot.store.db import session_scope
from bot.store.expiry_notices import claim_due_notices
from bot.store.transitions import BOT_ACTOR

log = logging.getLogger(__name__)

# Notices claimed per resource group per run; the job runs every few seconds, so more wait a moment.
NOTICE_BATCH = 200


@dataclass
class ExpiryNoticeService:
    engine: Engine
    policy: Policy
    announcer: Announcer
    clock: Callable[[], datetime]

    def _by_notice(self) -> dict[timedelta, list[str]]:
        """The policy's resources grouped by their expiry notice (those with none left out)."""
        groups: dict[timedelta, list[str]] = {}
        for resource in self.policy.resources:
            notice = self.policy.expiry_notice_for(resource)
            if notice is not None:
                groups.setdefault(notice, []).append(resource.name)
        return groups

    def send_due(self) -> list[str]:
        """Queue the notices that are due (a job, every few seconds); returns their request ids.

        Each claim marks its grants in the transaction that queues their DMs, so a notice is sent
        once whichever replica runs this, and a crash before the commit leaves it due."""
        sent: list[str] = []
        for notice, resources in self._by_notice().items():
            now = self.clock()
            with session_scope(self.engine) as session:
                claimed = claim_due_notices(
                    session=session, now=now, notice=notice, resources=resources, limit=NOTICE_BATCH
                )
                for request_id, ends_at in claimed:
                    view = load_snapshot(session, request_id, policy=self.policy, now=now)
                    left = max(int((ends_at - now).total_seconds()), 0)
                    self.announcer.queue(session, ExpiryNotice(view, ends_at, left))
                    record(
                        AuditEventType.EXPIRY_NOTICE_SENT,
                        session=session,
                        at=now,
                        actor=BOT_ACTOR,
                        request_id=request_id,
                        ends_at=ends_at.isoformat(),
                        left_seconds=left,
                    )
            sent += [request_id for request_id, _ in claimed]
        if sent:
            log.info("expiry notices queued for %s", ", ".join(sent))
        return sent
