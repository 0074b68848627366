"""`jit-bot policy check` and `jit-bot policy test`: what a policy author sees before a change ships.
The example policy and cases in examples/ are run here, so CI keeps them true."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.domain.policy import Policy
from bot.domain.policy_lint import lint
from tests.processes import assert_no_traceback, run_cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RULES = EXAMPLES / "policy-rules.yml"
CASES = EXAMPLES / "policy-cases.yml"


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return data


def test_the_shipped_cases_pass_against_the_shipped_policy(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "policy", "test", str(RULES), str(CASES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert_no_traceback(result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    cases = yaml.safe_load(CASES.read_text())["cases"]
    assert len(lines) == len(cases) + 1
    assert all(line.startswith("pass  ") for line in lines[:-1]), lines
    assert lines[-1] == f"{len(cases)} of {len(cases)} case(s) passed"


def test_a_case_that_fails_says_what_each_rule_made_of_it(tmp_path: Path) -> None:
    cases = yaml.safe_load(CASES.read_text())
    cases["cases"][1]["expect"] = {"effect": "auto_approve", "rule": "oncall-read"}  # no ticket: it is not
    (tmp_path / "cases.yml").write_text(yaml.safe_dump(cases))

    result = run_cli(tmp_path, "policy", "test", str(RULES), "cases.yml")

    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [
        "FAIL  on call but no ticket in the reason           got default (no rule), expected auto_approve (oncall-read)"
    ]
    trace = result.stdout.split(failed[0], 1)[1].splitlines()[1]
    assert trace.strip().startswith("oncall-read: not_matched:"), trace
    assert "when.reason_matches failed" in trace and "when.requester_in held" in trace, trace
    assert result.stdout.splitlines()[-1] == f"{len(cases['cases']) - 1} of {len(cases['cases'])} case(s) passed"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param({"cases": []}, "cases: must list at least one entry", id="no-cases"),
        pytest.param({"cases": [{"description": "x"}]}, "cases[0].requester: is required", id="missing-key"),
        pytest.param(
            {"cases": [{**yaml.safe_load(CASES.read_text())["cases"][0], "time": "2026-12-01T10:00:00"}]},
            "cases[0].time:",
            id="time-without-zone",
        ),
        pytest.param(
            {"cases": [{**yaml.safe_load(CASES.read_text())["cases"][0], "resource": "nope"}]},
            "the policy has no resource 'nope'",
            id="unknown-resource",
        ),
    ],
)
def test_a_bad_cases_file_is_a_line_per_problem_naming_the_key(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    (tmp_path / "cases.yml").write_text(yaml.safe_dump(change))

    result = run_cli(tmp_path, "policy", "test", str(RULES), "cases.yml")

    assert result.returncode == 2, result.stdout + result.stderr
    assert_no_traceback(result.stderr)
    lines = result.stderr.splitlines()
    assert all(line.startswith("jit-bot: cases.yml: ") for line in lines), lines
    assert any(expected in line for line in lines), lines


def test_policy_check_lists_each_rule_and_exits_zero_on_the_example(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "policy", "check", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{RULES}: ok (2 resource(s), 4 rule(s), 2 group(s))"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "rules[0] oncall-read",
        "rules[1] no-write-at-weekends",
        "rules[2] write-needs-two-dbas",
        "rules[3] billing-read-business-hours",
    ]
    assert "auto-approve when requester in oncall and resource is prod-*" in lines[1]
    assert "require 2 approval(s) from dba" in lines[3]
    assert not [line for line in lines if line.startswith("warning")]


def _with_rules(rules: list[dict[str, Any]], **extra: Any) -> Policy:
    data = copy.deepcopy(example())
    data["rules"] = rules
    data.update(extra)
    return Policy.model_validate(data)


WARNINGS = [
    pytest.param(
        [
            {"name": "any-read", "when": {"scopes_within": ["read"]}, "effect": "auto_approve"},
            {"name": "db-read", "when": {"resources": ["prod-db"], "scopes_within": ["read"]}, "effect": "deny"},
        ],
        ["rules[1] db-read: never decides: rules[0] any-read matches every request it would, and comes first"],
        id="shadowed-by-a-broader-rule",
    ),
    pytest.param(
        [
            {"name": "few", "when": {}, "effect": "auto_approve", "limit": {"count": 1, "per": "1h"}},
            {"name": "rest", "when": {"resources": ["prod-db"]}, "effect": "deny"},
        ],
        [],
        id="a-limit-lets-later-rules-decide",
    ),
    pytest.param(
        [
            {"name": "night", "when": {"hours": {"from": "22:00", "to": "06:00"}}, "effect": "deny"},
            {"name": "db", "when": {"resources": ["prod-db"]}, "effect": "deny"},
        ],
        [],
        id="hours-make-it-narrower",
    ),
    pytest.param(
        [{"name": "long", "when": {"resources": ["billing-api"], "min_duration": "3h"}, "effect": "deny"}],
        [
            "rules[0] long: can never match: min_duration 3h is longer than the max_duration of every resource "
            "it names",
            "resource prod-db: no rule names it, so its requests always go to its own approvers",
        ],
        id="never-matches-and-an-unnamed-resource",
    ),
    pytest.param(
        [{"name": "admin", "when": {"resources": ["prod-*"], "scopes_any": ["admin"]}, "effect": "deny"}],
        [
            "rules[0] admin: can never match: no resource it names has any of the scopes in scopes_any (admin)",
            "resource billing-api: no rule names it, so its requests always go to its own approvers",
        ],
        id="a-scope-no-resource-has",
    ),
    pytest.param(
        [{"name": "typo", "when": {"resources": ["prdo-*"]}, "effect": "deny"}],
        [
            "rules[0].when.resources: 'prdo-*' matches no resource in this policy",
            "resource prod-db: no rule names it, so its requests always go to its own approvers",
            "resource billing-api: no rule names it, so its requests always go to its own approvers",
        ],
        id="a-glob-that-matches-nothing",
    ),
]


@pytest.mark.parametrize(("rules", "expected"), WARNINGS)
def test_policy_check_warnings(rules: list[dict[str, Any]], expected: list[str]) -> None:
    found = lint(_with_rules(rules, groups={}))
    assert list(found.warnings) == expected


def test_a_group_no_rule_uses_is_a_warning_and_strict_fails_on_it(tmp_path: Path) -> None:
    data = example()
    data["groups"]["auditors"] = ["U0DANA"]
    (tmp_path / "policy.yml").write_text(yaml.safe_dump(data))

    relaxed = run_cli(tmp_path, "policy", "check")
    strict = run_cli(tmp_path, "policy", "check", "--strict")

    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "warning: groups.auditors: no rule uses this group" in relaxed.stdout.splitlines()
    assert strict.returncode == 1


def test_policy_check_of_an_invalid_policy_is_one_line_per_problem(tmp_path: Path) -> None:
    data = example()
    data["rules"][0]["when"]["hours"]["timezone"] = "Mars/Base"
    (tmp_path / "policy.yml").write_text(yaml.safe_dump(data))

    result = run_cli(tmp_path, "policy", "check", "policy.yml")

    assert result.returncode == 2
    assert_no_traceback(result.stderr)
    assert result.stderr.splitlines() == [
        "jit-bot: policy.yml: rules[0].when.hours.timezone: 'Mars/Base' is not a time zone "
        "(an IANA name like Europe/Berlin, or UTC)"
    ]


def test_deciding_and_explaining_agree_on_every_rule_for_many_requests() -> None:
    """decide() settles each rule with a short-circuiting check and builds the trace only when asked;
    both must say the same of every rule, or `policy test` would explain a decision it did not make."""
    import random
    from datetime import UTC, datetime, timedelta

    from bot.domain.rules import AccessRequest, _evaluate, _outcome

    policy = Policy.model_validate(example())
    rng = random.Random(11)
    compared = 0
    for _ in range(400):
        resource = rng.choice(policy.resources)
        request = AccessRequest(
            resource=resource.name,
            scopes=tuple(rng.sample(resource.scopes, rng.randint(1, len(resource.scopes)))),
            duration=timedelta(minutes=rng.choice([5, 15, 30, 45, 60, 90, 120])),
            reason=rng.choice(["INC-1234", "checking", "CHG-9 deploy", "refund CS-1"]),
            requester=rng.choice(["U0ALICE", "U0BOB", "U0DANA"]),
            subject=rng.choice([None, "alice"]),
        )
        usergroups = rng.choice([None, frozenset(), frozenset({"S0ONCALL"})])
        now = datetime(2026, 3, 27, tzinfo=UTC) + timedelta(minutes=rng.randrange(60 * 24 * 5))
        recent = {"oncall-read": rng.randint(0, 6)}
        for rule in policy.rules:
            quick = _outcome(policy, rule, request, usergroups, now, recent)
            full, _checks = _evaluate(policy, rule, request, usergroups, now, recent, {})
            assert quick is full, (rule.name, request, usergroups, now)
            compared += 1
    assert compared == 400 * len(policy.rules)
