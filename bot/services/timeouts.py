"""Housekeeping beside revocation: request timeouts, interrupted mints, approvals never minted.

None of it runs on the thread that claims due grants, and none of it mints: an approval whose mint
never started is handed to the mint workers, so a slow IdP holds up a mint thread, not the sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from bot.domain.audit import AuditEventType
from bot.domain.durations import format_duration
from bot.domain.policy import Policy
from bot.domain.status import RequestStatus
from bot.services import lifecycle
from bot.services.audit import record
from bot.services.outbox import Announcer
from bot.services.snapshots import load_snapshot
from bot.store import requests as store
from bot.store.db import read_scope, session_scope
from bot.store.transitions import BOT_ACTOR, fail_mint

log = logging.getLogger(__name__)

# A mint is bounded by its retry budget and each call's deadline (well under a minute); one still
# "minting" after this was interrupted (a crash). Its token, if one arrived, is in the grant table.
MINT_INTERRUPTED_AFTER = timedelta(minutes=2)
# An approval whose mint never started (crash between the vote and the mint) is picked up after this.
APPROVED_UNMINTED_AFTER = timedelta(seconds=30)


@dataclass
class TimeoutService:
    engine: Engine
    policy: Policy
    announcer: Announcer
    clock: Callable[[], datetime]
    # Hands a request id to the mint workers (None without an IdP).
    submit_mint: Callable[[str], object] | None = None
    batch: int = 200

    def run(self) -> None:
        self.expire_pending()
        if self.submit_mint is not None:
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
                    actor=BOT_ACTOR,
                    request_id=request_id,
                    timeout_seconds=int(self.policy.request_timeout.total_seconds()),
                )
                view = load_snapshot(session, request_id, policy=self.policy)
                self.announcer.outcome(session, view)
                lifecycle.note(
                    session, lifecycle.Step.EXPIRED, view, after=format_duration(self.policy.request_timeout)
                )
        return expired

    def fail_interrupted_mints(self) -> None:
        now = self.clock()
        with read_scope(self.engine) as session:
            stuck = store.ids_in_status(
                session=session,
                status=RequestStatus.MINTING,
                updated_before=now - MINT_INTERRUPTED_AFTER,
                limit=self.batch,
            )
        for request_id in stuck:
            with session_scope(self.engine) as session:
                detail = "the bot stopped while minting; a token it received is being revoked"
                if fail_mint(session=session, request_id=request_id, code="mint_interrupted", detail=detail, now=now):
                    view = load_snapshot(session, request_id, policy=self.policy)
                    self.announcer.outcome(session, view)
                    lifecycle.note(session, lifecycle.Step.MINT_FAILED, view, error="mint_interrupted", detail=detail)

    def resume_unminted(self) -> None:
        assert self.submit_mint is not None
        now = self.clock()
        with read_scope(self.engine) as session:
            waiting = store.ids_in_status(
                session=session, status=RequestStatus.APPROVED, updated_before=now - APPROVED_UNMINTED_AFTER, limit=20
            )
        for request_id in waiting:
            self.submit_mint(request_id)  # the approved -> minting guard makes a duplicate mint a no-op
