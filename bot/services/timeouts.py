"""Housekeeping the sweep does besides revocation: request timeouts and interrupted mints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from bot.domain.policy import Policy
from bot.domain.status import RequestStatus
from bot.services.announce import Announcer, load_snapshot
from bot.services.audit import AuditEventType, record
from bot.services.ports import Notifier
from bot.store import requests as store
from bot.store.db import session_scope

log = logging.getLogger(__name__)

# A mint takes seconds at most (10 s retry budget); one still "minting" after this was interrupted.
MINT_INTERRUPTED_AFTER = timedelta(minutes=2)
# An approval whose mint never started (crash between the vote and the mint) is picked up after this.
APPROVED_UNMINTED_AFTER = timedelta(seconds=30)


@dataclass
class TimeoutService:
    engine: Engine
    policy: Policy
    notifier: Notifier
    clock: Callable[[], datetime]
    mint: Callable[[str], object] | None = None
    batch: int = 200

    def run(self) -> None:
        self.expire_pending()
        if self.mint is not None:
            self.fail_interrupted_mints()
            self.resume_unminted()

    def expire_pending(self) -> list[str]:
        now = self.clock()
        with session_scope(self.engine) as session:
            expired = store.expire_stale_pending(
                session=session, created_before=now - self.policy.request_timeout, now=now, limit=self.batch
            )
            for request_id in expired:
                record(
                    AuditEventType.REQUEST_EXPIRED,
                    session=session,
                    at=now,
                    actor="jit-bot",
                    request_id=request_id,
                    timeout_seconds=int(self.policy.request_timeout.total_seconds()),
                )
        for request_id in expired:
            self._tell(request_id)
        return expired

    def fail_interrupted_mints(self) -> None:
        now = self.clock()
        with session_scope(self.engine) as session:
            stuck = store.ids_in_status(
                session=session,
                status=RequestStatus.MINTING,
                updated_before=now - MINT_INTERRUPTED_AFTER,
                limit=self.batch,
            )
            moved = []
            for request_id in stuck:
                if store.transition(
                    session=session,
                    request_id=request_id,
                    from_status=RequestStatus.MINTING,
                    to_status=RequestStatus.FAILED,
                    now=now,
                    failure_code="mint_interrupted",
                    failure_detail="the bot stopped while minting; if a token was issued, the IdP ends it at expiry",
                ):
                    record(
                        AuditEventType.MINT_FAILED,
                        session=session,
                        at=now,
                        actor="jit-bot",
                        request_id=request_id,
                        error="mint_interrupted",
                    )
                    moved.append(request_id)
        for request_id in moved:
            self._tell(request_id)

    def resume_unminted(self) -> None:
        assert self.mint is not None
        now = self.clock()
        with session_scope(self.engine) as session:
            waiting = store.ids_in_status(
                session=session, status=RequestStatus.APPROVED, updated_before=now - APPROVED_UNMINTED_AFTER, limit=20
            )
        for request_id in waiting:
            self.mint(request_id)  # the approved -> minting guard makes a concurrent mint a no-op

    def _tell(self, request_id: str) -> None:
        with session_scope(self.engine) as session:
            view = load_snapshot(session, request_id, policy=self.policy)
        announce = Announcer(engine=self.engine, policy=self.policy, notifier=self.notifier, clock=self.clock)
        announce.card(view)
        announce.requester(view)
