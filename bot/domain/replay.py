"""``jit-bot policy replay``: recorded requests decided again with a proposed policy, and what would
have changed. Pure: the caller streams the recorded requests in order of creation.

Auto-approval limits are replayed too: the proposed rules' own auto-approvals, in time order, count
against each rule's ``limit`` as they would have live. What the requester's usergroups were when a
request was made is not recorded, so the caller says what to assume (a mapping, or unknown).
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from bot.domain.extensions import for_break_glass_chain
from bot.domain.policy import Policy
from bot.domain.rego import RECENT_WINDOW, RegoEvaluator
from bot.domain.rules import AccessRequest, Decision, Effect, decide
from bot.domain.status import RequestStatus


class Before(StrEnum):
    """What happened to a recorded request."""

    APPROVED = "approved"  # by people (approved, minted, active, revoked, or failed to mint)
    AUTO_APPROVED = "auto-approved"  # by a rule, with no vote
    DENIED = "denied"
    DENIED_BY_RULE = "denied by a rule"
    EXPIRED = "expired unanswered"
    CANCELLED = "cancelled"
    PENDING = "pending"


_BEFORE = {
    RequestStatus.APPROVED: Before.APPROVED,
    RequestStatus.MINTING: Before.APPROVED,
    RequestStatus.ACTIVE: Before.APPROVED,
    RequestStatus.REVOKED: Before.APPROVED,
    RequestStatus.FAILED: Before.APPROVED,
    RequestStatus.DENIED: Before.DENIED,
    RequestStatus.EXPIRED: Before.EXPIRED,
    RequestStatus.CANCELLED: Before.CANCELLED,
    RequestStatus.PENDING: Before.PENDING,
}


@dataclass(frozen=True)
class Recorded:
    id: str
    created_at: datetime
    requester: str
    subject: str | None
    resource: str
    scopes: tuple[str, ...]
    duration: timedelta
    reason: str
    status: str
    approvals_required: int
    rule: str | None = None  # the rule that decided it when it was made (None: the resource's approvers)
    decided_by_rule: bool = False  # that rule decided it alone (auto-approved or denied, no vote)
    extension: bool = False  # an extension of an active grant (its duration: the extra time)
    break_glass_chain: bool = False  # an extension of a chain that began with /jit breakglass


@dataclass(frozen=True)
class Change:
    request: Recorded
    before: Before
    after: Decision

    @property
    def kind(self) -> str:
        return kind_of(self.before, self.after.effect)


@dataclass
class Replay:
    requests: int = 0
    skipped: list[str] = field(default_factory=list)  # resources the proposed policy no longer has
    changes: list[Change] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(change.kind for change in self.changes)


def kind_of(before: Before, after: Effect) -> str:
    if before is Before.AUTO_APPROVED:
        return "was auto-approved " + {
            Effect.DENY: "would have been denied by a rule",
            Effect.REQUIRE: "would have needed approvers",
            Effect.DEFAULT: "would have needed a human",
        }.get(after, "would have been auto-approved")
    if before is Before.DENIED_BY_RULE:
        decided = "auto-approved" if after is Effect.AUTO_APPROVE else "decided by people"
        return f"was denied by a rule would have been {decided}"
    needed_people = "needed a human" if before is not Before.DENIED else "was denied by a person"
    if after is Effect.AUTO_APPROVE:
        return f"{needed_people} would have been auto-approved"
    if after is Effect.DENY:
        return f"{'was approved' if before is Before.APPROVED else needed_people} would have been denied by a rule"
    return f"{'was approved' if before is Before.APPROVED else needed_people} would have needed other approvers"


def replay(
    policy: Policy,
    recorded: Iterable[Recorded],
    *,
    usergroups: Mapping[str, frozenset[str]] | None,
    rego: RegoEvaluator | None = None,
) -> Replay:
    """``usergroups``: each requester's usergroups to assume (a requester not in it is in none), or
    None: unknown for everyone, as when Slack cannot be asked. ``rego`` evaluates the policy's Rego
    rules (needed when it has any)."""
    result = Replay()
    # The window each counting rule looks back over: its limit's, or a Rego module's fixed one.
    limits = {rule.name: rule.limit.per for rule in policy.rules if rule.limit is not None}
    limits |= {rule.name: RECENT_WINDOW for rule in policy.rules if rule.rego is not None}
    granted: dict[tuple[str, str], deque[datetime]] = defaultdict(deque)
    for request in recorded:
        result.requests += 1
        resource = policy.resource(request.resource)
        if resource is None:
            result.skipped.append(request.id)
            continue
        recent = {}
        for name, per in limits.items():
            times = granted[(request.requester, name)]
            while times and times[0] <= request.created_at - per:
                times.popleft()
            recent[name] = len(times)
        groups = None if usergroups is None else usergroups.get(request.requester, frozenset())
        decision = decide(
            policy,
            AccessRequest(
                resource=request.resource,
                scopes=request.scopes,
                duration=request.duration,
                reason=request.reason,
                requester=request.requester,
                subject=request.subject,
                extension=request.extension,
            ),
            usergroups=groups,
            now=request.created_at,
            recent_auto_approvals=recent,
            rego=rego,
        )
        if request.extension and request.break_glass_chain:
            # As the bot decides it: no rule gives more break-glass time (bot.services.extensions).
            decision = for_break_glass_chain(decision, resource, request.id)
        if decision.effect is Effect.AUTO_APPROVE and decision.rule in limits:
            granted[(request.requester, decision.rule)].append(request.created_at)
        before = _before(request)
        if _changed(before, decision, resource.approvers, request.approvals_required):
            result.changes.append(Change(request, before, decision))
    return result


def _before(request: Recorded) -> Before:
    before = _BEFORE.get(RequestStatus(request.status), Before.PENDING)
    if request.decided_by_rule and before is Before.APPROVED:
        return Before.AUTO_APPROVED
    if request.decided_by_rule and before is Before.DENIED:
        return Before.DENIED_BY_RULE
    return before


def _changed(before: Before, after: Decision, approvers: tuple[str, ...], approvals: int) -> bool:
    if after.effect is Effect.DEFAULT:
        # People decide, as they did; unless a rule decided it alone then.
        return before in (Before.AUTO_APPROVED, Before.DENIED_BY_RULE)
    if after.effect is Effect.DENY:
        return before not in (Before.DENIED, Before.DENIED_BY_RULE)
    if after.effect is Effect.REQUIRE:
        return before in (Before.AUTO_APPROVED, Before.DENIED_BY_RULE) or (
            after.approvers,
            after.approvals_required,
        ) != (approvers, approvals)
    return before is not Before.AUTO_APPROVED
