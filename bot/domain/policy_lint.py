"""What ``jit-bot policy check`` says of a valid policy: each rule in words, and what is allowed but
probably a mistake (a rule that can never match or that an earlier one always takes first, a group
nobody uses, a resource no rule names).

Shadowing is reported only when it is certain: the earlier rule has no ``unless`` and no limit, and
each of its conditions holds for every request the later rule could match. A rule it cannot prove
shadowed is not reported, so every warning is worth reading.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from bot.domain.durations import format_duration
from bot.domain.policy import Policy, Resource
from bot.domain.policy_rules import Conditions, Hours, Rule, RuleEffect, applicable_resources, rule_warnings


@dataclass(frozen=True)
class Lint:
    rules: tuple[str, ...]  # one line per rule, in order
    warnings: tuple[str, ...]


def lint(policy: Policy) -> Lint:
    lines = tuple(f"rules[{i}] {rule.name}: {describe(rule, policy)}" for i, rule in enumerate(policy.rules))
    warnings = [*rule_warnings(policy.rules, policy.resource_names)]
    warnings += _never_matching(policy)
    warnings += _shadowed(policy)
    warnings += _unused_groups(policy)
    warnings += _unmentioned_resources(policy)
    return Lint(rules=lines, warnings=tuple(warnings))


# --- a rule in words ------------------------------------------------------------------------------


def describe(rule: Rule, policy: Policy) -> str:
    if rule.rego is not None:
        matched = [r.name for r in applicable_resources(rule, policy.resources)]
        parts = [f"asks Rego module {rule.rego.path} when {_conditions(rule.when) or 'any request'}"]
        parts.append(f"(resources: {', '.join(matched) or 'none'})")
        if rule.unless is not None:
            parts.append(f"unless {_conditions(rule.unless)}")
        return "; ".join(parts)
    assert rule.effect is not None  # every rule without rego: has one
    effect = {
        RuleEffect.AUTO_APPROVE: "auto-approve",
        RuleEffect.DENY: "deny",
        RuleEffect.REQUIRE: "require",
    }[rule.effect]
    if rule.effect is RuleEffect.REQUIRE:
        who = ", ".join(rule.approvers) if rule.approvers else "the resource's approvers"
        count = rule.approvals if rule.approvals is not None else "the resource's number of"
        effect = f"require {count} approval(s) from {who}"
    matched = [r.name for r in applicable_resources(rule, policy.resources)]
    parts = [f"{effect} when {_conditions(rule.when) or 'any request'}"]
    parts.append(f"(resources: {', '.join(matched) or 'none'})")
    if rule.unless is not None:
        parts.append(f"unless {_conditions(rule.unless)}")
    if rule.limit is not None:
        parts.append(f"at most {rule.limit.count} per requester per {format_duration(rule.limit.per)}")
    if rule.message:
        parts.append(f"saying {rule.message!r}")
    if rule.revoke_when_context_ends:
        parts.append("ended early once the requester is in none of the usergroups it approved for")
    if rule.max_total is not None:
        parts.append(f"extensions up to {format_duration(rule.max_total)} in all")
    return "; ".join(parts)


def _conditions(conditions: Conditions) -> str:
    said = []
    if conditions.requester_in is not None:
        said.append(f"requester in {', '.join(conditions.requester_in)}")
    if conditions.resources is not None:
        said.append(f"resource is {' or '.join(conditions.resources)}")
    if conditions.scopes_within is not None:
        said.append(f"every scope is one of {', '.join(conditions.scopes_within)}")
    if conditions.scopes_any is not None:
        said.append(f"any scope is one of {', '.join(conditions.scopes_any)}")
    if conditions.min_duration is not None:
        said.append(f"at least {format_duration(conditions.min_duration)}")
    if conditions.max_duration is not None:
        said.append(f"at most {format_duration(conditions.max_duration)}")
    if conditions.hours is not None:
        said.append(_hours(conditions.hours))
    if conditions.reason_matches is not None:
        said.append(f"reason matches '{conditions.reason_matches.pattern}'")
    if conditions.extension is not None:
        said.append("it is an extension" if conditions.extension else "it is not an extension")
    return " and ".join(said)


def _hours(hours: Hours) -> str:
    days = ",".join(hours.days) if hours.days else "every day"
    start = f"{hours.start:%H:%M}" if hours.start else "00:00"
    end = f"{hours.end:%H:%M}" if hours.end else "24:00"
    return f"{days} {start}–{end} {hours.timezone}"


# --- warnings -------------------------------------------------------------------------------------


def _never_matching(policy: Policy) -> list[str]:
    """Rules whose conditions no request to the resources they name could meet."""
    found = []
    for index, rule in enumerate(policy.rules):
        resources = applicable_resources(rule, policy.resources)
        if not resources:
            continue  # rule_warnings already says its patterns match nothing
        when = rule.when
        if when.min_duration is not None and all(when.min_duration > r.max_duration for r in resources):
            found.append(
                f"rules[{index}] {rule.name}: can never match: min_duration {format_duration(when.min_duration)} "
                "is longer than the max_duration of every resource it names"
            )
        for key in ("scopes_within", "scopes_any"):
            scopes = getattr(when, key)
            if scopes is not None and not any(set(scopes) & set(r.scopes) for r in resources):
                found.append(
                    f"rules[{index}] {rule.name}: can never match: no resource it names has any of the "
                    f"scopes in {key} ({', '.join(scopes)})"
                )
    return found


def _shadowed(policy: Policy) -> list[str]:
    found = []
    for later_index, later in enumerate(policy.rules):
        for earlier_index, earlier in enumerate(policy.rules[:later_index]):
            if _covers(earlier, later, policy.resources):
                found.append(
                    f"rules[{later_index}] {later.name}: never decides: rules[{earlier_index}] {earlier.name} "
                    "matches every request it would, and comes first"
                )
                break
    return found


def _covers(earlier: Rule, later: Rule, resources: Sequence[Resource]) -> bool:
    """True only if ``earlier`` surely matches whenever ``later`` would."""
    # A Rego module may answer pass, so the rules after it still decide.
    if earlier.rego is not None or earlier.unless is not None or earlier.limit is not None:
        return False
    first, then = earlier.when, later.when
    later_resources = applicable_resources(later, resources)
    if not later_resources:
        return False
    earlier_names = {r.name for r in applicable_resources(earlier, resources)}
    if not {r.name for r in later_resources} <= earlier_names:
        return False
    if first.requester_in is not None and not (
        then.requester_in is not None and set(then.requester_in) <= set(first.requester_in)
    ):
        return False
    if first.scopes_within is not None:
        possible = set(then.scopes_within) if then.scopes_within is not None else _all_scopes(later_resources)
        if not possible <= set(first.scopes_within):
            return False
    if first.scopes_any is not None and not (
        then.scopes_any is not None and set(then.scopes_any) <= set(first.scopes_any)
    ):
        return False
    if first.min_duration is not None and not (
        then.min_duration is not None and then.min_duration >= first.min_duration
    ):
        return False
    if first.max_duration is not None:
        longest = then.max_duration if then.max_duration is not None else _longest(later_resources)
        if longest > first.max_duration:
            return False
    if first.hours is not None and first.hours != then.hours:
        return False
    if first.extension is not None and first.extension != then.extension:
        return False
    return first.reason_matches is None or (
        then.reason_matches is not None and first.reason_matches.pattern == then.reason_matches.pattern
    )


def _all_scopes(resources: Sequence[Resource]) -> set[str]:
    return {scope for resource in resources for scope in resource.scopes}


def _longest(resources: Sequence[Resource]) -> timedelta:
    return max(resource.max_duration for resource in resources)


def _unused_groups(policy: Policy) -> list[str]:
    used: set[str] = set()
    for rule in policy.rules:
        for conditions in (rule.when, rule.unless):
            if conditions is not None and conditions.requester_in:
                used |= set(conditions.requester_in)
        used |= set(rule.approvers or ())
        if rule.rego is not None:
            # A module sees group names in input.requester.groups and may answer them as approvers;
            # one it quotes counts as used.
            used |= {name for name in policy.groups if f'"{name}"' in rule.rego.source}
    # A group named in reminders.escalate_to is used, as an escalation's approvers.
    for reminders in (policy.reminders, *(r.reminders for r in policy.resources)):
        used |= set(reminders.escalate_to or ()) if reminders is not None else set()
    return [f"groups.{name}: no rule uses this group" for name in policy.groups if name not in used]


def _unmentioned_resources(policy: Policy) -> list[str]:
    if not policy.rules:
        return []
    patterns = [p for rule in policy.rules for c in (rule.when, rule.unless) if c and c.resources for p in c.resources]
    if any(rule.when.resources is None for rule in policy.rules):
        return []  # a rule that names no resource applies to all of them
    return [
        f"resource {r.name}: no rule names it, so its requests always go to its own approvers"
        for r in policy.resources
        if not any(fnmatch.fnmatchcase(r.name, p) for p in patterns)
    ]
