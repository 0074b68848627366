"""Deciding a request with the policy's rules: auto-approve, deny, or which people must approve.

A pure function of facts the caller gathers (the requester's usergroups, the clock, how many times each
rule has auto-approved for this requester lately), so that the same decision can be made live, in
``policy test`` and in ``policy replay``. Every rule evaluated leaves a trace of which conditions held,
which is what a person reads when a decision surprises them.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from functools import cached_property

from bot.domain.durations import format_duration
from bot.domain.policy import Policy, Resource
from bot.domain.policy_fields import SLACK_USER_ID, SLACK_USERGROUP_ID
from bot.domain.policy_rules import DAYS, Conditions, Hours, Rule, RuleEffect, expand
from bot.domain.rego import (
    AnswerKind,
    ContractBroken,
    RegoAnswer,
    RegoEffect,
    RegoEvaluator,
    RegoVerdict,
    read_answer,
    rego_input,
)
from bot.domain.text import one_line


@dataclass(frozen=True)
class AccessRequest:
    resource: str
    scopes: tuple[str, ...]
    duration: timedelta
    reason: str
    requester: str  # Slack user id
    subject: str | None  # IdP subject, when known
    # An extension of an active grant (/jit extend): ``duration`` is then the extra time asked for.
    extension: bool = False


class Effect(StrEnum):
    AUTO_APPROVE = "auto_approve"
    DENY = "deny"
    REQUIRE = "require"
    DEFAULT = "default"  # no rule decided: the resource's own approvers


class Outcome(StrEnum):
    MATCHED = "matched"
    NOT_MATCHED = "not_matched"  # a `when` condition did not hold
    EXCLUDED = "excluded"  # every `unless` condition held
    LIMIT_REACHED = "limit_reached"
    USERGROUPS_UNKNOWN = "usergroups_unknown"  # it depends on usergroups that could not be looked up
    PASSED = "passed"  # its Rego module answered pass, or nothing
    FAILED = "failed"  # its Rego module failed, timed out or broke the contract: the request is denied


@dataclass(frozen=True)
class Check:
    part: str  # "when" or "unless"
    condition: str
    held: bool | None  # None: it depends on usergroups that could not be looked up
    detail: str


@dataclass(frozen=True)
class RuleTrace:
    rule: str
    outcome: Outcome
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class RegoFailure:
    """Why a rule's Rego module did not decide: audited, and the reason the request was denied."""

    kind: str  # "error", "timeout" or "contract"
    detail: str


@dataclass(frozen=True)
class Decision:
    effect: Effect
    rule: str | None  # the rule that decided; None for the default
    reason: str
    # Who must approve, and how many: empty and 0 when no one needs to (auto_approve, deny).
    approvers: tuple[str, ...]
    approvals_required: int
    message: str | None  # a deny rule's words for the requester
    # Builds the trace: deciding needs only each condition's truth, and a request is decided far more
    # often (every /jit request, every replayed one) than its trace is read (a failed policy test).
    explain: Callable[[], tuple[RuleTrace, ...]] = field(repr=False, compare=False)
    usergroups_unknown: bool = False  # some rule needed the requester's usergroups and they could not be looked up
    rego_failure: RegoFailure | None = None

    @cached_property
    def trace(self) -> tuple[RuleTrace, ...]:
        """Every rule evaluated, in order, up to the one that decided, with each condition and why."""
        return self.explain()


def decide(
    policy: Policy,
    request: AccessRequest,
    *,
    usergroups: frozenset[str] | None,
    now: datetime,
    recent_auto_approvals: Mapping[str, int],
    rego: RegoEvaluator | None = None,
) -> Decision:
    """The first rule that matches decides; with none, the resource's approvers do.

    ``usergroups`` are the ids of the usergroups the requester is in, or None when Slack could not be
    asked. ``recent_auto_approvals`` maps a rule's name to how many requests of this requester it
    auto-approved within its ``limit.per``.

    A rule that depends on usergroups that could not be looked up neither matches nor is passed over
    on a guess. An auto_approve rule is skipped (at worst the requester waits for a person). A deny or
    require rule stops evaluation there and sends the request to people, because passing over it could
    let a later rule decide more leniently than this one would have.

    A rule with ``rego:`` whose ``when`` holds asks ``rego`` for its module's answer. ``pass`` (or no
    answer) moves on; a failure denies, since a policy that cannot be read must not grant. While the
    usergroups are unknown the module is not asked: it would judge by groups short of some, so the
    request goes to people there, as for a YAML deny or require rule that needs them.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    resource = policy.resource(request.resource)
    if resource is None:
        raise ValueError(f"unknown resource '{request.resource}'")
    skipped: list[str] = []
    answers: dict[str, RegoAnswer] = {}  # what each Rego rule asked answered, for the trace

    def explain(upto: int) -> Callable[[], tuple[RuleTrace, ...]]:
        def build() -> tuple[RuleTrace, ...]:
            return tuple(
                RuleTrace(rule.name, *_evaluate(policy, rule, request, usergroups, now, recent_auto_approvals, answers))
                for rule in policy.rules[:upto]
            )

        return build

    for index, rule in enumerate(policy.rules):
        outcome = _outcome(policy, rule, request, usergroups, now, recent_auto_approvals)
        if outcome is Outcome.MATCHED and rule.rego is not None and usergroups is None:
            # The module would see groups short of the usergroups Slack could not list, and any answer
            # (a pass included: "deny contractors, else pass") could rest on that; people decide.
            approvers, approvals = resource.approvers, resource.approvals_required
            reason = (
                f"rule '{rule.name}' gives its Rego module the requester's groups, and their usergroups could "
                "not be looked up, so people decide"
            )
            return Decision(Effect.REQUIRE, rule.name, reason, approvers, approvals, None, explain(index + 1), True)
        if outcome is Outcome.MATCHED and rule.rego is not None:
            if rego is None:
                raise ValueError(f"rule '{rule.name}' is decided by a Rego module and no evaluator was given")
            document = _rego_document(policy, rule, resource, request, usergroups, now, recent_auto_approvals)
            answers[rule.name] = answer = rego.evaluate(rule.name, document)
            decided = _decided_by_rego(policy, rule, resource, answer, explain(index + 1), skipped)
            if decided is not None:
                return decided
            continue
        if outcome is Outcome.USERGROUPS_UNKNOWN and rule.effect is RuleEffect.AUTO_APPROVE:
            skipped.append(rule.name)
        elif outcome is Outcome.USERGROUPS_UNKNOWN:
            approvers, approvals = _people(policy, rule, resource)
            reason = (
                f"rule '{rule.name}' depends on the requester's usergroups, which could not be looked up, "
                "so people decide"
            )
            return Decision(Effect.REQUIRE, rule.name, reason, approvers, approvals, None, explain(index + 1), True)
        elif outcome is Outcome.MATCHED:
            return _decided_by(policy, rule, resource, explain(index + 1), skipped)
    reason = "no rule matched: the resource's approvers decide" + _skipped_note(skipped)
    return Decision(
        Effect.DEFAULT,
        None,
        reason,
        resource.approvers,
        resource.approvals_required,
        None,
        explain(len(policy.rules)),
        bool(skipped),
    )


def _decided_by(
    policy: Policy,
    rule: Rule,
    resource: Resource,
    trace: Callable[[], tuple[RuleTrace, ...]],
    skipped: list[str],
) -> Decision:
    held = list(rule.when.names)  # it matched, so every one of its when conditions held
    why = f"rule '{rule.name}' matched ({', '.join(held) if held else 'it has no conditions'})"
    why += _skipped_note(skipped)
    unknown = bool(skipped)
    if rule.effect is RuleEffect.AUTO_APPROVE:
        return Decision(Effect.AUTO_APPROVE, rule.name, why, (), 0, None, trace, unknown)
    if rule.effect is RuleEffect.DENY:
        return Decision(Effect.DENY, rule.name, why, (), 0, rule.message, trace, unknown)
    approvers, approvals = _people(policy, rule, resource)
    return Decision(Effect.REQUIRE, rule.name, why, approvers, approvals, None, trace, unknown)


def _rego_document(
    policy: Policy,
    rule: Rule,
    resource: Resource,
    request: AccessRequest,
    usergroups: frozenset[str] | None,
    now: datetime,
    recent: Mapping[str, int],
) -> dict[str, object]:
    return rego_input(
        requester=request.requester,
        subject=request.subject,
        groups=groups_of(policy, request, usergroups),
        resource={
            "name": resource.name,
            "audience": resource.audience,
            "scopes": list(resource.scopes),
            "max_duration_seconds": int(resource.max_duration.total_seconds()),
        },
        scopes=request.scopes,
        duration_seconds=int(request.duration.total_seconds()),
        reason=request.reason,
        now=now,
        recent_auto_approvals=recent.get(rule.name, 0),
        extension=request.extension,
    )


def groups_of(policy: Policy, request: AccessRequest, usergroups: frozenset[str] | None) -> tuple[str, ...]:
    """The policy's groups the requester is in (by Slack id, IdP subject or usergroup), then the
    usergroups they are in, as a Rego module sees them in input.requester.groups."""
    mine = set(usergroups or ())
    names = [
        name
        for name, members in policy.groups.items()
        if any(m == request.requester or m == request.subject or m in mine for m in members)
    ]
    return (*names, *sorted(mine))


def _decided_by_rego(
    policy: Policy,
    rule: Rule,
    resource: Resource,
    answer: RegoAnswer,
    trace: Callable[[], tuple[RuleTrace, ...]],
    skipped: list[str],
) -> Decision | None:
    """What the module's answer decides, or None to go on to the next rule."""
    if answer.kind is AnswerKind.UNDEFINED:
        return None
    try:
        verdict = _verdict(policy, resource, answer)
    except ContractBroken as broken:
        kind = "contract" if answer.kind is AnswerKind.DEFINED else answer.kind.value
        # One line and bounded: the module wrote what it says, and it goes into the audit trail.
        return _failed(rule, RegoFailure(kind, one_line(str(broken), 300)), trace, bool(skipped))
    unknown = bool(skipped)
    why = f"rule '{rule.name}': its Rego module answered {verdict.effect}" + _skipped_note(skipped)
    if verdict.effect is RegoEffect.PASS:
        return None
    if verdict.effect is RegoEffect.AUTO_APPROVE:
        return Decision(Effect.AUTO_APPROVE, rule.name, why, (), 0, None, trace, unknown)
    if verdict.effect is RegoEffect.DENY:
        return Decision(Effect.DENY, rule.name, why, (), 0, verdict.message, trace, unknown)
    approvers = expand(policy.groups, verdict.approvers) if verdict.approvers is not None else resource.approvers
    approvals = verdict.approvals if verdict.approvals is not None else resource.approvals_required
    return Decision(Effect.REQUIRE, rule.name, why, approvers, approvals, None, trace, unknown)


def _verdict(policy: Policy, resource: Resource, answer: RegoAnswer) -> RegoVerdict:
    """The module's answer as a verdict; ContractBroken for anything that is not one (failures too)."""
    if answer.kind is AnswerKind.TIMEOUT:
        raise ContractBroken(answer.detail or "the module did not answer in time")
    if answer.kind is AnswerKind.ERROR:
        # rego-cpp gives no detail for some errors; the commonest is two bodies defining decision at once.
        detail = answer.detail
        if not detail or detail == "the evaluation failed":
            detail = (
                "rego-cpp gave no detail (common causes: two bodies that define decision for one input, "
                "or a built-in that failed, such as to_number of text)"
            )
        raise ContractBroken(f"the evaluation failed: {detail}")
    verdict = read_answer(answer.value, groups=policy.groups)
    if verdict.effect is RegoEffect.REQUIRE and (verdict.approvers is None) != (verdict.approvals is None):
        # One of the two is the resource's: the pair must still be approvable by the people it names.
        people = expand(policy.groups, verdict.approvers) if verdict.approvers else resource.approvers
        needed = verdict.approvals or resource.approvals_required
        users = len({a for a in people if SLACK_USER_ID.fullmatch(a)})
        if not any(SLACK_USERGROUP_ID.fullmatch(a) for a in people) and needed > users:
            if verdict.approvers is not None:
                why = f"approvers lists only {users} person(s) but resource '{resource.name}' needs {needed} approvals"
            else:
                why = f"approvals is {needed} but resource '{resource.name}' lists only {users} approver(s)"
            raise ContractBroken(why)
    return verdict


# What the requester reads when the module failed: it says nothing was granted and whom to tell.
REGO_FAILED_MESSAGE = (
    "The access policy could not decide this request (rule '{rule}' failed), so it was denied and nothing "
    "was granted. Tell the bot's administrators; the audit trail has the details."
)


def _failed(
    rule: Rule, failure: RegoFailure, trace: Callable[[], tuple[RuleTrace, ...]], usergroups_unknown: bool
) -> Decision:
    why = f"rule '{rule.name}' failed closed: {failure.detail}"
    message = REGO_FAILED_MESSAGE.format(rule=rule.name)
    return Decision(Effect.DENY, rule.name, why, (), 0, message, trace, usergroups_unknown, failure)


def _skipped_note(skipped: list[str]) -> str:
    if not skipped:
        return ""
    names = ", ".join(f"'{name}'" for name in skipped)
    return f"; skipped {names}: the requester's usergroups could not be looked up"


def _people(policy: Policy, rule: Rule, resource: Resource) -> tuple[tuple[str, ...], int]:
    """Who must approve under a require rule: its own approvers and approvals, each falling back to the
    resource's. A deny rule has neither, and then the resource's apply."""
    approvers = expand(policy.groups, rule.approvers) if rule.approvers is not None else resource.approvers
    approvals = rule.approvals if rule.approvals is not None else resource.approvals_required
    return approvers, approvals


def _evaluate(
    policy: Policy,
    rule: Rule,
    request: AccessRequest,
    usergroups: frozenset[str] | None,
    now: datetime,
    recent: Mapping[str, int],
    answers: Mapping[str, RegoAnswer],
) -> tuple[Outcome, tuple[Check, ...]]:
    outcome, checks = _evaluate_conditions(policy, rule, request, usergroups, now, recent)
    if outcome is Outcome.MATCHED and rule.rego is not None and usergroups is None:
        return Outcome.USERGROUPS_UNKNOWN, checks  # the module was not asked (see decide)
    answer = answers.get(rule.name)
    resource = policy.resource(request.resource)
    if outcome is not Outcome.MATCHED or rule.rego is None or answer is None or resource is None:
        return outcome, checks
    if answer.kind is AnswerKind.DEFINED:
        said = "data.jit.decision = " + json.dumps(answer.value, sort_keys=True, default=str)[:200]
    elif answer.kind is AnswerKind.UNDEFINED:
        said = "data.jit.decision = undefined"
    else:
        said = f"data.jit.decision = {answer.kind.value}: {answer.detail}"
    if answer.kind is AnswerKind.UNDEFINED:
        return Outcome.PASSED, (*checks, Check("rego", rule.rego.path, False, said))
    try:  # judged as decide judged it, so a trace never calls an answer good that was refused
        verdict = _verdict(policy, resource, answer)
    except ContractBroken as broken:
        # An answer that broke the contract says how; an error or a timeout already did.
        why = f"{said}: {broken}" if answer.kind is AnswerKind.DEFINED else said
        return Outcome.FAILED, (*checks, Check("rego", rule.rego.path, False, why))
    if verdict.effect is RegoEffect.PASS:
        return Outcome.PASSED, (*checks, Check("rego", rule.rego.path, False, said))
    return Outcome.MATCHED, (*checks, Check("rego", rule.rego.path, True, said))


def _evaluate_conditions(
    policy: Policy,
    rule: Rule,
    request: AccessRequest,
    usergroups: frozenset[str] | None,
    now: datetime,
    recent: Mapping[str, int],
) -> tuple[Outcome, tuple[Check, ...]]:
    checks = _checks(policy, "when", rule.when, request, usergroups, now)
    when = _all(checks)
    if when is False:
        return Outcome.NOT_MATCHED, checks
    if rule.unless is not None:
        unless_checks = _checks(policy, "unless", rule.unless, request, usergroups, now)
        checks += unless_checks
        unless = _all(unless_checks)
        if unless is True:
            return Outcome.EXCLUDED, checks
        if unless is None:
            when = None
    if when is None:
        return Outcome.USERGROUPS_UNKNOWN, checks
    if rule.limit is not None:
        count = recent.get(rule.name, 0)
        if count >= rule.limit.count:
            return Outcome.LIMIT_REACHED, checks
    return Outcome.MATCHED, checks


def _outcome(
    policy: Policy,
    rule: Rule,
    request: AccessRequest,
    usergroups: frozenset[str] | None,
    now: datetime,
    recent: Mapping[str, int],
) -> Outcome:
    """What ``_evaluate`` would say of the rule, stopping at the first condition that settles it."""
    when = _holds_all(policy, rule.when, request, usergroups, now)
    if when is False:
        return Outcome.NOT_MATCHED
    if rule.unless is not None:
        unless = _holds_all(policy, rule.unless, request, usergroups, now)
        if unless is True:
            return Outcome.EXCLUDED
        if unless is None:
            when = None
    if when is None:
        return Outcome.USERGROUPS_UNKNOWN
    if rule.limit is not None and recent.get(rule.name, 0) >= rule.limit.count:
        return Outcome.LIMIT_REACHED
    return Outcome.MATCHED


def _holds_all(
    policy: Policy, conditions: Conditions, request: AccessRequest, usergroups: frozenset[str] | None, now: datetime
) -> bool | None:
    unknown = False
    for name in conditions.names:
        held = _holds(policy, name, conditions, request, usergroups, now)
        if held is False:
            return False
        unknown = unknown or held is None
    return None if unknown else True


def _holds(
    policy: Policy,
    name: str,
    conditions: Conditions,
    request: AccessRequest,
    usergroups: frozenset[str] | None,
    now: datetime,
) -> bool | None:
    """Whether one condition holds (None: it depends on usergroups nobody could look up)."""
    if name == "resources" and conditions.resources is not None:
        return any(fnmatch.fnmatchcase(request.resource, pattern) for pattern in conditions.resources)
    if name == "scopes_within" and conditions.scopes_within is not None:
        return all(scope in conditions.scopes_within for scope in request.scopes)
    if name == "scopes_any" and conditions.scopes_any is not None:
        return any(scope in conditions.scopes_any for scope in request.scopes)
    if name == "min_duration" and conditions.min_duration is not None:
        return request.duration >= conditions.min_duration
    if name == "max_duration" and conditions.max_duration is not None:
        return request.duration <= conditions.max_duration
    if name == "reason_matches" and conditions.reason_matches is not None:
        return conditions.reason_matches.search(request.reason) is not None
    if name == "hours" and conditions.hours is not None:
        return _within_hours(conditions.hours, now)
    if name == "requester_in" and conditions.requester_in is not None:
        return _is_member(policy, conditions.requester_in, request, usergroups)
    if name == "extension" and conditions.extension is not None:
        return request.extension is conditions.extension
    raise AssertionError(f"no check for condition {name}")


def _is_member(
    policy: Policy, entries: tuple[str, ...], request: AccessRequest, usergroups: frozenset[str] | None
) -> bool | None:
    unknown = False
    for member in expand(policy.groups, entries):
        if member == request.requester or member == request.subject:
            return True
        if usergroups is not None:
            if member in usergroups:
                return True
        elif SLACK_USERGROUP_ID.fullmatch(member):
            unknown = True
    return None if unknown else False


def _all(checks: tuple[Check, ...]) -> bool | None:
    """All of them hold: False if one does not, else None if one is unknown, else True."""
    if any(check.held is False for check in checks):
        return False
    if any(check.held is None for check in checks):
        return None
    return True


def _checks(
    policy: Policy,
    part: str,
    conditions: Conditions,
    request: AccessRequest,
    usergroups: frozenset[str] | None,
    now: datetime,
) -> tuple[Check, ...]:
    # Every condition is checked, not just up to the first that fails: the trace shows them all.
    checks = []
    for name in conditions.names:
        held, detail = _condition(policy, name, conditions, request, usergroups, now)
        checks.append(Check(part, name, held, detail))
    return tuple(checks)


def _condition(
    policy: Policy,
    name: str,
    conditions: Conditions,
    request: AccessRequest,
    usergroups: frozenset[str] | None,
    now: datetime,
) -> tuple[bool | None, str]:
    if name == "requester_in" and conditions.requester_in is not None:
        return _member(policy, conditions.requester_in, request, usergroups)
    if name == "resources" and conditions.resources is not None:
        held = any(fnmatch.fnmatchcase(request.resource, pattern) for pattern in conditions.resources)
        return held, f"'{request.resource}' {'matches' if held else 'matches none of'} {_list(conditions.resources)}"
    if name == "scopes_within" and conditions.scopes_within is not None:
        outside = [scope for scope in request.scopes if scope not in conditions.scopes_within]
        if outside:
            return False, f"{_list(outside)} not within {_list(conditions.scopes_within)}"
        return True, f"every requested scope is within {_list(conditions.scopes_within)}"
    if name == "scopes_any" and conditions.scopes_any is not None:
        shared = [scope for scope in request.scopes if scope in conditions.scopes_any]
        return bool(shared), f"{_list(shared) if shared else 'none'} of {_list(conditions.scopes_any)} requested"
    if name == "min_duration" and conditions.min_duration is not None:
        held = request.duration >= conditions.min_duration
        sign = "≥" if held else "<"
        return held, f"{format_duration(request.duration)} {sign} {format_duration(conditions.min_duration)}"
    if name == "max_duration" and conditions.max_duration is not None:
        held = request.duration <= conditions.max_duration
        sign = "≤" if held else ">"
        return held, f"{format_duration(request.duration)} {sign} {format_duration(conditions.max_duration)}"
    if name == "hours" and conditions.hours is not None:
        return _in_hours(conditions.hours, now)
    if name == "reason_matches" and conditions.reason_matches is not None:
        found = conditions.reason_matches.search(request.reason)
        return found is not None, f"found '{found.group(0)}'" if found else "the reason does not match"
    if name == "extension" and conditions.extension is not None:
        said = "an extension of an active grant" if request.extension else "a first request, not an extension"
        return request.extension is conditions.extension, f"it is {said}"
    raise AssertionError(f"no check for condition {name}")


def _list(items: tuple[str, ...] | list[str]) -> str:
    return ", ".join(items)


def _member(
    policy: Policy, entries: tuple[str, ...], request: AccessRequest, usergroups: frozenset[str] | None
) -> tuple[bool | None, str]:
    """In a group if the Slack id, the IdP subject or one of the usergroups is listed in it."""
    unknown = []
    for member in expand(policy.groups, entries):
        if member == request.requester or (request.subject is not None and member == request.subject):
            return True, f"{member} is listed"
        if SLACK_USERGROUP_ID.fullmatch(member):
            if usergroups is None:
                unknown.append(member)
            elif member in usergroups:
                return True, f"in usergroup {member}"
    if unknown:
        return None, f"usergroups unknown, so membership of {_list(unknown)} could not be checked"
    return False, f"not in {_list(entries)}"


def _within_hours(hours: Hours, now: datetime) -> bool:
    local = now.astimezone(hours.zone)
    clock = local.time()
    start, end = hours.start or time(0), hours.end
    day = local.weekday()
    if end is None or start < end:
        inside = start <= clock and (end is None or clock < end)
    elif clock >= start:
        inside = True
    else:
        inside = clock < end
        day = (day - 1) % 7  # the part after midnight belongs to the night that began yesterday
    return inside and (hours.days is None or DAYS[day] in hours.days)


def _in_hours(hours: Hours, now: datetime) -> tuple[bool, str]:
    """On the wall clock of the rule's time zone, so a 08:00 start stays 08:00 across DST changes.

    A window whose ``to`` is before its ``from`` runs past midnight, and belongs to the day it starts
    on: ``days: [fri], from 22:00, to 06:00`` holds on Saturday at 02:00, not on Friday at 02:00.
    """
    held = _within_hours(hours, now)
    local = now.astimezone(hours.zone)
    clock = local.time()
    start, end = hours.start or time(0), hours.end
    if end is not None:
        window = f"{start:%H:%M}–{end:%H:%M}"
    else:
        window = f"from {start:%H:%M}" if hours.start is not None else "all day"
    days = ",".join(hours.days) if hours.days is not None else "every day"
    where = f"{DAYS[local.weekday()]} {clock:%H:%M} {hours.timezone}"
    return held, f"{where} is {'within' if held else 'outside'} {days} {window}"
