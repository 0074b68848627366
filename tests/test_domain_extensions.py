"""The policy's side of extensions, pure: the ``extension`` condition, ``max_total`` and its cap, their
validation (errors name the key), and ``policy test`` / ``policy check`` reading them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ConfigError, load_policy
from bot.domain.extensions import Cap, extension_cap
from bot.domain.policy_cases import Cases, run_cases
from bot.domain.policy_lint import describe
from bot.domain.rules import AccessRequest, Effect, decide
from tests.world import REQUESTER, make_policy, policy_data

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
RULES = [
    {
        "name": "extend-reads",
        "when": {"extension": True, "scopes_within": ["read"]},
        "effect": "auto_approve",
        "max_total": "3h",
    },
    {"name": "first-reads", "when": {"extension": False, "scopes_within": ["read"]}, "effect": "require"},
]


def _ask(*, extension: bool) -> AccessRequest:
    return AccessRequest("prod-db", ("read",), timedelta(minutes=30), "INC-1", REQUESTER, "alice", extension=extension)


def test_the_extension_condition_tells_extensions_from_first_requests_and_max_total_caps_them() -> None:
    policy = make_policy(rules=RULES)
    resource = policy.resource("prod-db")
    assert resource is not None

    extension = decide(policy, _ask(extension=True), usergroups=frozenset(), now=NOW, recent_auto_approvals={})
    assert (extension.effect, extension.rule) == (Effect.AUTO_APPROVE, "extend-reads")
    (check,) = [c for c in extension.trace[0].checks if c.condition == "extension"]
    assert (check.held, check.detail) == (True, "it is an extension of an active grant")
    assert extension_cap(policy, resource, extension) == Cap(timedelta(hours=3), "extend-reads")

    first = decide(policy, _ask(extension=False), usergroups=frozenset(), now=NOW, recent_auto_approvals={})
    assert (first.effect, first.rule) == (Effect.REQUIRE, "first-reads")
    (check,) = [c for c in first.trace[0].checks if c.condition == "extension"]
    assert (check.held, check.detail) == (False, "it is a first request, not an extension")
    # Without the rule's max_total, the resource's max_duration caps the chain.
    assert extension_cap(policy, resource, first) == Cap(timedelta(hours=2), None)

    assert describe(policy.rules[0], policy) == (
        "auto-approve when every scope is one of read and it is an extension; (resources: prod-db, billing, k8s); "
        "extensions up to 3h in all"
    )


def _loaded(tmp_path: Path, rules: list[dict[str, Any]]) -> list[str]:
    path = tmp_path / "policy.yml"
    path.write_text(yaml.safe_dump(policy_data(rules=rules), sort_keys=False), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    return [line.split(": ", 1)[1] for line in caught.value.lines]


@pytest.mark.parametrize(
    ("rule", "key"),
    [
        ({"name": "r", "when": {"extension": "yes"}, "effect": "auto_approve"}, "rules[0].when.extension"),
        ({"name": "r", "when": {}, "effect": "deny", "max_total": "3h"}, "rules[0].max_total"),
        ({"name": "r", "when": {}, "effect": "auto_approve", "max_total": "soon"}, "rules[0].max_total"),
    ],
    ids=["extension-not-a-boolean", "max-total-on-deny", "max-total-not-a-duration"],
)
def test_a_wrong_extension_key_is_a_start_up_error_naming_it(tmp_path: Path, rule: dict[str, Any], key: str) -> None:
    (line,) = _loaded(tmp_path, [rule])
    assert line.startswith(key), line


def test_a_policy_test_case_may_be_an_extension() -> None:
    policy = make_policy(rules=RULES)
    case = {"requester": REQUESTER, "resource": "prod-db", "scopes": ["read"], "duration": "30m", "time": NOW}
    cases = Cases.model_validate(
        {
            "cases": [
                {**case, "description": "an extension", "extension": True, "expect": {"effect": "auto_approve"}},
                {**case, "description": "a first request", "expect": {"effect": "require", "rule": "first-reads"}},
            ]
        }
    )
    assert [result.passed for result in run_cases(policy, cases)] == [True, True]


def test_the_readme_example_of_extension_rules_loads() -> None:
    section = (Path(__file__).resolve().parent.parent / "README.md").read_text().split("### Extensions", 1)[1]
    example = yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])
    policy = make_policy(rules=example["rules"])
    assert [(rule.name, rule.when.extension) for rule in policy.rules] == [
        ("extend-reads", True),
        ("first-writes-need-two", False),
    ]
    assert policy.rules[0].max_total == timedelta(hours=3)
