"""The policy's rules: what a valid rule is (start-up errors that name the key), and the decision they
make, as tables of cases, one description each.

Times are fixed instants (never the wall clock); 2026-03-10 is a Tuesday. Europe/Berlin moves its
clocks from 02:00 to 03:00 on Sunday 2026-03-29 (at 01:00 UTC) and from 03:00 back to 02:00 on
Sunday 2026-10-25 (at 01:00 UTC).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ConfigError, load_policy
from bot.domain.policy import Policy
from bot.domain.policy_rules import Rule, rule_warnings
from bot.domain.rules import AccessRequest, Decision, Effect, Outcome, decide
from tests.world import APPROVER_1, APPROVER_2, GROUP_MEMBER, POLICY, REQUESTER

DBA_1, DBA_2 = "U0DBA00001", "U0DBA00002"
ONCALL = "S0ONCALL01"
GROUPS: dict[str, list[str]] = {
    "oncall": [ONCALL],
    "dba": [DBA_1, DBA_2],
    "leads": ["dana", GROUP_MEMBER],  # an IdP subject and a Slack user id
}

# The issue's example, without its Rego rule.
EXAMPLE_RULES: list[dict[str, Any]] = [
    {
        "name": "oncall-read",
        "when": {
            "requester_in": ["oncall"],
            "resources": ["prod-*"],
            "scopes_within": ["read"],
            "max_duration": "1h",
            "hours": {
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "from": "08:00",
                "to": "20:00",
                "timezone": "Europe/Berlin",
            },
            "reason_matches": r"\b(INC|CHG)-\d+\b",
        },
        "effect": "auto_approve",
        "limit": {"count": 5, "per": "24h"},
    },
    {
        "name": "write-needs-two-dbas",
        "when": {"resources": ["prod-db"], "scopes_any": ["write"]},
        "effect": "require",
        "approvals": 2,
        "approvers": ["dba"],
    },
    {
        "name": "no-write-at-weekends",
        "when": {"scopes_any": ["write"], "hours": {"days": ["sat", "sun"]}},
        "effect": "deny",
        "message": "Write access is not granted at weekends.",
    },
]
EXAMPLE: dict[str, Any] = {**POLICY, "groups": GROUPS, "rules": EXAMPLE_RULES}

TUESDAY = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)  # 11:00 in Berlin
SATURDAY = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)


def at(text: str) -> datetime:
    """An instant written in UTC: ``2026-03-29 00:59``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def policy_with(*rules: dict[str, Any], groups: dict[str, list[str]] | None = None) -> Policy:
    return Policy.model_validate({**POLICY, "groups": GROUPS if groups is None else groups, "rules": list(rules)})


def rule(
    name: str = "r", effect: str = "auto_approve", unless: dict[str, Any] | None = None, **when: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {"name": name, "when": when, "effect": effect}
    if unless is not None:
        data["unless"] = unless
    return data


def ask(
    resource: str = "prod-db",
    scopes: tuple[str, ...] = ("read",),
    duration: timedelta = timedelta(minutes=30),
    reason: str = "checking INC-1234",
    requester: str = REQUESTER,
    subject: str | None = "alice",
) -> AccessRequest:
    return AccessRequest(resource, scopes, duration, reason, requester, subject)


def run(
    policy: Policy,
    request: AccessRequest | None = None,
    *,
    usergroups: frozenset[str] | None = frozenset(),
    now: datetime = TUESDAY,
    recent: dict[str, int] | None = None,
) -> Decision:
    return decide(policy, request or ask(), usergroups=usergroups, now=now, recent_auto_approvals=recent or {})


def test_the_dates_the_cases_rely_on() -> None:
    assert [d.strftime("%a") for d in (TUESDAY, SATURDAY, at("2026-03-29 00:00"), at("2026-10-25 00:00"))] == [
        "Tue",
        "Sat",
        "Sun",
        "Sun",
    ]


# --- each condition alone -------------------------------------------------------------------------

# description -> (the one condition, the request, the requester's usergroups, now, whether it holds)
Case = tuple[dict[str, Any], AccessRequest, frozenset[str] | None, datetime, bool]
WEEKDAYS = {"days": ["mon", "tue", "wed", "thu", "fri"]}
BERLIN_DAY = {"from": "08:00", "to": "20:00", "timezone": "Europe/Berlin"}
NIGHT = {"from": "22:00", "to": "06:00"}
CONDITIONS: dict[str, Case] = {
    # requester_in: the Slack id, the IdP subject, or a usergroup, directly or through a group
    "requester-id-listed": ({"requester_in": [REQUESTER]}, ask(), frozenset(), TUESDAY, True),
    "requester-id-not-listed": ({"requester_in": [APPROVER_1]}, ask(), frozenset(), TUESDAY, False),
    "group-lists-the-slack-id": ({"requester_in": ["dba"]}, ask(requester=DBA_2), frozenset(), TUESDAY, True),
    "group-lists-the-subject": ({"requester_in": ["leads"]}, ask(subject="dana"), frozenset(), TUESDAY, True),
    "group-lists-neither": ({"requester_in": ["leads", "dba"]}, ask(), frozenset(), TUESDAY, False),
    "no-subject-matches-no-subject-entry": (
        {"requester_in": ["leads"]},
        ask(subject=None),
        frozenset(),
        TUESDAY,
        False,
    ),
    "group-lists-a-usergroup-joined": ({"requester_in": ["oncall"]}, ask(), frozenset({ONCALL}), TUESDAY, True),
    "group-lists-a-usergroup-not-joined": (
        {"requester_in": ["oncall"]},
        ask(),
        frozenset({"S0OTHER01"}),
        TUESDAY,
        False,
    ),
    "usergroup-id-listed-directly": ({"requester_in": [ONCALL]}, ask(), frozenset({ONCALL}), TUESDAY, True),
    # resources: names or case-sensitive shell globs
    "resource-named": ({"resources": ["billing", "prod-db"]}, ask(), frozenset(), TUESDAY, True),
    "resource-glob-matches": ({"resources": ["prod-*"]}, ask(), frozenset(), TUESDAY, True),
    "resource-glob-does-not-match": ({"resources": ["prod-*"]}, ask(resource="billing"), frozenset(), TUESDAY, False),
    "resource-glob-class": (
        {"resources": ["k8[st]"]},
        ask(resource="k8s", scopes=("view",)),
        frozenset(),
        TUESDAY,
        True,
    ),
    "resource-glob-is-case-sensitive": ({"resources": ["PROD-*"]}, ask(), frozenset(), TUESDAY, False),
    # scopes
    "scopes-within-all": ({"scopes_within": ["read", "write"]}, ask(scopes=("read",)), frozenset(), TUESDAY, True),
    "scopes-within-one-outside": (
        {"scopes_within": ["read"]},
        ask(scopes=("read", "write")),
        frozenset(),
        TUESDAY,
        False,
    ),
    "scopes-any-one-requested": ({"scopes_any": ["write"]}, ask(scopes=("read", "write")), frozenset(), TUESDAY, True),
    "scopes-any-none-requested": ({"scopes_any": ["write"]}, ask(scopes=("read",)), frozenset(), TUESDAY, False),
    # durations, both ends inclusive
    "min-duration-equal": ({"min_duration": "30m"}, ask(), frozenset(), TUESDAY, True),
    "min-duration-below": ({"min_duration": "30m"}, ask(duration=timedelta(minutes=29)), frozenset(), TUESDAY, False),
    "max-duration-equal": ({"max_duration": "1h"}, ask(duration=timedelta(hours=1)), frozenset(), TUESDAY, True),
    "max-duration-above": ({"max_duration": "1h"}, ask(duration=timedelta(minutes=61)), frozenset(), TUESDAY, False),
    # reason_matches: searched, not anchored; case-sensitive unless the pattern says (?i)
    "reason-matches": ({"reason_matches": r"\b(INC|CHG)-\d+\b"}, ask(), frozenset(), TUESDAY, True),
    "reason-matches-mid-text": (
        {"reason_matches": r"CHG-\d+"},
        ask(reason="per CHG-9 tonight"),
        frozenset(),
        TUESDAY,
        True,
    ),
    "reason-does-not-match": (
        {"reason_matches": r"\bINC-\d+\b"},
        ask(reason="checking INC1234"),
        frozenset(),
        TUESDAY,
        False,
    ),
    "reason-match-is-case-sensitive": ({"reason_matches": "INC-"}, ask(reason="inc-1"), frozenset(), TUESDAY, False),
    "reason-match-ignoring-case": ({"reason_matches": "(?i)INC-"}, ask(reason="inc-1"), frozenset(), TUESDAY, True),
    # hours: days (UTC by default)
    "weekday-on-a-weekday": ({"hours": WEEKDAYS}, ask(), frozenset(), TUESDAY, True),
    "weekday-on-a-weekend": ({"hours": WEEKDAYS}, ask(), frozenset(), SATURDAY, False),
    "no-days-is-every-day": ({"hours": {"from": "09:00"}}, ask(), frozenset(), SATURDAY, True),
    # hours: from is inclusive, to exclusive
    "from-edge": ({"hours": {"from": "08:00", "to": "20:00"}}, ask(), frozenset(), at("2026-03-10 08:00"), True),
    "just-before-from": (
        {"hours": {"from": "08:00", "to": "20:00"}},
        ask(),
        frozenset(),
        at("2026-03-10 07:59:59"),
        False,
    ),
    "just-before-to": (
        {"hours": {"from": "08:00", "to": "20:00"}},
        ask(),
        frozenset(),
        at("2026-03-10 19:59:59"),
        True,
    ),
    "to-edge": ({"hours": {"from": "08:00", "to": "20:00"}}, ask(), frozenset(), at("2026-03-10 20:00"), False),
    "only-from-runs-to-midnight": ({"hours": {"from": "18:00"}}, ask(), frozenset(), at("2026-03-10 23:59"), True),
    "only-from-before-it": ({"hours": {"from": "18:00"}}, ask(), frozenset(), at("2026-03-10 17:59"), False),
    "only-to-from-midnight": ({"hours": {"to": "09:00"}}, ask(), frozenset(), at("2026-03-10 00:00"), True),
    "only-to-at-it": ({"hours": {"to": "09:00"}}, ask(), frozenset(), at("2026-03-10 09:00"), False),
    # hours: a window whose to is before its from spans midnight, and belongs to the day it starts on
    "night-before-midnight": ({"hours": NIGHT}, ask(), frozenset(), at("2026-03-10 23:00"), True),
    "night-after-midnight": ({"hours": NIGHT}, ask(), frozenset(), at("2026-03-10 05:59"), True),
    "night-at-its-end": ({"hours": NIGHT}, ask(), frozenset(), at("2026-03-10 06:00"), False),
    "night-before-it-starts": ({"hours": NIGHT}, ask(), frozenset(), at("2026-03-10 21:59"), False),
    "friday-night-on-friday": ({"hours": {**NIGHT, "days": ["fri"]}}, ask(), frozenset(), at("2026-03-13 23:00"), True),
    "friday-night-on-saturday-morning": (
        {"hours": {**NIGHT, "days": ["fri"]}},
        ask(),
        frozenset(),
        at("2026-03-14 02:00"),
        True,
    ),
    "friday-early-morning-is-thursday-night": (
        {"hours": {**NIGHT, "days": ["fri"]}},
        ask(),
        frozenset(),
        at("2026-03-13 02:00"),
        False,
    ),
    "saturday-night-is-not-friday": (
        {"hours": {**NIGHT, "days": ["fri"]}},
        ask(),
        frozenset(),
        at("2026-03-14 23:00"),
        False,
    ),
    # hours: on the clock and calendar of the rule's time zone
    "berlin-07-30-is-before-08": ({"hours": BERLIN_DAY}, ask(), frozenset(), at("2026-03-10 06:30"), False),
    "berlin-08-00-is-07-00-utc-in-winter": ({"hours": BERLIN_DAY}, ask(), frozenset(), at("2026-03-10 07:00"), True),
    "berlin-20-00-is-19-00-utc-in-winter": ({"hours": BERLIN_DAY}, ask(), frozenset(), at("2026-03-10 19:00"), False),
    "tokyo-saturday-while-utc-is-friday": (
        {"hours": {**WEEKDAYS, "timezone": "Asia/Tokyo"}},
        ask(),
        frozenset(),
        at("2026-03-13 16:00"),
        False,
    ),
    "tokyo-monday-while-utc-is-sunday": (
        {"hours": {**WEEKDAYS, "timezone": "Asia/Tokyo"}},
        ask(),
        frozenset(),
        at("2026-03-15 23:30"),
        True,
    ),
    # DST, spring: in Berlin 02:00-03:00 on 2026-03-29 never happens, and 08:00 comes an hour earlier in UTC
    "spring-01-59-cet-is-before-02": (
        {"hours": {"from": "02:00", "to": "03:00", "timezone": "Europe/Berlin"}},
        ask(),
        frozenset(),
        at("2026-03-29 00:59"),
        False,
    ),
    "spring-next-instant-is-03-00-cest": (
        {"hours": {"from": "02:00", "to": "03:00", "timezone": "Europe/Berlin"}},
        ask(),
        frozenset(),
        at("2026-03-29 01:00"),
        False,
    ),
    "spring-from-03-starts-at-the-jump": (
        {"hours": {"from": "03:00", "timezone": "Europe/Berlin"}},
        ask(),
        frozenset(),
        at("2026-03-29 01:00"),
        True,
    ),
    "spring-08-00-cest-is-06-00-utc": ({"hours": BERLIN_DAY}, ask(), frozenset(), at("2026-03-29 06:00"), True),
    "spring-a-day-earlier-06-00-utc-is-07-00": (
        {"hours": BERLIN_DAY},
        ask(),
        frozenset(),
        at("2026-03-28 06:00"),
        False,
    ),
    # DST, autumn: 02:00-03:00 on 2026-10-25 happens twice in Berlin, and both hours are inside the window
    "autumn-01-59-cest-is-before-02": (
        {"hours": {"from": "02:00", "to": "03:00", "timezone": "Europe/Berlin"}},
        ask(),
        frozenset(),
        at("2026-10-24 23:59"),
        False,
    ),
    "autumn-first-02-30-cest": (
        {"hours": {"from": "02:00", "to": "03:00", "timezone": "Europe/Berlin"}},
        ask(),
        frozenset(),
        at("2026-10-25 00:30"),
        True,
    ),
    "autumn-second-02-30-cet": (
        {"hours": {"from": "02:00", "to": "03:00", "timezone": "Europe/Berlin"}},
        ask(),
        frozenset(),
        at("2026-10-25 01:30"),
        True,
    ),
    "autumn-03-00-cet": (
        {"hours": {"from": "02:00", "to": "03:00", "timezone": "Europe/Berlin"}},
        ask(),
        frozenset(),
        at("2026-10-25 02:00"),
        False,
    ),
    "autumn-08-00-cet-is-07-00-utc": ({"hours": BERLIN_DAY}, ask(), frozenset(), at("2026-10-25 07:00"), True),
    "autumn-06-59-utc-is-07-59-cet": ({"hours": BERLIN_DAY}, ask(), frozenset(), at("2026-10-25 06:59"), False),
    "autumn-a-day-earlier-06-00-utc-is-08-00-cest": (
        {"hours": BERLIN_DAY},
        ask(),
        frozenset(),
        at("2026-10-24 06:00"),
        True,
    ),
}


@pytest.mark.parametrize(("when", "request_", "usergroups", "now", "holds"), CONDITIONS.values(), ids=CONDITIONS)
def test_each_condition_alone(
    when: dict[str, Any], request_: AccessRequest, usergroups: frozenset[str] | None, now: datetime, holds: bool
) -> None:
    decision = run(policy_with(rule("alone", **when)), request_, usergroups=usergroups, now=now)

    assert decision.effect is (Effect.AUTO_APPROVE if holds else Effect.DEFAULT)
    (trace,) = decision.trace
    (check,) = trace.checks
    assert (check.part, check.condition, check.held) == ("when", next(iter(when)), holds)
    assert trace.outcome is (Outcome.MATCHED if holds else Outcome.NOT_MATCHED)


def test_no_conditions_match_everything() -> None:
    decision = run(policy_with(rule("everything", "deny")), ask(resource="billing"), now=SATURDAY)
    assert (decision.effect, decision.rule, decision.trace[0].checks) == (Effect.DENY, "everything", ())
    assert decision.reason == "rule 'everything' matched (it has no conditions)"


# --- conditions together: every one must hold -------------------------------------------------------

ONCALL_READ = EXAMPLE_RULES[0]
# Tuesday 11:00 in Berlin, an on-call member asking for 30m of read on prod-db with an incident number.
ALL_HOLD = {"request": ask(), "usergroups": frozenset({ONCALL}), "now": TUESDAY}
ONE_FAILS: dict[str, dict[str, Any]] = {
    "requester_in": {"usergroups": frozenset()},
    "resources": {"request": ask(resource="billing")},
    "scopes_within": {"request": ask(scopes=("read", "write"))},
    "max_duration": {"request": ask(duration=timedelta(minutes=61))},
    "hours": {"now": SATURDAY},
    "reason_matches": {"request": ask(reason="just looking")},
}


def test_all_conditions_holding_auto_approve() -> None:
    decision = run(policy_with(ONCALL_READ), ALL_HOLD["request"], usergroups=ALL_HOLD["usergroups"])

    assert (decision.effect, decision.rule, decision.approvers, decision.approvals_required) == (
        Effect.AUTO_APPROVE,
        "oncall-read",
        (),
        0,
    )
    assert decision.reason == (
        "rule 'oncall-read' matched (requester_in, resources, scopes_within, max_duration, hours, reason_matches)"
    )
    assert [(c.condition, c.held, c.detail) for c in decision.trace[0].checks] == [
        ("requester_in", True, f"in usergroup {ONCALL}"),
        ("resources", True, "'prod-db' matches prod-*"),
        ("scopes_within", True, "every requested scope is within read"),
        ("max_duration", True, "30m ≤ 1h"),
        ("hours", True, "tue 11:00 Europe/Berlin is within mon,tue,wed,thu,fri 08:00–20:00"),
        ("reason_matches", True, "found 'INC-1234'"),
    ]


@pytest.mark.parametrize(("failing", "change"), ONE_FAILS.items(), ids=[f"{name}-fails" for name in ONE_FAILS])
def test_one_failing_condition_is_enough_to_not_match(failing: str, change: dict[str, Any]) -> None:
    facts = {**ALL_HOLD, **change}
    decision = run(policy_with(ONCALL_READ), facts["request"], usergroups=facts["usergroups"], now=facts["now"])

    assert decision.effect is Effect.DEFAULT
    assert decision.trace[0].outcome is Outcome.NOT_MATCHED
    # Every condition is still checked, so the trace says which held and which did not.
    assert {c.condition: c.held for c in decision.trace[0].checks} == {name: name != failing for name in ONE_FAILS}


# --- unless -----------------------------------------------------------------------------------------

UNLESS: dict[str, tuple[dict[str, Any], AccessRequest, frozenset[str] | None, Effect, Outcome]] = {
    "unless-holds-excludes": (
        {"resources": ["prod-db"], "scopes_any": ["write"]},
        ask(scopes=("read", "write")),
        frozenset(),
        Effect.DEFAULT,
        Outcome.EXCLUDED,
    ),
    "unless-partly-holds-does-not-exclude": (
        {"resources": ["prod-db"], "scopes_any": ["write"]},
        ask(scopes=("read",)),
        frozenset(),
        Effect.AUTO_APPROVE,
        Outcome.MATCHED,
    ),
    "unless-does-not-hold": ({"resources": ["billing"]}, ask(), frozenset(), Effect.AUTO_APPROVE, Outcome.MATCHED),
    "unless-by-group-excludes-a-member": (
        {"requester_in": ["leads"]},
        ask(subject="dana"),
        frozenset(),
        Effect.DEFAULT,
        Outcome.EXCLUDED,
    ),
    # It might exclude; an auto-approval is never given on a guess.
    "unless-on-unknown-usergroups": (
        {"requester_in": ["oncall"]},
        ask(),
        None,
        Effect.DEFAULT,
        Outcome.USERGROUPS_UNKNOWN,
    ),
}


@pytest.mark.parametrize(("unless", "request_", "usergroups", "effect", "outcome"), UNLESS.values(), ids=UNLESS)
def test_unless(
    unless: dict[str, Any], request_: AccessRequest, usergroups: frozenset[str] | None, effect: Effect, outcome: Outcome
) -> None:
    policy = policy_with(rule("reads", unless=unless, resources=["prod-*"]))

    decision = run(policy, request_, usergroups=usergroups)

    assert (decision.effect, decision.trace[0].outcome) == (effect, outcome)
    assert [c.part for c in decision.trace[0].checks] == ["when", *(["unless"] * len(unless))]


def test_unless_is_not_checked_when_the_rule_does_not_match_anyway() -> None:
    policy = policy_with(rule("reads", unless={"scopes_any": ["write"]}, resources=["billing"]))
    (trace,) = run(policy).trace
    assert [(c.part, c.condition) for c in trace.checks] == [("when", "resources")]


# --- precedence and the default ----------------------------------------------------------------------

# description -> (the request, now, the requester's usergroups, the effect, the deciding rule, rules evaluated)
EXAMPLE_CASES: dict[str, tuple[AccessRequest, datetime, frozenset[str], Effect, str | None, int]] = {
    "oncall-read-in-hours": (ask(), TUESDAY, frozenset({ONCALL}), Effect.AUTO_APPROVE, "oncall-read", 1),
    "read-by-someone-not-on-call-goes-to-the-resource": (ask(), TUESDAY, frozenset(), Effect.DEFAULT, None, 3),
    "write-on-prod-db-needs-two-dbas": (
        ask(scopes=("write",)),
        TUESDAY,
        frozenset(),
        Effect.REQUIRE,
        "write-needs-two-dbas",
        2,
    ),
    # write-needs-two-dbas comes first, so prod-db write at weekends goes to the DBAs, not to deny.
    "earlier-rule-shadows-the-weekend-deny": (
        ask(scopes=("write",)),
        SATURDAY,
        frozenset(),
        Effect.REQUIRE,
        "write-needs-two-dbas",
        2,
    ),
    "refund-at-the-weekend-is-not-write": (
        ask(resource="billing", scopes=("refund",)),
        SATURDAY,
        frozenset(),
        Effect.DEFAULT,
        None,
        3,
    ),
    "oncall-read-at-the-weekend-goes-to-the-resource": (ask(), SATURDAY, frozenset({ONCALL}), Effect.DEFAULT, None, 3),
}


@pytest.mark.parametrize(
    ("request_", "now", "usergroups", "effect", "decided_by", "evaluated"), EXAMPLE_CASES.values(), ids=EXAMPLE_CASES
)
def test_the_issue_example(
    request_: AccessRequest,
    now: datetime,
    usergroups: frozenset[str],
    effect: Effect,
    decided_by: str | None,
    evaluated: int,
) -> None:
    decision = run(Policy.model_validate(EXAMPLE), request_, usergroups=usergroups, now=now)
    assert (decision.effect, decision.rule, len(decision.trace)) == (effect, decided_by, evaluated)


def test_a_deny_rule_gives_its_message_and_no_approvers() -> None:
    policy = policy_with(EXAMPLE_RULES[2])
    decision = run(policy, ask(scopes=("read", "write")), now=SATURDAY)
    assert (decision.effect, decision.rule, decision.message) == (
        Effect.DENY,
        "no-write-at-weekends",
        "Write access is not granted at weekends.",
    )
    assert (decision.approvers, decision.approvals_required) == ((), 0)


PRECEDENCE: dict[str, tuple[list[dict[str, Any]], Effect, str | None, list[Outcome]]] = {
    "first-match-wins-deny-first": (
        [rule("deny-all", "deny"), rule("approve-all")],
        Effect.DENY,
        "deny-all",
        [Outcome.MATCHED],
    ),
    "first-match-wins-approve-first": (
        [rule("approve-all"), rule("deny-all", "deny")],
        Effect.AUTO_APPROVE,
        "approve-all",
        [Outcome.MATCHED],
    ),
    "a-rule-that-does-not-match-passes-to-the-next": (
        [rule("billing-only", "deny", resources=["billing"]), rule("approve-all")],
        Effect.AUTO_APPROVE,
        "approve-all",
        [Outcome.NOT_MATCHED, Outcome.MATCHED],
    ),
    "no-rule-matches": (
        [rule("billing-only", "deny", resources=["billing"]), rule("write-only", scopes_any=["write"])],
        Effect.DEFAULT,
        None,
        [Outcome.NOT_MATCHED, Outcome.NOT_MATCHED],
    ),
    "no-rules-at-all": ([], Effect.DEFAULT, None, []),
}


@pytest.mark.parametrize(("rules", "effect", "decided_by", "outcomes"), PRECEDENCE.values(), ids=PRECEDENCE)
def test_precedence(
    rules: list[dict[str, Any]], effect: Effect, decided_by: str | None, outcomes: list[Outcome]
) -> None:
    decision = run(policy_with(*rules))
    assert (decision.effect, decision.rule) == (effect, decided_by)
    assert [trace.outcome for trace in decision.trace] == outcomes


@pytest.mark.parametrize(
    ("resource", "approvers", "approvals"),
    [
        pytest.param("prod-db", (APPROVER_1, APPROVER_2), 1, id="prod-db"),
        pytest.param("billing", (APPROVER_1, APPROVER_2), 2, id="billing-needs-two"),
        pytest.param("k8s", ("S0PLATFORM",), 1, id="k8s-usergroup"),
    ],
)
def test_the_default_is_the_resources_own_approvers(resource: str, approvers: tuple[str, ...], approvals: int) -> None:
    decision = run(policy_with(rule("never", resources=["nothing"])), ask(resource=resource))
    assert (decision.effect, decision.rule, decision.approvers, decision.approvals_required) == (
        Effect.DEFAULT,
        None,
        approvers,
        approvals,
    )
    assert decision.reason == "no rule matched: the resource's approvers decide"
    assert decision.usergroups_unknown is False


# --- require: whose approval -----------------------------------------------------------------------

REQUIRE: dict[str, tuple[dict[str, Any], str, tuple[str, ...], int]] = {
    "approvers-and-approvals": ({"approvers": ["dba"], "approvals": 2}, "prod-db", (DBA_1, DBA_2), 2),
    "approvers-only-keeps-the-resources-approvals": (
        {"approvers": ["dba", ONCALL]},
        "billing",
        (DBA_1, DBA_2, ONCALL),
        2,
    ),
    "approvals-only-keeps-the-resources-approvers": ({"approvals": 2}, "prod-db", (APPROVER_1, APPROVER_2), 2),
    "neither-is-the-resources-but-no-later-rule-applies": ({}, "prod-db", (APPROVER_1, APPROVER_2), 1),
    "a-group-and-its-member-once": (
        {"approvers": ["dba", DBA_1, APPROVER_1]},
        "prod-db",
        (DBA_1, DBA_2, APPROVER_1),
        1,
    ),
}


@pytest.mark.parametrize(("keys", "resource", "approvers", "approvals"), REQUIRE.values(), ids=REQUIRE)
def test_require_names_who_must_approve(
    keys: dict[str, Any], resource: str, approvers: tuple[str, ...], approvals: int
) -> None:
    policy = policy_with({**rule("people", "require"), **keys}, rule("approve-all"))
    decision = run(policy, ask(resource=resource))
    assert (decision.effect, decision.rule, decision.approvers, decision.approvals_required) == (
        Effect.REQUIRE,
        "people",
        approvers,
        approvals,
    )


# --- limits -----------------------------------------------------------------------------------------

LIMITED = {**rule("limited"), "limit": {"count": 3, "per": "24h"}}
LIMITS: dict[str, tuple[dict[str, int], Effect, Outcome]] = {
    "none-yet": ({}, Effect.AUTO_APPROVE, Outcome.MATCHED),
    "under-the-count": ({"limited": 2}, Effect.AUTO_APPROVE, Outcome.MATCHED),
    "at-the-count": ({"limited": 3}, Effect.REQUIRE, Outcome.LIMIT_REACHED),
    "past-the-count": ({"limited": 4}, Effect.REQUIRE, Outcome.LIMIT_REACHED),
    "another-rules-count-does-not-count": ({"other": 9}, Effect.AUTO_APPROVE, Outcome.MATCHED),
}


@pytest.mark.parametrize(("recent", "effect", "outcome"), LIMITS.values(), ids=LIMITS)
def test_a_limit_past_its_count_does_not_match(recent: dict[str, int], effect: Effect, outcome: Outcome) -> None:
    # Past the limit the rule does not match, so the next rule decides.
    policy = policy_with(LIMITED, rule("then-people", "require"))
    decision = run(policy, recent=recent)
    assert (decision.effect, decision.trace[0].outcome) == (effect, outcome)


# --- usergroups that could not be looked up ----------------------------------------------------------

UNKNOWN: dict[
    str, tuple[list[dict[str, Any]], AccessRequest, Effect, str | None, tuple[str, ...], list[Outcome], bool]
] = {
    "auto-approve-needing-usergroups-is-skipped": (
        [rule("oncall", requester_in=["oncall"])],
        ask(),
        Effect.DEFAULT,
        None,
        (APPROVER_1, APPROVER_2),
        [Outcome.USERGROUPS_UNKNOWN],
        True,
    ),
    "skipped-then-a-later-rule-decides": (
        [rule("oncall", requester_in=["oncall"]), rule("two-dbas", "require", resources=["prod-db"])],
        ask(),
        Effect.REQUIRE,
        "two-dbas",
        (APPROVER_1, APPROVER_2),
        [Outcome.USERGROUPS_UNKNOWN, Outcome.MATCHED],
        True,
    ),
    "listed-by-id-needs-no-usergroups": (
        [rule("oncall-or-me", requester_in=[ONCALL, REQUESTER])],
        ask(),
        Effect.AUTO_APPROVE,
        "oncall-or-me",
        (),
        [Outcome.MATCHED],
        False,
    ),
    "a-condition-that-fails-decides-without-usergroups": (
        [rule("oncall-billing", requester_in=["oncall"], resources=["billing"])],
        ask(),
        Effect.DEFAULT,
        None,
        (APPROVER_1, APPROVER_2),
        [Outcome.NOT_MATCHED],
        False,
    ),
    # A deny rule is never passed over on a guess: a later rule could be more lenient. People decide.
    "deny-needing-usergroups-goes-to-people": (
        [rule("no-contractors", "deny", requester_in=["S0CONTRACT"]), rule("approve-all")],
        ask(),
        Effect.REQUIRE,
        "no-contractors",
        (APPROVER_1, APPROVER_2),
        [Outcome.USERGROUPS_UNKNOWN],
        True,
    ),
    "require-needing-usergroups-keeps-its-approvers": (
        [{**rule("dbas-for-oncall", "require", requester_in=["oncall"]), "approvers": ["dba"]}, rule("approve-all")],
        ask(),
        Effect.REQUIRE,
        "dbas-for-oncall",
        (DBA_1, DBA_2),
        [Outcome.USERGROUPS_UNKNOWN],
        True,
    ),
    "rules-that-need-no-usergroups-are-unaffected": (
        [rule("reads", scopes_within=["read"])],
        ask(),
        Effect.AUTO_APPROVE,
        "reads",
        (),
        [Outcome.MATCHED],
        False,
    ),
}


@pytest.mark.parametrize(
    ("rules", "request_", "effect", "decided_by", "approvers", "outcomes", "unknown"), UNKNOWN.values(), ids=UNKNOWN
)
def test_usergroups_unknown_fall_through_to_people(
    rules: list[dict[str, Any]],
    request_: AccessRequest,
    effect: Effect,
    decided_by: str | None,
    approvers: tuple[str, ...],
    outcomes: list[Outcome],
    unknown: bool,
) -> None:
    decision = run(policy_with(*rules), request_, usergroups=None)

    assert (decision.effect, decision.rule, decision.approvers) == (effect, decided_by, approvers)
    assert [trace.outcome for trace in decision.trace] == outcomes
    assert decision.usergroups_unknown is unknown


def test_unknown_usergroups_are_said_in_the_reason_and_the_trace() -> None:
    decision = run(policy_with(rule("oncall", requester_in=["oncall"])), usergroups=None)
    assert decision.reason == (
        "no rule matched: the resource's approvers decide; skipped 'oncall': the requester's usergroups could not be "
        "looked up"
    )
    (check,) = decision.trace[0].checks
    assert (check.held, check.detail) == (None, f"usergroups unknown, so membership of {ONCALL} could not be checked")

    stopped = run(policy_with(rule("no-oncall", "deny", requester_in=["oncall"])), usergroups=None)
    assert stopped.reason == (
        "rule 'no-oncall' depends on the requester's usergroups, which could not be looked up, so people decide"
    )


# --- what the caller must get right -----------------------------------------------------------------


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        run(policy_with(), now=datetime(2026, 3, 10, 10, 0))


def test_the_resource_must_be_in_the_policy() -> None:
    with pytest.raises(ValueError, match="unknown resource 'nope'"):
        run(policy_with(), ask(resource="nope"))


# --- the rules as configuration -------------------------------------------------------------------------


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "policy.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_the_issue_example_loads_with_its_values(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, EXAMPLE))

    assert policy.groups == {"oncall": (ONCALL,), "dba": (DBA_1, DBA_2), "leads": ("dana", GROUP_MEMBER)}
    assert [r.name for r in policy.rules] == ["oncall-read", "write-needs-two-dbas", "no-write-at-weekends"]
    oncall = policy.rules[0]
    assert oncall.when.names == (
        "requester_in",
        "resources",
        "scopes_within",
        "max_duration",
        "hours",
        "reason_matches",
    )
    assert oncall.when.max_duration == timedelta(hours=1)
    assert oncall.when.hours is not None and oncall.when.hours.timezone == "Europe/Berlin"
    assert (f"{oncall.when.hours.start:%H:%M}", f"{oncall.when.hours.end:%H:%M}") == ("08:00", "20:00")
    assert oncall.limit is not None and (oncall.limit.count, oncall.limit.per) == (5, timedelta(hours=24))
    assert (policy.rules[1].approvals, policy.rules[1].approvers) == (2, ("dba",))
    assert policy.rules[2].message == "Write access is not granted at weekends."
    assert policy.rules[2].when.hours is not None and policy.rules[2].when.hours.timezone == "UTC"


def test_a_policy_without_rules_has_none(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, POLICY))
    assert (policy.groups, policy.rules) == ({}, ())


Mutation = Callable[[dict[str, Any]], None]


def put(path: str, value: Any) -> Mutation:
    """Set e.g. ``rules.0.when.hours.timezone`` on a copy of EXAMPLE; ``None`` removes the key."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        key: Any = int(last) if last.isdigit() else last
        if value is None:
            del target[key]
        else:
            target[key] = value

    return mutate


# A change to EXAMPLE -> the one line (after the file name) that load_policy reports.
WRONG: dict[str, tuple[Mutation, str]] = {
    "unknown-rule-key": (put("rules.2.regex", "INC-"), "rules[2].regex: is not a known key (typo?)"),
    "rego-file-missing": (
        put("rules.2.rego", "policies/missing.rego"),
        "rules[2].rego: 'policies/missing.rego' not found (looked for {dir}/policies/missing.rego; the path is "
        "relative to the policy file)",
    ),
    "unknown-condition": (put("rules.1.when.scopes", ["write"]), "rules[1].when.scopes: is not a known key (typo?)"),
    "unknown-hours-key": (put("rules.0.when.hours.tz", "UTC"), "rules[0].when.hours.tz: is not a known key (typo?)"),
    "unknown-group-in-requester-in": (
        put("rules.0.when.requester_in", ["oncal"]),
        "rules[0].when.requester_in: 'oncal' is neither a group defined under groups: nor a Slack user id (U…) or "
        "usergroup id (S…) (did you mean 'oncall'?)",
    ),
    "unknown-group-in-unless": (
        put("rules.0.unless", {"requester_in": ["contractors"]}),
        "rules[0].unless.requester_in: 'contractors' is neither a group defined under groups: nor a Slack user id "
        "(U…) or usergroup id (S…)",
    ),
    "unknown-group-in-approvers": (
        put("rules.1.approvers", ["dbas"]),
        "rules[1].approvers: 'dbas' is neither a group defined under groups: nor a Slack user id (U…) or usergroup "
        "id (S…) (did you mean 'dba'?)",
    ),
    "approver-group-with-a-subject": (
        put("rules.1.approvers", ["leads"]),
        "rules[1].approvers: group 'leads' lists 'dana', which is not a Slack user id (U…) or usergroup id (S…): "
        "only people in Slack can approve",
    ),
    "bad-glob": (
        put("rules.0.when.resources", ["prod-[db"]),
        "rules[0].when.resources: 'prod-[db' is not a valid pattern: the '[' at position 5 is never closed by ']'",
    ),
    "bad-regex": (
        put("rules.0.when.reason_matches", "("),
        "rules[0].when.reason_matches: '(' is not a valid regular expression: missing ), unterminated subpattern",
    ),
    "bad-timezone": (
        put("rules.2.when.hours.timezone", "Mars/Base"),
        "rules[2].when.hours.timezone: 'Mars/Base' is not a time zone (an IANA name like Europe/Berlin, or UTC)",
    ),
    "timezone-that-is-a-folder": (
        put("rules.2.when.hours.timezone", "Europe"),
        "rules[2].when.hours.timezone: 'Europe' is not a time zone (an IANA name like Europe/Berlin, or UTC)",
    ),
    "bad-day": (
        put("rules.2.when.hours.days", ["sat", "sunday"]),
        "rules[2].when.hours.days: 'sunday' is not a day: write mon, tue, wed, thu, fri, sat or sun",
    ),
    "day-twice": (
        put("rules.2.when.hours.days", ["sat", "sun", "sat"]),
        "rules[2].when.hours.days: lists day 'sat' twice",
    ),
    "no-days": (put("rules.2.when.hours.days", []), "rules[2].when.hours.days: must list at least one entry"),
    "bad-clock": (
        put("rules.0.when.hours.from", "8am"),
        "rules[0].when.hours.from: '8am' is not a time like \"08:00\" (24-hour HH:MM)",
    ),
    "hour-25": (
        put("rules.0.when.hours.to", "25:00"),
        "rules[0].when.hours.to: '25:00' is not a time like \"08:00\" (24-hour HH:MM)",
    ),
    # What YAML makes of an unquoted 20:00.
    "unquoted-clock": (
        put("rules.0.when.hours.to", 1200),
        'rules[0].when.hours.to: 1200 is not a time like "08:00": put times in quotes (unquoted, YAML reads 20:00 '
        "as the number 1200)",
    ),
    "empty-window": (
        put("rules.0.when.hours.to", "08:00"),
        "rules[0].when.hours: from and to are both 08:00, so the window is empty; leave both out for the whole day",
    ),
    "duplicate-rule-name": (
        put("rules.2.name", "oncall-read"),
        "rules[2].name: 'oncall-read' is already the name of rules[0]",
    ),
    "bad-rule-name": (
        put("rules.0.name", "On Call"),
        "rules[0].name: must be lower-case letters, digits, '.', '_' or '-' (at most 63)",
    ),
    "missing-name": (put("rules.0.name", None), "rules[0].name: is required"),
    "missing-when": (put("rules.1.when", None), "rules[1].when: is required"),
    "missing-effect": (
        put("rules.2.effect", None),
        "rules[2].effect: is required (auto_approve, deny or require), or rego: FILE",
    ),
    "bad-effect": (
        put("rules.2.effect", "reject"),
        "rules[2].effect: must be 'auto_approve', 'deny' or 'require', not 'reject'",
    ),
    "min-above-max": (
        put("rules.0.when.min_duration", "2h"),
        "rules[0].when: min_duration 2h is longer than max_duration 1h, so no request could ever match",
    ),
    "scopes-within-and-any-disjoint": (
        put("rules.0.when.scopes_any", ["write"]),
        "rules[0].when: scopes_within and scopes_any share no scope, so no request could ever match",
    ),
    "duration-without-unit": (
        put("rules.0.when.max_duration", 60),
        "rules[0].when.max_duration: 60 has no unit: write 60s, 60m or 60h",
    ),
    "empty-requester-in": (
        put("rules.0.when.requester_in", []),
        "rules[0].when.requester_in: must list at least one entry",
    ),
    "resources-not-a-list": (
        put("rules.0.when.resources", "prod-*"),
        "rules[0].when.resources: must be a list, like [a, b] or one '- item' per line, not 'prod-*'",
    ),
    "empty-unless": (
        put("rules.0.unless", {}),
        "rules[0].unless: is empty, so it would exclude every request; give it conditions or remove it",
    ),
    "limit-on-require": (
        put("rules.1.limit", {"count": 1, "per": "1h"}),
        "rules[1].limit: is only for rules with effect auto_approve; this rule's effect is require",
    ),
    "approvals-on-deny": (
        put("rules.2.approvals", 2),
        "rules[2].approvals: is only for rules with effect require; this rule's effect is deny",
    ),
    "approvers-on-auto-approve": (
        put("rules.0.approvers", ["dba"]),
        "rules[0].approvers: is only for rules with effect require; this rule's effect is auto_approve",
    ),
    "message-on-require": (
        put("rules.1.message", "Ask a DBA."),
        "rules[1].message: is only for rules with effect deny; this rule's effect is require",
    ),
    "approvals-above-the-listed-approvers": (
        put("rules.1.approvals", 3),
        "rules[1]: approvals is 3 but only 2 approver(s) are listed, so no request could ever be approved",
    ),
    # A user listed both in a group and by id is one approver.
    "approvals-above-the-approvers-once-groups-are-expanded": (
        put("rules.1", {**EXAMPLE_RULES[1], "approvers": ["dba", DBA_1], "approvals": 3}),
        "rules[1]: approvals is 3 but only 2 approver(s) are listed, so no request could ever be approved",
    ),
    "approvals-above-the-resources-approvers": (
        put("rules.1", {"name": "three", "when": {"resources": ["prod-db"]}, "effect": "require", "approvals": 3}),
        "rules[1]: approvals is 3 but resource 'prod-db' lists only 2 approver(s), so no request could ever be "
        "approved",
    ),
    "resource-approvals-above-the-rules-approvers": (
        put("rules.1", {"name": "one", "when": {"resources": ["billing"]}, "effect": "require", "approvers": [DBA_1]}),
        "rules[1]: approvers lists 1 approver(s) but resource 'billing' needs 2 approvals, so no request could ever "
        "be approved",
    ),
    "limit-count-zero": (put("rules.0.limit.count", 0), "rules[0].limit.count: must be at least 1, not '0'"),
    "limit-without-per": (put("rules.0.limit.per", None), "rules[0].limit.per: is required"),
    "empty-message": (put("rules.2.message", ""), "rules[2].message: must not be empty"),
    "bad-group-name": (
        put("groups.On Call", [ONCALL]),
        "groups.On Call: 'On Call' is not a valid group name: it must be lower-case letters, digits, '.', '_' or '-' "
        "(at most 63)",
    ),
    "empty-group": (put("groups.dba", []), "groups.dba: must list at least one entry"),
    "empty-group-entry": (put("groups.dba", [DBA_1, ""]), "groups.dba[1]: must not be empty"),
    "rules-not-a-list": (
        put("rules", {"name": "x"}),
        "rules: must be a list, like [a, b] or one '- item' per line, not a mapping",
    ),
}


@pytest.mark.parametrize(("change", "line"), WRONG.values(), ids=WRONG)
def test_a_wrong_rule_is_a_start_up_error_naming_the_key(tmp_path: Path, change: Mutation, line: str) -> None:
    data = copy.deepcopy(EXAMPLE)
    change(data)
    path = write(tmp_path, data)

    with pytest.raises(ConfigError) as caught:
        load_policy(path)

    assert caught.value.lines == [f"{path}: {line.format(dir=tmp_path)}"]


def test_every_problem_in_the_rules_gets_its_own_line(tmp_path: Path) -> None:
    data = copy.deepcopy(EXAMPLE)
    for change in (put("rules.0.when.requester_in", ["oncal"]), put("rules.1.approvers", ["dbas"])):
        change(data)
    path = write(tmp_path, data)

    with pytest.raises(ConfigError) as caught:
        load_policy(path)

    assert [line.split(": ")[1] for line in caught.value.lines] == ["rules[0].when.requester_in", "rules[1].approvers"]


# Allowed, though some look odd: a change to EXAMPLE that still loads.
ALLOWED: dict[str, Mutation] = {
    "when-empty-matches-everything": put("rules.2.when", {}),
    "approvals-above-users-with-a-usergroup-listed": put("rules.1.approvers", [DBA_1, ONCALL]),
    "approvals-above-users-with-a-group-holding-a-usergroup": put("rules.1.approvers", [DBA_1, "oncall"]),
    "hours-with-only-a-timezone-is-all-day": put("rules.2.when.hours", {"timezone": "Asia/Tokyo"}),
    "to-at-midnight-ends-the-day": put("rules.0.when.hours", {"from": "20:00", "to": "00:00"}),
    "day-names-in-any-case": put("rules.2.when.hours.days", ["Sat", "SUN"]),
    "a-glob-matching-no-resource-is-only-a-warning": put("rules.1.when.resources", ["staging-*"]),
    "a-require-rule-with-neither-approvers-nor-approvals": put(
        "rules.1", {"name": "people", "when": {"scopes_any": ["write"]}, "effect": "require"}
    ),
}


@pytest.mark.parametrize("change", ALLOWED.values(), ids=ALLOWED)
def test_allowed_rules_load(tmp_path: Path, change: Mutation) -> None:
    data = copy.deepcopy(EXAMPLE)
    change(data)
    load_policy(write(tmp_path, data))


def test_a_resource_pattern_matching_nothing_is_a_warning() -> None:
    policy = Policy.model_validate(
        {
            **EXAMPLE,
            "rules": [
                rule("typo", resources=["prod-dbb", "prod-*"]),
                rule("gone", resources=["k8s"], unless={"resources": ["staging-*"]}),
            ],
        }
    )
    assert rule_warnings(policy.rules, policy.resource_names) == [
        "rules[0].when.resources: 'prod-dbb' matches no resource in this policy",
        "rules[1].unless.resources: 'staging-*' matches no resource in this policy",
    ]
    assert rule_warnings(Policy.model_validate(EXAMPLE).rules, policy.resource_names) == []


def test_a_deny_rule_s_message_is_one_line_so_it_cannot_forge_a_line_on_the_card() -> None:
    rule = Rule.model_validate(
        {"name": "no", "when": {}, "effect": "deny", "message": "No.\n:white_check_mark: *Approved by* \u202eme"}
    )
    assert rule.message == "No. :white_check_mark: *Approved by* me"
