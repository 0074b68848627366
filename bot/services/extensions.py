"""Extensions: more time on an active grant, asked with ``/jit extend`` or the Extend button.

An extension is a request of its own, linked to the one it extends (``extends``): same requester,
resource, audience, scopes and approver channel; its duration is the extra time. The policy decides it
as it decides any request, with ``extension`` true for the rules; the chain's total may not pass the
cap (``bot.domain.extensions``), which is checked before anything is stored. Once approved, the mint
workers mint a new token for the new window (from now to the old grant's end plus the extra time) and
send a new pickup link; the old token is revoked once the new one is picked up (``PickupService``), or
at its own expiry, whichever comes first. An extension never mints once the grant it extends has
ended early: access is never given past a revocation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bot.domain.audit import AuditEventType
from bot.domain.durations import format_duration
from bot.domain.extensions import extension_cap, for_break_glass_chain
from bot.domain.policy import Policy
from bot.domain.rules import AccessRequest as RuleInput
from bot.domain.rules import Effect, decide
from bot.domain.status import GrantStatus, RequestStatus
from bot.services import lifecycle
from bot.services.audit import record
from bot.services.outbox import Announcer
from bot.services.requests import RequestService, apply_decision, new_request_id
from bot.services.snapshots import RequestSnapshot, load_snapshot, snapshot
from bot.store import grants as grant_store
from bot.store import requests as store
from bot.store.db import read_scope, session_scope
from bot.store.models import AccessRequest, Grant
from bot.store.transitions import BOT_ACTOR, cancel_request

log = logging.getLogger(__name__)

# Why an approved extension was not minted (its failure code).
EXTENDED_GRANT_ENDED = "extended_grant_ended"

# An extension that still holds its grant's one place for an extension.
_OPEN = frozenset(
    {RequestStatus.PENDING.value, RequestStatus.APPROVED.value, RequestStatus.MINTING.value, RequestStatus.ACTIVE.value}
)


class ExtendOutcome(StrEnum):
    SUBMITTED = "submitted"  # the extension is stored (and maybe already decided by a rule)
    NO_SUCH_REQUEST = "no_such_request"
    NOT_REQUESTER = "not_requester"  # only the grant's requester may extend it
    NOT_ACTIVE = "not_active"  # the request has no live grant to extend
    EXTENSION_OPEN = "extension_open"  # it has an extension pending, being minted, or live already
    OVER_CAP = "over_cap"  # the chain's total would pass its cap
    RESOURCE_REMOVED = "resource_removed"


@dataclass(frozen=True)
class ExtendResult:
    outcome: ExtendOutcome
    # The grant's request id (NO_SUCH_REQUEST: as typed, which may be anything).
    request_id: str
    extension: RequestSnapshot | None = None
    # NOT_ACTIVE: the request's status.
    status: str = ""
    # EXTENSION_OPEN: the extension in the way, and where it stands.
    open_id: str = ""
    open_status: str = ""
    # OVER_CAP: the chain's total with this extension, its cap, and the rule whose max_total the cap
    # is (None: the resource's max_duration).
    total: timedelta = timedelta(0)
    cap: timedelta = timedelta(0)
    cap_rule: str | None = None
    resource: str = ""


class _Refused(Exception):
    """Rolls the extension's transaction back: nothing is stored for a refusal."""

    def __init__(self, result: ExtendResult) -> None:
        super().__init__(result.outcome.value)
        self.result = result


def window_end(session: Session, request: AccessRequest, now: datetime) -> datetime | None:
    """When an extension's new grant ends: the end of the grant it extends plus the extra time. None
    when that grant is no longer live (ended early, replaced, refused, or already past its end), so
    the extension must not be minted."""
    if request.extends is None:
        return now + timedelta(seconds=request.duration_seconds)
    old = grant_store.get_grant(session=session, request_id=request.extends, fresh=True)
    if not _live(old, now):
        return None
    assert old is not None
    return old.expires_at + timedelta(seconds=request.duration_seconds)


def ended_early(session: Session, request: AccessRequest) -> bool:
    """The grant an extension extends was ended before its time (revoked early, refused or replaced):
    a token minted for the extension meanwhile must not be handed out."""
    if request.extends is None:
        return False
    # Locked to the end of the caller's transaction: an early end of that grant (which takes the same
    # row first) then either commits before this read, and is seen, or waits for this extension to be
    # active, and finds it there to end too. A plain read would let both commit blind to each other.
    old = grant_store.get_grant(session=session, request_id=request.extends, lock=True)
    return (
        old is None
        or old.refusal is not None
        or old.revoke_requested_by is not None
        or (old.replaced_by is not None and old.replaced_by != request.id)
    )


def cancel_pending_extension(
    session: Session, request_id: str, *, now: datetime, policy: Policy, announcer: Announcer
) -> str | None:
    """The grant of ``request_id`` has ended: its extension still waiting for approval is cancelled in
    the same transaction (its card loses its buttons, the requester is told), so no one approves time
    on a grant that is gone. Returns the cancelled extension's id, if any. (One approved meanwhile is
    refused at its mint: ``window_end``.)"""
    latest = store.latest_extension(session=session, request_id=request_id)
    if latest is None or latest[1] != RequestStatus.PENDING.value:
        return None
    if not cancel_request(
        session=session,
        request_id=latest[0],
        actor=BOT_ACTOR,
        now=now,
        details={"cause": f"the grant of {request_id} it extends has ended"},
        failure_code=EXTENDED_GRANT_ENDED,
    ):
        return None  # decided meanwhile; a vote that approved it meets the mint's refusal
    view = load_snapshot(session, latest[0], policy=policy)
    announcer.outcome(session, view)
    lifecycle.note(session, lifecycle.Step.CANCELLED, view, by=BOT_ACTOR)
    return latest[0]


def opened_by_break_glass(session: Session, request: AccessRequest) -> bool:
    """The chain ``request`` belongs to began with ``/jit breakglass``: every link of it carries on
    that access, so an extension of any link is as much more break-glass time as one of the first."""
    link: AccessRequest | None = request
    while link is not None:
        if link.break_glass:
            return True
        link = store.get_request(session=session, request_id=link.extends) if link.extends is not None else None
    return False


def _live(grant: Grant | None, now: datetime) -> bool:
    return (
        grant is not None
        and grant.status == GrantStatus.ACTIVE.value
        and grant.refusal is None
        and grant.replaced_by is None
        and grant.expires_at > now
    )


@dataclass
class ExtensionService:
    # An extension is judged exactly as a first request is: the same usergroup cache, quota, recent
    # auto-approval counts, rule decision and rule outcome, so those are RequestService's own.
    requests: RequestService

    def check(self, request_id: str, *, requester: str) -> ExtendResult | None:
        """Could ``requester`` extend this grant now? None if so, else the refusal (audited when it is
        someone else's grant). The Extend button asks before it opens its form."""
        now = self.requests.clock()
        with read_scope(self.requests.engine) as session:
            refusal = self._refusal(session, request_id, requester, now)
        if refusal is not None and refusal.outcome is ExtendOutcome.NOT_REQUESTER:
            self._audit_refusal(request_id, requester, refusal, now)
        return refusal

    def extend(
        self,
        request_id: str,
        *,
        duration: timedelta,
        reason: str | None,
        requester: str,
        origin: str | None = None,
    ) -> ExtendResult:
        """Ask for ``duration`` more on the grant of ``request_id``; its card goes out through the outbox.

        ``origin`` makes the call idempotent, as for ``RequestService.submit``.
        """
        requests = self.requests
        now = requests.clock()
        with read_scope(requests.engine) as session:
            if origin is not None and (earlier := store.request_by_origin(session=session, origin=origin)):
                return ExtendResult(
                    ExtendOutcome.SUBMITTED,
                    earlier.extends or request_id,
                    snapshot(earlier, [], policy=requests.policy),
                )
            refusal = self._refusal(session, request_id, requester, now)
            original = store.get_request(session=session, request_id=request_id)
            if original is not None:
                session.expunge(original)  # read here, used after the session ends
        if refusal is not None:
            if refusal.outcome is ExtendOutcome.NOT_REQUESTER:
                self._audit_refusal(request_id, requester, refusal, now)
            return refusal
        assert original is not None
        resource = requests.policy.resource(original.resource)
        assert resource is not None  # _refusal checked it
        # Slack is asked before the transaction, as for a first request.
        usergroups, _unreadable = requests._usergroups_of(requester) if requests.policy.rules else (frozenset(), ())
        prior = (original.prior_seconds or 0) + original.duration_seconds
        extra = int(duration.total_seconds())
        row = AccessRequest(
            id=new_request_id(),
            requester_slack_id=requester,
            # The same subject as the grant it extends: the new token is for the same person.
            requester_subject=original.requester_subject,
            resource=original.resource,
            audience=original.audience,
            scopes=original.scopes,
            duration_seconds=extra,
            reason=reason or original.reason,
            approvals_required=resource.approvals_required,
            approver_channel=original.approver_channel,
            status=RequestStatus.PENDING.value,
            created_at=now,
            updated_at=now,
            origin=origin,
            extends=original.id,
            prior_seconds=prior,
        )
        try:
            with session_scope(requests.engine) as session:
                pending = self._store(session, original, row, usergroups, now)
        except _Refused as refused:
            return refused.result
        except IntegrityError:
            if origin is None:
                raise
            with read_scope(requests.engine) as session:
                earlier = store.request_by_origin(session=session, origin=origin)
                if earlier is None:
                    raise
                return ExtendResult(ExtendOutcome.SUBMITTED, request_id, snapshot(earlier, [], policy=requests.policy))
        if pending.status == RequestStatus.APPROVED.value and requests.on_approved is not None:
            requests.on_approved(pending.id)
        return ExtendResult(ExtendOutcome.SUBMITTED, request_id, pending)

    def _store(
        self,
        session: Session,
        original: AccessRequest,
        row: AccessRequest,
        usergroups: frozenset[str] | None,
        now: datetime,
    ) -> RequestSnapshot:
        requests = self.requests
        # From here this transaction owns the grant's request row: two extensions asked at once
        # cannot both find no extension open.
        if not store.lock_if_status(session=session, request_id=original.id, status=RequestStatus.ACTIVE, now=now):
            raise _Refused(ExtendResult(ExtendOutcome.NOT_ACTIVE, original.id, status=original.status))
        again = self._refusal(session, original.id, row.requester_slack_id, now)
        if again is not None:
            raise _Refused(again)
        requests._check_quota(session, row.requester_slack_id)
        extra = timedelta(seconds=row.duration_seconds)
        decision = decide(
            requests.policy,
            RuleInput(
                row.resource,
                row.scope_list,
                extra,
                row.reason,
                row.requester_slack_id,
                row.requester_subject,
                extension=True,
            ),
            usergroups=usergroups,
            now=now,
            recent_auto_approvals=requests._recent_auto_approvals(session, row.requester_slack_id, now),
            rego=requests.rego,
        )
        resource = requests.policy.resource(row.resource)
        assert resource is not None
        if opened_by_break_glass(session, original):
            # Nobody approved a break-glass grant: more time on it is for people to give, never a rule,
            # or break-glass access could run on past its break_glass.max_duration with no one looking.
            decision = for_break_glass_chain(decision, resource, original.id)
        cap = extension_cap(requests.policy, resource, decision)
        total = timedelta(seconds=(row.prior_seconds or 0)) + extra
        if total > cap.limit:
            raise _Refused(
                ExtendResult(
                    ExtendOutcome.OVER_CAP,
                    original.id,
                    total=total,
                    cap=cap.limit,
                    cap_rule=cap.rule,
                    resource=resource.name,
                )
            )
        apply_decision(row, decision, requests.policy, usergroups=usergroups)
        if row.context_usergroups is None:
            # More time on access that was given for being in a usergroup still rests on that, whoever or
            # whatever approved the extra time: the chain ends when the membership does.
            row.context_usergroups = original.context_usergroups
        store.add_request(session=session, request=row)
        facts = {
            "extends": original.id,
            "extra_seconds": row.duration_seconds,
            "total_seconds": int(total.total_seconds()),
            "cap_seconds": int(cap.limit.total_seconds()),
            "cap_rule": cap.rule,
        }
        record(
            AuditEventType.REQUEST_SUBMITTED,
            session=session,
            at=now,
            actor=row.requester_slack_id,
            request_id=row.id,
            resource=row.resource,
            scopes=list(row.scope_list),
            duration_seconds=row.duration_seconds,
            reason=row.reason,
            subject=row.requester_subject,
            decision={"effect": decision.effect.value, "rule": decision.rule, "reason": decision.reason},
            extension=facts,
        )
        record(
            AuditEventType.EXTENSION_REQUESTED,
            session=session,
            at=now,
            actor=row.requester_slack_id,
            request_id=original.id,
            extension=row.id,
            **{k: v for k, v in facts.items() if k != "extends"},
        )
        pending = snapshot(row, [], policy=requests.policy)
        lifecycle.note(
            session,
            lifecycle.Step.SUBMITTED,
            pending,
            scopes=row.scope_list,
            duration=format_duration(extra),
            rule=decision.rule,
        )
        if decision.effect in (Effect.AUTO_APPROVE, Effect.DENY):
            return requests._decide_by_rule(session, row, decision, now)
        requests.announcer.submitted(session, pending)
        return pending

    def _refusal(self, session: Session, request_id: str, requester: str, now: datetime) -> ExtendResult | None:
        original = store.get_request(session=session, request_id=request_id, fresh=True)
        if original is None:
            return ExtendResult(ExtendOutcome.NO_SUCH_REQUEST, request_id)
        if original.requester_slack_id != requester:
            return ExtendResult(ExtendOutcome.NOT_REQUESTER, request_id, status=original.status)
        if self.requests.policy.resource(original.resource) is None:
            return ExtendResult(ExtendOutcome.RESOURCE_REMOVED, request_id, resource=original.resource)
        grant = grant_store.get_grant(session=session, request_id=request_id, fresh=True)
        if original.status != RequestStatus.ACTIVE.value or not _live(grant, now):
            return ExtendResult(ExtendOutcome.NOT_ACTIVE, request_id, status=original.status)
        latest = store.latest_extension(session=session, request_id=request_id)
        if latest is not None and latest[1] in _OPEN:
            return ExtendResult(ExtendOutcome.EXTENSION_OPEN, request_id, open_id=latest[0], open_status=latest[1])
        return None

    def _audit_refusal(self, request_id: str, actor: str, refusal: ExtendResult, now: datetime) -> None:
        with session_scope(self.requests.engine) as session:
            record(
                AuditEventType.UNAUTHORIZED_ATTEMPT,
                session=session,
                at=now,
                actor=actor,
                request_id=request_id,
                action="extend",
                refusal="not_requester",
                request_status=refusal.status,
            )
