"""Access that ends when its reason does: a grant that a ``revoke_when_context_ends`` rule auto-approved
because the requester was in a usergroup is ended early once they are in none of its usergroups.

A job (``check``, at least every minute) lists each usergroup that live grants rest on once per run,
whatever the number of grants, and ends the grants whose requester left. Nothing is ended on a guess:
a usergroup Slack cannot list leaves its grants alone until a later run can list it; a run of such
failures is alerted once to the audit channel (mentioning the security leads), and its end logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from bot.domain.audit import AuditEventType
from bot.domain.context import context_ended
from bot.domain.policy import Policy
from bot.services.audit import record
from bot.services.early import EarlyEndService
from bot.services.notices import AlertKind, ContextEnded
from bot.services.outbox import Announcer
from bot.services.ports import Directory, DirectoryError
from bot.services.snapshots import load_snapshot
from bot.store import context as store
from bot.store.db import read_scope, session_scope
from bot.store.transitions import BOT_ACTOR

log = logging.getLogger(__name__)

# What a grant ended this way records as who ended it (the card and the DMs say why in words).
CONTEXT_ENDED_BY = "context_ended"
# Failed reads of one usergroup in a row before the audit channel is told (once per run of them):
# one is a blip Slack often has; three at a minute apart is an outage worth a person's look.
ALERT_AFTER_FAILURES = 3
# What a read that listed nobody counts as: a failure (alerted like one), never a reason to end access.
EMPTY_LISTING = "usergroup_listed_nobody"


@dataclass(frozen=True)
class ContextRun:
    """What one check did: the grants it ended, and the usergroups it could not list."""

    ended: tuple[str, ...]
    unreadable: tuple[str, ...]


@dataclass
class ContextService:
    engine: Engine
    policy: Policy
    directory: Directory
    announcer: Announcer
    early: EarlyEndService
    clock: Callable[[], datetime]
    alert_after: int = ALERT_AFTER_FAILURES

    def check(self) -> ContextRun:
        """One run of the job: read each usergroup once, end the grants whose reason is gone."""
        with read_scope(self.engine) as session:
            grants = store.live_context_grants(session=session, now=self.clock())
            failing = store.failing(session=session)
        groups = list(dict.fromkeys(group for grant in grants for group in grant.usergroups))
        # Slack is asked outside any transaction: a slow Slack must never hold the database.
        members: dict[str, frozenset[str]] = {}
        errors: dict[str, str] = {}
        for group in groups:
            try:
                listed = self.directory.usergroup_members(group)
            except DirectoryError as exc:
                errors[group] = str(exc)
                log.warning("usergroup %s could not be listed for the context check (%s); none ends now", group, exc)
                continue
            if not listed:
                # Slack keeps no usergroup empty: it lists nobody for one disabled (or deleted).
                # That is not "the requester left"; ending every grant on it would be a guess.
                errors[group] = EMPTY_LISTING
                log.warning("usergroup %s was listed with nobody in it (disabled?); none of its grants ends now", group)
                continue
            members[group] = listed
        self._record_reads(members, errors, failing)
        ended: list[str] = []
        for grant in grants:
            if context_ended(grant.requester, grant.usergroups, members) and self._end(
                grant.request_id, grant.rule, grant.usergroups, grant.requester
            ):
                ended.append(grant.request_id)
        return ContextRun(tuple(ended), tuple(errors))

    def _end(self, request_id: str, rule: str | None, usergroups: tuple[str, ...], requester: str) -> bool:
        now = self.clock()
        with session_scope(self.engine) as session:
            if not self.early.end_now(
                session=session, request_id=request_id, now=now, actor=BOT_ACTOR, by=CONTEXT_ENDED_BY
            ):
                return False  # ended meanwhile (Revoke now, its expiry, another replica)
            record(
                AuditEventType.CONTEXT_ENDED,
                session=session,
                at=now,
                actor=BOT_ACTOR,
                request_id=request_id,
                rule=rule,
                usergroups=list(usergroups),
                requester=requester,
            )
            view = load_snapshot(session, request_id, policy=self.policy, now=now)
            self.announcer.queue(session, ContextEnded(view, usergroups))
        log.info("grant %s ends early: %s is in none of %s any more", request_id, requester, ", ".join(usergroups))
        self.early.wake(now)
        return True

    def _record_reads(self, members: dict[str, frozenset[str]], errors: dict[str, str], failing: set[str]) -> None:
        """Count failed reads per usergroup (shared by replicas), alert a run of them once, and end
        the runs of those read again. A healthy run with nothing failing writes nothing."""
        recovered = [group for group in members if group in failing]
        if not errors and not recovered:
            return
        now = self.clock()
        with session_scope(self.engine) as session:
            for group, error in errors.items():
                failures = store.note_failure(session=session, usergroup=group, now=now, error=error)
                if failures >= self.alert_after and store.claim_alert(
                    session=session, usergroup=group, now=now, after=self.alert_after
                ):
                    self.announcer.alert(
                        session, AlertKind.CONTEXT_UNREADABLE, None, usergroup=group, failures=failures, error=error
                    )
                    record(
                        AuditEventType.CONTEXT_UNREADABLE,
                        session=session,
                        at=now,
                        actor=BOT_ACTOR,
                        request_id=None,
                        usergroup=group,
                        failures=failures,
                        error=error,
                    )
            for group in recovered:
                run = store.note_success(session=session, usergroup=group)
                if run is None:
                    continue
                failures, alerted = run
                log.info("usergroup %s can be listed again after %d failed reads", group, failures)
                if alerted:
                    record(
                        AuditEventType.CONTEXT_READABLE_AGAIN,
                        session=session,
                        at=now,
                        actor=BOT_ACTOR,
                        request_id=None,
                        usergroup=group,
                        failures=failures,
                    )
