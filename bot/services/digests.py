"""The security leads' daily digest in Slack: posted once a day to ``channels.digest``, and shown on
demand by ``/jit digest``.

The figures, the object, its text and its chart are the domain's and the store's (``bot.domain.digest``,
``bot.domain.digest_chart``, ``bot.store.digest``); what is here is when a digest is due, the lease
that makes one replica post it, and who may read one.

When: the digest of local day D is due at ``digest.time`` on D+1, on the clock of ``digest.timezone``.
The job posts the digest that fell due most recently, if no replica has yet: a bot that was down at
that moment posts it when it starts, that day. A digest whose moment passed while the bot was down
and whose successor is already due is not posted (a burst of stale digests would bury the current
one); it is still there for ``/jit digest YYYY-MM-DD`` and ``jit-bot digest --date``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from bot.domain.audit import AuditEventType
from bot.domain.digest import Digest, digest_text, plan_digest, yesterday
from bot.domain.policy import Policy
from bot.services.audit import record
from bot.services.identity import OnSlackFailure, resolve_approvers, resolve_entries
from bot.services.notices import DigestChart, DigestPost
from bot.services.outbox import Announcer
from bot.services.ports import Directory
from bot.store import digest as digest_store
from bot.store.audit import audit_key_of
from bot.store.db import read_scope, session_scope

log = logging.getLogger(__name__)


class DigestRefusal(StrEnum):
    NOT_ALLOWED = "not_security_lead_or_approver"
    NOT_BEGUN = "not_begun"


@dataclass(frozen=True)
class DigestAnswer:
    """What ``/jit digest`` gets: a digest, or why not (and the day and zone it was about)."""

    day: date
    timezone: str
    digest: Digest | None = None
    refusal: DigestRefusal | None = None


def due_day(now: datetime, policy: Policy) -> date:
    """The local day whose digest fell due most recently at ``now``: yesterday once today's
    ``digest.time`` has passed on the digest's clock, the day before yesterday until then."""
    options = policy.digest
    local = now.astimezone(options.zone)
    posting_day = local.date() if local.time() >= options.time else local.date() - timedelta(days=1)
    return posting_day - timedelta(days=1)


@dataclass
class DigestService:
    engine: Engine
    policy: Policy
    directory: Directory
    announcer: Announcer
    clock: Callable[[], datetime]

    # --- the daily post -------------------------------------------------------------------------

    def post_due(self) -> bool:
        """The job: queue the digest that is due, unless it was queued already. True if this call queued it."""
        channel = self.policy.channels.digest
        if channel is None:
            return False
        now = self.clock()
        day = due_day(now, self.policy).isoformat()
        # A cheap look first: the digest verifies the whole audit trail, which is not worth doing
        # every minute for a day that is done.
        with read_scope(self.engine) as session:
            if digest_store.day_taken(session=session, day=day):
                return False
        digest = self.compute(date.fromisoformat(day), now=now)
        png = self._chart(digest)
        try:
            with session_scope(self.engine) as session:
                # The lease and the messages commit together: whoever inserts the day's row queues
                # the post, and a replica that loses the race rolls back what it queued.
                digest_store.take_day(session=session, day=day, now=now)
                self.announcer.queue(session, DigestPost(day, channel, digest_text(digest, slack=True)))
                if png is not None:
                    self.announcer.queue(session, DigestChart(day, channel, base64.b64encode(png).decode("ascii")))
        except IntegrityError:
            log.debug("the digest of %s was queued by another replica", day)
            return False
        log.info("queued the digest of %s for %s", day, channel)
        return True

    def compute(self, day: date, *, now: datetime) -> Digest:
        plan = plan_digest(day, self.policy.digest, now=now)
        with read_scope(self.engine) as session:
            figures = digest_store.read_figures(session=session, plan=plan)
            anchor = digest_store.audit_anchor(session=session, key=audit_key_of(session.connection()))
        return Digest(plan, figures, anchor)

    def _chart(self, digest: Digest) -> bytes | None:
        # The text stands on its own: a chart that cannot be drawn must not cost the day its digest.
        from bot.domain.digest_chart import chart_png

        try:
            return chart_png(digest)
        except Exception:
            log.exception("the digest chart of %s could not be drawn; posting the text alone", digest.plan.local_date)
            return None

    # --- /jit digest --------------------------------------------------------------------------------

    def for_person(self, user: str, day: date | None) -> DigestAnswer:
        """The digest of ``day`` (default: yesterday in digest.timezone) for a security lead or an
        approver; anyone else is refused, and the attempt is audited."""
        now = self.clock()
        zone = self.policy.digest.zone
        wanted = day or yesterday(now, zone)
        if not self.may_read(user):
            with session_scope(self.engine) as session:
                record(
                    AuditEventType.UNAUTHORIZED_ATTEMPT,
                    session=session,
                    at=now,
                    actor=user,
                    request_id=None,
                    action="digest",
                    refusal=DigestRefusal.NOT_ALLOWED.value,
                    day=wanted.isoformat(),
                )
            return DigestAnswer(wanted, zone.key, refusal=DigestRefusal.NOT_ALLOWED)
        if wanted > now.astimezone(zone).date():
            return DigestAnswer(wanted, zone.key, refusal=DigestRefusal.NOT_BEGUN)
        return DigestAnswer(wanted, zone.key, digest=self.compute(wanted, now=now))

    def may_read(self, user: str) -> bool:
        """A security lead or an approver of any resource, usergroups expanded now (Slack down: the
        people the policy names by id still may)."""
        fallback = OnSlackFailure.LISTED_USERS_ONLY
        if user in resolve_entries(
            "security_leads", self.policy.security_leads, directory=self.directory, on_slack_failure=fallback
        ):
            return True
        return any(
            user in resolve_approvers(resource, directory=self.directory, on_slack_failure=fallback)
            for resource in self.policy.resources
        )
