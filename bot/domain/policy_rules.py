"""The policy's ``groups:`` and ``rules:`` as typed, validated values: what a valid rule is.

Deciding a request with them is ``bot.domain.rules``. A check that needs more than one rule (a group
name, a resource's approvers) runs on the whole policy (``policy_problems``), and still names the key.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import time
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, StrictBool, ValidationInfo, field_validator, model_validator

from bot.domain.durations import format_duration
from bot.domain.policy_fields import (
    NAME,
    NAME_RULE,
    SCOPE_NAME,
    SLACK_USER_ID,
    SLACK_USERGROUP_ID,
    Duration,
    Key,
    KeyedProblems,
    RegoModule,
    Strict,
    is_slack_id,
)
from bot.domain.text import one_line

if TYPE_CHECKING:
    from bot.domain.policy import Resource

# In the order of datetime.weekday(), which is how a day is looked up.
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


class RuleEffect(StrEnum):
    AUTO_APPROVE = "auto_approve"
    DENY = "deny"
    REQUIRE = "require"


def _clock(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 20:00 as the base-60 number 1200; saying so saves a puzzled author.
        raise ValueError(
            f'{value} is not a time like "08:00": put times in quotes (unquoted, YAML reads 20:00 as the number 1200)'
        )
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"'{value}' is not a time like \"08:00\" (24-hour HH:MM)")
    return time(int(match.group(1)), int(match.group(2)))


Clock = Annotated[time, BeforeValidator(_clock)]


def _regex(value: Any) -> re.Pattern[str]:
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("must be a regular expression, like '\\bINC-\\d+\\b'")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"'{value}' is not a valid regular expression: {exc.msg}") from None


Regex = Annotated[re.Pattern[str], BeforeValidator(_regex)]
Entries = Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]


def glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable shell-style glob, or None.

    fnmatch quietly reads an unclosed ``[`` as a literal bracket, so ``prod-[db`` would match only a
    resource of that very name: almost certainly not what the author meant, so it is refused.
    """
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1  # a ']' first in a class is a literal, as in fnmatch
            while j < len(pattern) and pattern[j] != "]":
                j += 1
            if j >= len(pattern):
                return f"'{pattern}' is not a valid pattern: the '[' at position {i} is never closed by ']'"
            i = j
        i += 1
    return None


def check_days(value: tuple[str, ...]) -> tuple[str, ...]:
    """Days of the week as a policy writes them (any case), each once; the rules' ``hours`` and the
    digest's ``business_hours`` share it."""
    days = tuple(day.lower() for day in value)
    for day in days:
        if day not in DAYS:
            raise ValueError(f"'{day}' is not a day: write mon, tue, wed, thu, fri, sat or sun")
    twice = sorted({day for day in days if days.count(day) > 1}, key=DAYS.index)
    if twice:
        raise ValueError(f"lists day '{twice[0]}' twice")
    return days


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"'{value}' is not a time zone (an IANA name like Europe/Berlin, or UTC)") from None
    return value


class Hours(Strict):
    """When a rule applies: a window of the day on some days of the week, on the clock of ``timezone``."""

    days: Annotated[tuple[str, ...], Field(min_length=1)] | None = None
    start: Clock | None = Field(default=None, alias="from")
    end: Clock | None = Field(default=None, alias="to")
    timezone: str = "UTC"

    @field_validator("days")
    @classmethod
    def _days(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else check_days(value)

    _timezone = field_validator("timezone")(check_timezone)

    @model_validator(mode="after")
    def _not_empty(self) -> Hours:
        if self.end is not None and (self.start or time(0)) == self.end:
            raise ValueError(
                f"from and to are both {self.end:%H:%M}, so the window is empty; leave both out for the whole day"
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches one instance per name


# The conditions in the order they are checked and reported.
CONDITIONS = (
    "requester_in",
    "resources",
    "scopes_within",
    "scopes_any",
    "min_duration",
    "max_duration",
    "hours",
    "reason_matches",
    "extension",
)


class Conditions(Strict):
    """Conditions that must all hold (``when``), or that exclude when they all hold (``unless``)."""

    requester_in: Entries | None = None
    resources: Entries | None = None
    scopes_within: Entries | None = None
    scopes_any: Entries | None = None
    min_duration: Duration | None = None
    max_duration: Duration | None = None
    hours: Hours | None = None
    reason_matches: Regex | None = None
    # true: only extensions of an active grant (/jit extend) match; false: only first requests. Strict:
    # YAML's "yes" or "no" in quotes must not quietly become a condition the author did not write.
    extension: StrictBool | None = None

    @field_validator("resources")
    @classmethod
    def _globs(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in value or ():
            problem = glob_problem(pattern)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("scopes_within", "scopes_any")
    @classmethod
    def _scopes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for scope in value or ():
            if not SCOPE_NAME.fullmatch(scope):
                raise ValueError(f"'{scope}' is not a valid scope name (no spaces or commas)")
        return value

    @model_validator(mode="after")
    def _possible(self) -> Conditions:
        problems: list[tuple[Key, str]] = []
        if self.min_duration is not None and self.max_duration is not None and self.min_duration > self.max_duration:
            problems.append(
                (
                    (),
                    f"min_duration {format_duration(self.min_duration)} is longer than max_duration "
                    f"{format_duration(self.max_duration)}, so no request could ever match",
                )
            )
        if self.scopes_within is not None and self.scopes_any is not None:
            if not set(self.scopes_within) & set(self.scopes_any):
                problems.append(((), "scopes_within and scopes_any share no scope, so no request could ever match"))
        if problems:
            raise KeyedProblems(problems)
        return self

    @cached_property
    def names(self) -> tuple[str, ...]:
        """The conditions that are set, in CONDITIONS order (asked once per rule per request: kept)."""
        return tuple(name for name in CONDITIONS if getattr(self, name) is not None)


class Limit(Strict):
    count: int = Field(ge=1, le=10_000)
    per: Duration


# Reads a rule's ``rego:`` file (a path as the policy wrote it) and compiles it; raises ValueError
# saying why it cannot be used. The policy loader passes one in the validation context under this key.
REGO_READER = "rego_reader"


class Rule(Strict):
    name: str
    # A rule decided by a Rego module may leave ``when`` out (the module sees every request) or use it
    # to narrow what the module is asked about; any other rule needs it.
    when: Conditions = Field(default_factory=Conditions)
    unless: Conditions | None = None
    effect: RuleEffect | None = None
    rego: RegoModule | None = None
    limit: Limit | None = None
    approvals: int | None = Field(default=None, ge=1, le=10)
    approvers: Entries | None = None
    message: str | None = Field(default=None, min_length=1, max_length=500)
    # An auto-approval this rule made because the requester was in a usergroup of when.requester_in
    # ends early once they are in none of those usergroups any more (bot.services.context).
    revoke_when_context_ends: StrictBool | None = None
    # The most a grant's chain (the first request and its approved extensions, this one included) may
    # add up to when this rule decides an extension; without it, the resource's max_duration.
    max_total: Duration | None = None

    @field_validator("message")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        # Shown on the card and in a DM: a newline in the policy must not forge a line there.
        if value is None:
            return None
        flat = one_line(value)
        if not flat:
            raise ValueError("must not be empty")
        return flat

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("rego", mode="before")
    @classmethod
    def _rego(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or isinstance(value, RegoModule):
            return value
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be the path of a Rego module file, like policies/prod.rego")
        reader = (info.context or {}).get(REGO_READER)
        if reader is None:
            raise ValueError("names a file, and this policy was not read from a file")
        return reader(value)

    @property
    def decided_by_rego(self) -> bool:
        return self.rego is not None

    @model_validator(mode="after")
    def _keys_fit_the_effect(self) -> Rule:
        problems: list[tuple[Key, str]] = []
        if self.rego is not None:
            for key in (
                "effect",
                "limit",
                "approvals",
                "approvers",
                "message",
                "revoke_when_context_ends",
                "max_total",
            ):
                if getattr(self, key) is not None:
                    problems.append(((key,), "is not for a rule with rego: the module's answer gives it"))
            if problems:
                raise KeyedProblems(problems)
            return self
        if self.effect is None:
            raise KeyedProblems([(("effect",), "is required (auto_approve, deny or require), or rego: FILE")])
        if "when" not in self.model_fields_set:
            raise KeyedProblems([(("when",), "is required")])
        if self.unless is not None and not self.unless.names:
            problems.append(
                (("unless",), "is empty, so it would exclude every request; give it conditions or remove it")
            )
        owners = {"limit": RuleEffect.AUTO_APPROVE, "approvals": RuleEffect.REQUIRE}
        owners |= {"approvers": RuleEffect.REQUIRE, "message": RuleEffect.DENY}
        owners |= {"revoke_when_context_ends": RuleEffect.AUTO_APPROVE}
        for key, owner in owners.items():
            if getattr(self, key) is not None and self.effect is not owner:
                problems.append(((key,), f"is only for rules with effect {owner}; this rule's effect is {self.effect}"))
        if self.revoke_when_context_ends and self.effect is RuleEffect.AUTO_APPROVE and not self.when.requester_in:
            problems.append(
                (
                    ("revoke_when_context_ends",),
                    "needs when.requester_in: the context that can end is the requester's membership of a usergroup",
                )
            )
        if self.max_total is not None and self.effect is RuleEffect.DENY:
            problems.append(
                (("max_total",), "is only for rules with effect auto_approve or require; this rule's effect is deny")
            )
        if problems:
            raise KeyedProblems(problems)
        return self


def _unique_names(rules: Sequence[Rule]) -> list[tuple[Key, str]]:
    first: dict[str, int] = {}
    problems: list[tuple[Key, str]] = []
    for index, rule in enumerate(rules):
        if rule.name in first:
            problems.append(((index, "name"), f"'{rule.name}' is already the name of rules[{first[rule.name]}]"))
        first.setdefault(rule.name, index)
    return problems


def check_rule_names(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    problems = _unique_names(rules)
    if problems:
        raise KeyedProblems(problems)
    return rules


def check_groups(groups: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    problems: list[tuple[Key, str]] = [
        ((name,), f"'{name}' is not a valid group name: it {NAME_RULE}") for name in groups if not NAME.fullmatch(name)
    ]
    if problems:
        raise KeyedProblems(problems)
    return groups


def expand(groups: Mapping[str, Iterable[str]], entries: Iterable[str]) -> tuple[str, ...]:
    """``entries`` with each group name replaced by its members; first mention wins the order."""
    seen: dict[str, None] = {}
    for entry in entries:
        for member in groups.get(entry, (entry,)):
            seen.setdefault(member, None)
    return tuple(seen)


def unknown_group(entry: str, groups: Mapping[str, object]) -> str:
    """The error for an entry that names no group (nor is a Slack id); break-glass's allowed shares it."""
    return _unknown_group(entry, groups)


def _unknown_group(entry: str, groups: Mapping[str, object]) -> str:
    guess = difflib.get_close_matches(entry, sorted(groups), n=1, cutoff=0.75)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    return f"'{entry}' is neither a group defined under groups: nor a Slack user id (U…) or usergroup id (S…){hint}"


def policy_problems(
    groups: Mapping[str, tuple[str, ...]], rules: Sequence[Rule], resources: Sequence[Resource]
) -> list[tuple[Key, str]]:
    """What no single rule can see wrong with itself: names of groups that are not defined, approver
    groups that hold someone who cannot click in Slack, and approvals no one could ever give."""
    problems: list[tuple[Key, str]] = []
    for index, rule in enumerate(rules):
        for part, conditions in (("when", rule.when), ("unless", rule.unless)):
            for entry in (conditions.requester_in or ()) if conditions else ():
                if not is_slack_id(entry) and entry not in groups:
                    problems.append((("rules", index, part, "requester_in"), _unknown_group(entry, groups)))
        problems += [(("rules", index, *key), why) for key, why in _approver_problems(groups, rule, resources)]
        if rule.revoke_when_context_ends and rule.when.requester_in:
            if not any(SLACK_USERGROUP_ID.fullmatch(m) for m in expand(groups, rule.when.requester_in)):
                problems.append(
                    (
                        ("rules", index, "revoke_when_context_ends"),
                        "when.requester_in names no Slack usergroup (S…), directly or through groups:, so there is "
                        "no membership that could end; a person listed by id stays listed",
                    )
                )
    return problems


def _approver_problems(
    groups: Mapping[str, tuple[str, ...]], rule: Rule, resources: Sequence[Resource]
) -> list[tuple[Key, str]]:
    if rule.approvers is not None:
        for entry in rule.approvers:
            if not is_slack_id(entry) and entry not in groups:
                return [(("approvers",), _unknown_group(entry, groups))]
            for member in groups.get(entry, ()):
                if not is_slack_id(member):
                    return [
                        (
                            ("approvers",),
                            f"group '{entry}' lists '{member}', which is not a Slack user id (U…) or usergroup id "
                            "(S…): only people in Slack can approve",
                        )
                    ]
    if rule.effect is not RuleEffect.REQUIRE or (rule.approvals is None and rule.approvers is None):
        return []
    for resource in applicable_resources(rule, resources):
        approvers = expand(groups, rule.approvers) if rule.approvers is not None else resource.approvers
        if any(SLACK_USERGROUP_ID.fullmatch(a) for a in approvers):
            continue  # a usergroup may hold any number of people
        users = len({a for a in approvers if SLACK_USER_ID.fullmatch(a)})
        needed = rule.approvals if rule.approvals is not None else resource.approvals_required
        if needed <= users:
            continue
        if rule.approvers is None:
            why = f"approvals is {needed} but resource '{resource.name}' lists only {users} approver(s)"
        elif rule.approvals is None:
            why = f"approvers lists {users} approver(s) but resource '{resource.name}' needs {needed} approvals"
        else:
            why = f"approvals is {needed} but only {users} approver(s) are listed"
        return [((), f"{why}, so no request could ever be approved")]
    return []


def applicable_resources(rule: Rule, resources: Sequence[Resource]) -> list[Resource]:
    """The resources a rule's ``when.resources`` lets it decide (all of them when it names none)."""
    patterns = rule.when.resources
    if patterns is None:
        return list(resources)
    return [r for r in resources if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]


def rule_warnings(rules: Sequence[Rule], resource_names: Sequence[str]) -> list[str]:
    """Things that are allowed but probably wrong, for ``jit-bot policy check``: a pattern that
    matches no resource (a typo, or a resource since removed) makes its rule dead or its unless idle."""
    warnings = []
    for index, rule in enumerate(rules):
        for part, conditions in (("when", rule.when), ("unless", rule.unless)):
            for pattern in (conditions.resources or ()) if conditions else ():
                if not any(fnmatch.fnmatchcase(name, pattern) for name in resource_names):
                    warnings.append(f"rules[{index}].{part}.resources: '{pattern}' matches no resource in this policy")
    return warnings
