"""Break-glass: access at once with no approval, for the people a resource's ``break_glass`` allows,
alerted loudly in the audit channel until an approver or a security lead acknowledges it.

``use`` stores the request and approves it in one transaction (no vote; its ``break_glass_used`` event
is the move to approved), with the card, the alert and the alert's row queued in it; minting then
runs as for any approval. ``acknowledge`` is re-authorised from the policy and Slack on every click
and wins once (a guarded UPDATE). ``realert`` is the registered job: every unacknowledged alert is
posted again each ``REALERT_INTERVAL``, even after its grant has ended (it still needs a human's
eyes), and the guarded UPDATE on the alert's count makes one replica send each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from bot.domain.audit import AuditEventType
from bot.domain.commands import RequestDraft
from bot.domain.durations import format_duration
from bot.domain.policy import BreakGlass, Policy
from bot.domain.policy_fields import SLACK_USER_ID, SLACK_USERGROUP_ID
from bot.domain.policy_rules import expand
from bot.domain.status import RequestStatus
from bot.services import lifecycle
from bot.services.audit import record
from bot.services.errors import UnmappedRequester, UserFacingError
from bot.services.identity import resolve_subject
from bot.services.notices import ApprovalCard, BreakGlassAcknowledged, BreakGlassAlerted
from bot.services.outbox import Announcer
from bot.services.ports import Directory, DirectoryError
from bot.services.requests import pending_request
from bot.services.snapshots import RequestSnapshot, load_snapshot, snapshot
from bot.store import break_glass as alert_store
from bot.store import requests as store
from bot.store.db import read_scope, session_scope
from bot.store.transitions import Audit, move_request

log = logging.getLogger(__name__)

# The contract: an unacknowledged break-glass is alerted again every 15 minutes.
REALERT_INTERVAL = timedelta(minutes=15)
# How often the re-alert job looks for due alerts (so a re-alert is at most this late).
REALERT_CHECK_SECONDS = 30.0


class BreakGlassRefusal(StrEnum):
    NOT_ALLOWED = "not_allowed"
    # Not allowed by id or subject, and Slack could not list a usergroup that might have allowed them.
    USERGROUPS_UNKNOWN = "usergroups_unknown"


@dataclass
class BreakGlassRefused(UserFacingError):
    """/jit breakglass from someone the resource's break_glass.allowed does not let in (audited)."""

    resource: str
    why: BreakGlassRefusal
    # USERGROUPS_UNKNOWN: the usergroups Slack could not list, and what it said.
    usergroups: tuple[str, ...] = ()
    slack_error: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.why.value)


class AckOutcome(StrEnum):
    ACKNOWLEDGED = "acknowledged"
    ALREADY = "already_acknowledged"
    NOT_ALLOWED = "not_allowed"
    OWN = "own_break_glass"
    UNKNOWN = "unknown_request"
    # Slack could not list a usergroup of the approvers or leads, and the clicker is not listed by id.
    PEOPLE_UNKNOWN = "people_unknown"


@dataclass(frozen=True)
class AckResult:
    outcome: AckOutcome
    request_id: str
    # ALREADY (and ACKNOWLEDGED): who acknowledged it, and when.
    by: str | None = None
    at: datetime | None = None
    slack_error: str = ""


@dataclass
class BreakGlassService:
    engine: Engine
    policy: Policy
    directory: Directory
    announcer: Announcer
    clock: Callable[[], datetime]
    # A usergroup's members as Slack lists them now (the runtime gives the uncached directory).
    members_of: Callable[[str], frozenset[str]]
    # Called with the request id once the approval has committed (minting, when an IdP is configured).
    on_approved: Callable[[str], object] | None = None

    # --- /jit breakglass ---------------------------------------------------------------------------

    def use(self, draft: RequestDraft, *, requester: str, origin: str | None = None) -> RequestSnapshot:
        """Open the resource at once for ``requester``, or raise BreakGlassRefused (audited) when its
        break_glass does not allow them; UnmappedRequester when they are allowed but have no IdP subject."""
        resource = self.policy.resource(draft.resource)
        if resource is None or resource.break_glass is None:  # the parser checked; the policy is immutable
            raise RuntimeError(f"resource {draft.resource!r} has no break_glass")
        unmapped: UnmappedRequester | None = None
        try:
            subject: str | None = resolve_subject(requester, policy=self.policy, directory=self.directory)
        except UnmappedRequester as exc:
            subject, unmapped = None, exc
        # Slack is asked before the transaction: a Slack round-trip must never hold the database.
        allowed_as, unreadable, slack_error = self._allowed(resource.break_glass, requester, subject)
        if allowed_as is None:
            why = BreakGlassRefusal.USERGROUPS_UNKNOWN if unreadable else BreakGlassRefusal.NOT_ALLOWED
            self._refuse(draft, requester, why, unreadable, slack_error)
            raise BreakGlassRefused(resource.name, why, unreadable, slack_error)
        if unmapped is not None or subject is None:
            raise unmapped or RuntimeError("no subject")
        now = self.clock()
        row = pending_request(
            draft, resource, requester=requester, subject=subject, now=now, origin=origin, break_glass=True
        )
        try:
            with session_scope(self.engine) as session:
                if origin is not None and (earlier := store.request_by_origin(session=session, origin=origin)):
                    log.info("a repeated Slack delivery asked again for break-glass %s; nothing new", earlier.id)
                    return snapshot(earlier, [], policy=self.policy)
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
                    break_glass=True,
                    decision={"effect": "break_glass", "rule": None, "reason": "break_glass"},
                )
                submitted = snapshot(row, [], policy=self.policy)
                lifecycle.note(
                    session,
                    lifecycle.Step.SUBMITTED,
                    submitted,
                    scopes=draft.scopes,
                    duration=format_duration(draft.duration),
                    break_glass="yes",
                )
                moved = move_request(
                    session=session,
                    request_id=row.id,
                    source=RequestStatus.PENDING,
                    target=RequestStatus.APPROVED,
                    now=now,
                    event=Audit(
                        AuditEventType.BREAK_GLASS_USED,
                        actor=requester,
                        details={
                            "resource": row.resource,
                            "scopes": list(draft.scopes),
                            "duration_seconds": row.duration_seconds,
                            "max_duration_seconds": int(resource.break_glass.max_duration.total_seconds()),
                            "allowed_as": allowed_as,
                            "break_glass": True,
                        },
                    ),
                    decided_at=now,
                    decided_by=requester,
                )
                if not moved:  # the row was inserted by this very transaction
                    raise RuntimeError(f"request {row.id} changed under its own transaction")
                session.flush()
                session.refresh(row)
                approved = snapshot(row, [], policy=self.policy)
                lifecycle.note(session, lifecycle.Step.APPROVED, approved, by="break-glass")
                alert_store.add_alert(session=session, request_id=row.id, next_alert_at=now + REALERT_INTERVAL)
                # The card is posted (marked break-glass) so that nothing happens unseen in the approver
                # channel either; minting tells the requester once the grant is live.
                self.announcer.queue(session, ApprovalCard(approved))
                self.announcer.queue(
                    session, BreakGlassAlerted(approved, approvers=resource.approvers, number=1, alerted_at=now)
                )
                if self.on_approved is None:
                    self.announcer.requester(session, approved)
        except IntegrityError:
            # Two deliveries of one interaction raced past the lookup; the other one made the request.
            if origin is None:
                raise
            with session_scope(self.engine) as session:
                earlier = store.request_by_origin(session=session, origin=origin)
                if earlier is None:
                    raise
                return snapshot(earlier, [], policy=self.policy)
        log.warning("break-glass %s: %s opened %s with no approval", approved.id, requester, approved.resource)
        if self.on_approved is not None:
            self.on_approved(approved.id)
        return approved

    def _allowed(
        self, break_glass: BreakGlass, requester: str, subject: str | None
    ) -> tuple[str | None, tuple[str, ...], str]:
        """How the requester is allowed (``user``, ``subject`` or ``usergroup:S…``; None: not), the
        usergroups Slack could not list, and its error."""
        entries = expand(self.policy.groups, break_glass.allowed)
        if requester in entries:
            return "user", (), ""
        if subject is not None and subject in entries and not SLACK_USER_ID.fullmatch(subject):
            return "subject", (), ""
        unreadable: list[str] = []
        slack_error = ""
        for group in (entry for entry in entries if SLACK_USERGROUP_ID.fullmatch(entry)):
            try:
                members = self.members_of(group)
            except DirectoryError as exc:
                log.warning("usergroup %s could not be listed for break-glass: %s", group, exc)
                unreadable.append(group)
                slack_error = slack_error or str(exc)
                continue
            if requester in members:
                return f"usergroup:{group}", (), ""
        return None, tuple(unreadable), slack_error

    def _refuse(
        self,
        draft: RequestDraft,
        requester: str,
        why: BreakGlassRefusal,
        unreadable: tuple[str, ...],
        slack_error: str,
    ) -> None:
        with session_scope(self.engine) as session:
            record(
                AuditEventType.BREAK_GLASS_REFUSED,
                session=session,
                at=self.clock(),
                actor=requester,
                request_id=None,
                resource=draft.resource,
                scopes=list(draft.scopes),
                duration_seconds=int(draft.duration.total_seconds()),
                reason=draft.reason,
                why=why.value,
                usergroups=list(unreadable),
                slack_error=slack_error or None,
            )
        log.warning("break-glass refused: %s on %s (%s)", requester, draft.resource, why.value)

    # --- Acknowledge ------------------------------------------------------------------------------

    def acknowledge(self, request_id: str, *, actor: str) -> AckResult:
        """An Acknowledge click: re-authorised now (the resource's approvers, usergroups included, and
        the security leads), first one wins; refusals are audited as unauthorized attempts."""
        with read_scope(self.engine) as session:
            request = store.get_request(session=session, request_id=request_id)
            alert = alert_store.get_alert(session=session, request_id=request_id) if request is not None else None
            requester = request.requester_slack_id if request is not None else None
            resource_name = request.resource if request is not None else None
            used_at = request.created_at if request is not None else None
            acked = (alert.acknowledged_by, alert.acknowledged_at) if alert is not None else None
        if acked is None or used_at is None:
            return self._ack_refused(request_id, actor, AckOutcome.UNKNOWN, None)
        # Authorised before anything else, even once it is acknowledged: anyone else's click is refused
        # and audited, and is not told who acknowledged it.
        if actor == requester:
            return self._ack_refused(request_id, actor, AckOutcome.OWN, request_id)
        may, slack_error = self._may_acknowledge(actor, resource_name)
        if not may:
            outcome = AckOutcome.PEOPLE_UNKNOWN if slack_error else AckOutcome.NOT_ALLOWED
            refused = self._ack_refused(request_id, actor, outcome, request_id)
            return AckResult(refused.outcome, request_id, slack_error=slack_error)
        if acked[1] is not None:
            return AckResult(AckOutcome.ALREADY, request_id, by=acked[0], at=acked[1])
        now = self.clock()
        with session_scope(self.engine) as session:
            if not alert_store.acknowledge(session=session, request_id=request_id, by=actor, now=now):
                # Someone else's click won meanwhile.
                current = alert_store.get_alert(session=session, request_id=request_id)
                by = current.acknowledged_by if current is not None else None
                at = current.acknowledged_at if current is not None else None
                return AckResult(AckOutcome.ALREADY, request_id, by=by, at=at)
            current = alert_store.get_alert(session=session, request_id=request_id)
            alerts = current.alerts if current is not None else 1
            record(
                AuditEventType.BREAK_GLASS_ACKNOWLEDGED,
                session=session,
                at=now,
                actor=actor,
                request_id=request_id,
                alerts=alerts,
                seconds_after_use=int((now - used_at).total_seconds()),
            )
            view = load_snapshot(session, request_id, policy=self.policy, now=now)
            self.announcer.queue(session, BreakGlassAcknowledged(view, by=actor, at=now, alerts=alerts))
        return AckResult(AckOutcome.ACKNOWLEDGED, request_id, by=actor, at=now)

    def _may_acknowledge(self, actor: str, resource_name: str | None) -> tuple[bool, str]:
        """(allowed, Slack's error when a usergroup could not be listed and the actor is not allowed otherwise)."""
        resource = self.policy.resource(resource_name) if resource_name else None
        entries = (*(resource.approvers if resource is not None else ()), *self.policy.security_leads)
        if actor in entries:
            return True, ""
        slack_error = ""
        for group in (entry for entry in dict.fromkeys(entries) if SLACK_USERGROUP_ID.fullmatch(entry)):
            try:
                # Asked at click time, uncached, as a vote's approvers are: a removal counts at once.
                members = self.directory.usergroup_members(group)
            except DirectoryError as exc:
                log.warning("usergroup %s could not be listed to authorise an acknowledgement: %s", group, exc)
                slack_error = slack_error or str(exc)
                continue
            if actor in members:
                return True, ""
        return False, slack_error

    def _ack_refused(self, request_id: str, actor: str, outcome: AckOutcome, known: str | None) -> AckResult:
        with session_scope(self.engine) as session:
            record(
                AuditEventType.UNAUTHORIZED_ATTEMPT,
                session=session,
                at=self.clock(),
                actor=actor,
                request_id=known,
                action="break_glass_acknowledge",
                refusal=outcome.value,
                claimed_request_id=request_id[:64],
            )
        return AckResult(outcome, request_id)

    # --- the re-alert job -------------------------------------------------------------------------

    def realert(self) -> int:
        """Post again every unacknowledged alert whose interval has passed; returns how many this
        replica queued (a due alert another replica took first is skipped)."""
        now = self.clock()
        with read_scope(self.engine) as session:
            due = alert_store.due(session=session, now=now)
        queued = 0
        for alert in due:
            with session_scope(self.engine) as session:
                if not alert_store.take_realert(
                    session=session,
                    request_id=alert.request_id,
                    seen_alerts=alert.alerts,
                    next_alert_at=now + REALERT_INTERVAL,
                ):
                    continue
                view = load_snapshot(session, alert.request_id, policy=self.policy, now=now)
                resource = self.policy.resource(view.resource)
                approvers = resource.approvers if resource is not None else ()
                self.announcer.queue(
                    session, BreakGlassAlerted(view, approvers=approvers, number=alert.alerts + 1, alerted_at=now)
                )
            queued += 1
            log.warning("break-glass %s is still unacknowledged: alert %d", alert.request_id, alert.alerts + 1)
        return queued
