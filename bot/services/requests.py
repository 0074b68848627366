"""Submitting a request: checks, storage, and (through the outbox) the approval card."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bot.domain.audit import AuditEventType
from bot.domain.commands import RequestDraft
from bot.domain.context import context_usergroups
from bot.domain.durations import format_duration
from bot.domain.policy import Policy, Resource
from bot.domain.policy_fields import SLACK_USERGROUP_ID
from bot.domain.policy_rules import RuleEffect, expand
from bot.domain.rego import RECENT_WINDOW, RegoEvaluator
from bot.domain.rules import AccessRequest as RuleInput
from bot.domain.rules import Decision, Effect, decide
from bot.domain.status import RequestStatus
from bot.services import lifecycle
from bot.services.errors import TooManyPending
from bot.services.identity import resolve_subject
from bot.services.outbox import Announcer
from bot.services.ports import Directory, DirectoryError
from bot.services.snapshots import RequestSnapshot, snapshot
from bot.store import requests as store
from bot.store.audit import append_event
from bot.store.db import session_scope
from bot.store.models import AccessRequest
from bot.store.transitions import BOT_ACTOR, Audit, move_request

log = logging.getLogger(__name__)

# Crockford base32 without easily confused letters; ids are read aloud and typed into /jit revoke.
_ID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


# Usergroup members are cached this long: one Slack call per group per minute at most, and someone
# removed from a group stops matching a rule's requester_in within a minute.
USERGROUP_TTL_SECONDS = 60.0


def new_request_id() -> str:
    return "R" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def origin_key(kind: str, slack_id: str) -> str:
    """The idempotency key of a request created by one Slack interaction (its trigger, its view)."""
    return hashlib.sha256(f"{kind}:{slack_id}".encode()).hexdigest()


def pending_request(
    draft: RequestDraft,
    resource: Resource,
    *,
    requester: str,
    subject: str,
    now: datetime,
    origin: str | None,
    break_glass: bool = False,
) -> AccessRequest:
    """The row of a new request for ``draft``, pending, as the resource's approvers would decide it (a
    rule's decision is written on it after, by ``apply_decision``; break-glass needs no approval)."""
    return AccessRequest(
        id=new_request_id(),
        requester_slack_id=requester,
        requester_subject=subject,
        resource=resource.name,
        audience=resource.audience,
        scopes=" ".join(draft.scopes),
        duration_seconds=int(draft.duration.total_seconds()),
        reason=draft.reason,
        approvals_required=0 if break_glass else resource.approvals_required,
        approver_channel=resource.approver_channel,
        status=RequestStatus.PENDING.value,
        created_at=now,
        updated_at=now,
        origin=origin,
        break_glass=break_glass,
    )


def apply_decision(
    row: AccessRequest, decision: Decision, policy: Policy, *, usergroups: frozenset[str] | None
) -> None:
    """Write on a request about to be stored what the rules decided: the deciding rule, a require rule's
    people, and for an auto-approval the usergroups it rests on when its rule ends it with them (a first
    request and an extension alike, so more time never outlives the reason it was given for)."""
    if decision.effect is not Effect.DEFAULT:
        row.rule = decision.rule
    if decision.effect is Effect.REQUIRE:
        row.approvals_required = decision.approvals_required
        row.approvers = " ".join(decision.approvers)
    elif decision.effect is Effect.AUTO_APPROVE:
        row.approvals_required = 0
        context = context_usergroups(
            policy,
            decision.rule,
            requester=row.requester_slack_id,
            subject=row.requester_subject,
            usergroups=usergroups,
        )
        row.context_usergroups = " ".join(context) or None


@dataclass
class RequestService:
    engine: Engine
    policy: Policy
    directory: Directory
    announcer: Announcer
    clock: Callable[[], datetime]
    # Called with the request id once an auto-approval has committed (minting, when an IdP is configured).
    on_approved: Callable[[str], object] | None = None
    # How long a usergroup's members, as Slack listed them, are trusted for the rules' requester_in.
    usergroup_ttl_seconds: float = USERGROUP_TTL_SECONDS
    monotonic: Callable[[], float] = time.monotonic
    # Evaluates the policy's Rego rules (None when it has none).
    rego: RegoEvaluator | None = None
    _members: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict, init=False, repr=False)
    _members_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def submit(self, draft: RequestDraft, *, requester: str, origin: str | None = None) -> RequestSnapshot:
        """Store a checked request; its approval card goes out through the outbox.

        Raises UnmappedRequester or TooManyPending before anything is stored. ``origin`` makes the
        call idempotent: the same Slack interaction delivered twice (a replay, a retry) gets the
        request the first delivery made, and nothing new is stored or posted.
        """
        resource = self.policy.resource(draft.resource)
        if resource is None:  # parse_command already checked; the policy is immutable while we run.
            raise RuntimeError(f"resource {draft.resource!r} vanished from the policy")
        subject = resolve_subject(requester, policy=self.policy, directory=self.directory)
        # Slack is asked before the transaction: a Slack round-trip must never hold the database.
        usergroups, unreadable = self._usergroups_of(requester) if self.policy.rules else (frozenset(), ())
        now = self.clock()
        row = pending_request(draft, resource, requester=requester, subject=subject, now=now, origin=origin)
        try:
            with session_scope(self.engine) as session:
                if origin is not None and (earlier := store.request_by_origin(session=session, origin=origin)):
                    log.info("a repeated Slack delivery asked again for request %s; nothing new was made", earlier.id)
                    return snapshot(earlier, [], policy=self.policy)
                self._check_quota(session, requester)
                decision = decide(
                    self.policy,
                    RuleInput(resource.name, draft.scopes, draft.duration, draft.reason, requester, subject),
                    usergroups=usergroups,
                    now=now,
                    recent_auto_approvals=self._recent_auto_approvals(session, requester, now),
                    rego=self.rego,
                )
                apply_decision(row, decision, self.policy, usergroups=usergroups)
                store.add_request(session=session, request=row)
                append_event(
                    session=session,
                    at=now,
                    event_type=AuditEventType.REQUEST_SUBMITTED.value,
                    actor=requester,
                    request_id=row.id,
                    details={
                        "resource": row.resource,
                        "scopes": list(draft.scopes),
                        "duration_seconds": row.duration_seconds,
                        "reason": row.reason,
                        "subject": subject,
                        "decision": {"effect": decision.effect.value, "rule": decision.rule, "reason": decision.reason},
                    },
                )
                if decision.usergroups_unknown:
                    append_event(
                        session=session,
                        at=now,
                        event_type=AuditEventType.RULES_USERGROUPS_UNKNOWN.value,
                        actor=BOT_ACTOR,
                        request_id=row.id,
                        details={
                            "usergroups": list(unreadable),
                            "effect": decision.effect.value,
                            "rule": decision.rule,
                        },
                    )
                if decision.rego_failure is not None:
                    # Denied because the policy could not be read: the administrators must see why.
                    append_event(
                        session=session,
                        at=now,
                        event_type=AuditEventType.REGO_FAILED.value,
                        actor=BOT_ACTOR,
                        request_id=row.id,
                        details={
                            "rule": decision.rule,
                            "kind": decision.rego_failure.kind,
                            "detail": decision.rego_failure.detail,
                        },
                    )
                    # The detail may quote the module's answer, and so the request: it stays in the audit trail.
                    log.error(
                        "rule %s failed closed for request %s (%s); its rego_failed audit event says why",
                        decision.rule,
                        row.id,
                        decision.rego_failure.kind,
                    )
                pending = snapshot(row, [], policy=self.policy)
                lifecycle.note(
                    session,
                    lifecycle.Step.SUBMITTED,
                    pending,
                    scopes=draft.scopes,
                    duration=format_duration(draft.duration),
                    rule=decision.rule,
                )
                if decision.effect in (Effect.AUTO_APPROVE, Effect.DENY):
                    pending = self._decide_by_rule(session, row, decision, now)
                else:
                    self.announcer.submitted(session, pending)
        except IntegrityError:
            # Two deliveries of one interaction raced past the lookup; the other one made the request.
            if origin is None:
                raise
            with session_scope(self.engine) as session:
                earlier = store.request_by_origin(session=session, origin=origin)
                if earlier is None:
                    raise
                return snapshot(earlier, [], policy=self.policy)
        if pending.status == RequestStatus.APPROVED.value and self.on_approved is not None:
            self.on_approved(pending.id)
        return pending

    def _decide_by_rule(
        self, session: Session, row: AccessRequest, decision: Decision, now: datetime
    ) -> RequestSnapshot:
        """pending -> approved or denied by the rule, in the submission's transaction, with no vote."""
        approve = decision.effect is Effect.AUTO_APPROVE
        moved = move_request(
            session=session,
            request_id=row.id,
            source=RequestStatus.PENDING,
            target=RequestStatus.APPROVED if approve else RequestStatus.DENIED,
            now=now,
            event=Audit(
                AuditEventType.REQUEST_APPROVED if approve else AuditEventType.REQUEST_DENIED,
                actor=BOT_ACTOR,
                details={
                    "approvers": [],
                    "decided_by_rule": decision.rule,
                    "reason": decision.message if not approve else None,
                    "why": decision.reason,
                }
                # Only for a grant that ends with its usergroups: which ones it rests on.
                | ({"context_usergroups": row.context_usergroups.split()} if row.context_usergroups else {}),
            ),
            decided_at=now,
            decided_by=BOT_ACTOR,
            deny_reason=None if approve else decision.message,
        )
        if not moved:  # the row was inserted by this very transaction
            raise RuntimeError(f"request {row.id} changed under its own transaction")
        session.flush()
        session.refresh(row)
        decided = snapshot(row, [], policy=self.policy)
        lifecycle.note(
            session,
            lifecycle.Step.APPROVED if approve else lifecycle.Step.DENIED,
            decided,
            by=f"rule:{decision.rule}",
        )
        self.announcer.decided_by_rule(session, decided, minting=approve and self.on_approved is not None)
        return decided

    def _usergroups_of(self, requester: str) -> tuple[frozenset[str] | None, tuple[str, ...]]:
        """Which of the usergroups the rules name the requester is in (None: Slack could not list
        some of them), and the ones it could not list."""
        mine: set[str] = set()
        unreadable: list[str] = []
        for group in self._rule_usergroups():
            try:
                members = self._members_of(group)
            except DirectoryError as exc:
                log.warning("usergroup %s could not be listed for the rules: %s", group, exc)
                unreadable.append(group)
                continue
            if requester in members:
                mine.add(group)
        return (None if unreadable else frozenset(mine)), tuple(unreadable)

    def _rule_usergroups(self) -> tuple[str, ...]:
        entries: list[str] = []
        if any(rule.rego is not None for rule in self.policy.rules):
            # A Rego module sees the requester's groups, so every usergroup the groups name is asked.
            for members in self.policy.groups.values():
                entries.extend(members)
        for rule in self.policy.rules:
            for conditions in (rule.when, rule.unless):
                if conditions is not None and conditions.requester_in is not None:
                    entries.extend(expand(self.policy.groups, conditions.requester_in))
        return tuple(dict.fromkeys(entry for entry in entries if SLACK_USERGROUP_ID.fullmatch(entry)))

    def usergroup_members(self, group: str) -> frozenset[str]:
        """A usergroup's members through the 60 s cache the rules use."""
        return self._members_of(group)

    def _members_of(self, group: str) -> frozenset[str]:
        now = self.monotonic()
        with self._members_lock:
            cached = self._members.get(group)
        if cached is not None and now - cached[0] < self.usergroup_ttl_seconds:
            return cached[1]
        members = self.directory.usergroup_members(group)  # raises DirectoryError; a failure is not cached
        with self._members_lock:
            self._members[group] = (now, members)
        return members

    def _recent_auto_approvals(self, session: Session, requester: str, now: datetime) -> dict[str, int]:
        windows = {
            rule.name: rule.limit.per
            for rule in self.policy.rules
            if rule.effect is RuleEffect.AUTO_APPROVE and rule.limit is not None
        }
        windows |= {rule.name: RECENT_WINDOW for rule in self.policy.rules if rule.rego is not None}
        return {
            name: store.count_by_rule_since(session=session, requester=requester, rule=name, since=now - per)
            for name, per in windows.items()
        }

    def _check_quota(self, session: Session, requester: str) -> None:
        limit = self.policy.limits.pending_per_requester
        if session.get_bind().dialect.name == "postgresql":
            # Serialise one requester's submissions so two at once cannot both squeeze under the limit.
            session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:who))"), {"who": f"jit-quota:{requester}"})
        pending = store.count_in_status(
            session=session, requester=requester, statuses=frozenset({RequestStatus.PENDING})
        )
        if pending >= limit:
            raise TooManyPending(pending=pending, limit=limit)
