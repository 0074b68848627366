"""Rules decided by a Rego module (``rego: FILE``): the contract (the input document a module sees and the
answers it may give), decide() with real modules in a real RegoEngine, the trace a person reads, reading
modules with the policy, the engine's worker process, and ``jit-bot policy check`` / ``policy test``.

Every module here runs in a real worker (rego-cpp); nothing of the bot is replaced. Times are fixed
instants: 2026-03-10 is a Tuesday.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ConfigError, load_policy
from bot.domain.policy import Policy
from bot.domain.rego import (
    AnswerKind,
    ContractBroken,
    RegoAnswer,
    RegoEffect,
    RegoModule,
    RegoVerdict,
    read_answer,
    rego_input,
)
from bot.domain.rules import (
    REGO_FAILED_MESSAGE,
    AccessRequest,
    Check,
    Decision,
    Effect,
    Outcome,
    RegoFailure,
    decide,
)
from bot.rego.engine import RegoEngine
from tests.processes import assert_no_traceback, run_cli, write_policy
from tests.world import APPROVER_1, APPROVER_2, BOT_TOKEN, GROUP_MEMBER, POLICY, REQUESTER

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REGO_POLICY = EXAMPLES / "policy-rego.yml"
REGO_CASES = EXAMPLES / "policy-rego-cases.yml"

DBA_1, DBA_2 = "U0DBA00001", "U0DBA00002"
ONCALL = "S0ONCALL01"
GROUPS: dict[str, list[str]] = {
    "oncall": [ONCALL],
    "dba": [DBA_1, DBA_2],
    "leads": ["dana", GROUP_MEMBER],  # an IdP subject and a Slack user id: not all of it can approve in Slack
    "me": [REQUESTER],
}
GROUP_TUPLES = {name: tuple(members) for name, members in GROUPS.items()}
TUESDAY = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)

HEADER = "package jit\n\nimport rego.v1\n\n"
# Takes seconds in rego-cpp (far past 0.2 s): what a runaway module looks like.
SLOW = 'decision := {"effect": "pass", "n": count([x | some x in numbers.range(1, 3000000); x % 7 == 0])}\n'

# Rule name -> the body of its module (after HEADER). A policy's rule of that name is decided by it.
BODIES: dict[str, str] = {
    "allow": 'decision := {"effect": "auto_approve"}\n',
    "deny": 'decision := {"effect": "deny", "message": "exec needs a change ticket"}\n',
    "deny-quietly": 'decision := {"effect": "deny"}\n',
    "require": f'decision := {{"effect": "require", "approvals": 2, "approvers": ["dba", "{APPROVER_1}"]}}\n',
    "require-resource": 'decision := {"effect": "require"}\n',
    "pass": 'decision := {"effect": "pass"}\n',
    "undefined": 'decision := {"effect": "auto_approve"} if {\n\tinput.request.reason == "never given"\n}\n',
    # Only a request for billing reaches its auto_approve; anything else divides by zero.
    "billing-only": (
        'decision := {"effect": "auto_approve"} if {\n\tinput.resource.name == "billing"\n}\n\n'
        'else := {"effect": "pass", "n": 1 / 0}\n'
    ),
    "divides-by-zero": 'decision := {"effect": "pass", "n": 1 / 0}\n',
    "two-decisions": (
        'decision := {"effect": "pass"} if {\n\ttrue\n}\n\ndecision := {"effect": "deny"} if {\n\ttrue\n}\n'
    ),
    "echo-groups": 'decision := {"effect": "deny", "message": concat(",", input.requester.groups)}\n',
    "bad-effect": 'decision := {"effect": "allow"}\n',
    "not-an-object": 'decision := "auto_approve"\n',
    "unknown-key": 'decision := {"effect": "pass", "why": "because"}\n',
    "deny-with-approvals": 'decision := {"effect": "deny", "approvals": 2}\n',
    "pass-with-message": 'decision := {"effect": "pass", "message": "not my business"}\n',
    "more-approvals-than-approvers": 'decision := {"effect": "require", "approvals": 3, "approvers": ["dba"]}\n',
    "more-approvals-than-the-resource-has": 'decision := {"effect": "require", "approvals": 3}\n',
    # One approver named; billing itself needs two approvals.
    "one-approver": f'decision := {{"effect": "require", "approvers": ["{APPROVER_1}"]}}\n',
}


def module(name: str, body: str | None = None) -> RegoModule:
    return RegoModule(f"policies/{name}.rego", HEADER + (BODIES[name] if body is None else body))


def rego_rule(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "rego": module(name), **extra}


def policy_with(*rules: dict[str, Any]) -> Policy:
    return Policy.model_validate({**POLICY, "groups": GROUPS, "rules": list(rules)})


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
    rego: Any,
    request: AccessRequest | None = None,
    *,
    usergroups: frozenset[str] | None = frozenset(),
    recent: dict[str, int] | None = None,
) -> Decision:
    return decide(
        policy, request or ask(), usergroups=usergroups, now=TUESDAY, recent_auto_approvals=recent or {}, rego=rego
    )


def failed(rule: str) -> str:
    return REGO_FAILED_MESSAGE.format(rule=rule)


@pytest.fixture(scope="module")
def engine() -> Iterator[RegoEngine]:
    """Every module of BODIES in one worker; a deadline no healthy evaluation comes near."""
    started = RegoEngine({name: module(name) for name in BODIES}, timeout=10)
    assert started.compile() == []
    yield started
    started.close()


class Recording:
    """The real engine, noting which rule was asked about what (to show what decide() sends)."""

    def __init__(self, engine: RegoEngine) -> None:
        self.engine = engine
        self.asked: list[tuple[str, Mapping[str, object]]] = []

    def evaluate(self, rule: str, document: Mapping[str, object]) -> RegoAnswer:
        self.asked.append((rule, document))
        return self.engine.evaluate(rule, document)


# --- 1. read_answer: what a module may answer ---------------------------------------------------------

ANSWERS_KEPT = [
    pytest.param({"effect": "auto_approve"}, RegoVerdict(RegoEffect.AUTO_APPROVE), id="auto-approve"),
    pytest.param({"effect": "pass"}, RegoVerdict(RegoEffect.PASS), id="pass"),
    pytest.param({"effect": "deny"}, RegoVerdict(RegoEffect.DENY), id="deny-without-message"),
    pytest.param({"effect": "deny", "message": "No."}, RegoVerdict(RegoEffect.DENY, "No."), id="deny-with-message"),
    pytest.param(
        {"effect": "deny", "message": "x" * 500}, RegoVerdict(RegoEffect.DENY, "x" * 500), id="message-of-500"
    ),
    pytest.param({"effect": "require"}, RegoVerdict(RegoEffect.REQUIRE), id="require-the-resources-people"),
    pytest.param(
        {"effect": "require", "approvals": 1}, RegoVerdict(RegoEffect.REQUIRE, approvals=1), id="approvals-of-1"
    ),
    pytest.param(
        {"effect": "require", "approvals": 10, "approvers": ["oncall"]},
        RegoVerdict(RegoEffect.REQUIRE, approvals=10, approvers=("oncall",)),
        id="approvals-of-10-from-a-usergroup-of-any-size",
    ),
    pytest.param(
        {"effect": "require", "approvals": 3, "approvers": ["dba", APPROVER_1]},
        RegoVerdict(RegoEffect.REQUIRE, approvals=3, approvers=("dba", APPROVER_1)),
        id="approvers-as-written-group-and-id",
    ),
    pytest.param(
        {"effect": "require", "approvers": ["S0SOMEONE"]},
        RegoVerdict(RegoEffect.REQUIRE, approvers=("S0SOMEONE",)),
        id="a-usergroup-id-not-in-the-policy",
    ),
]


@pytest.mark.parametrize(("answer", "verdict"), ANSWERS_KEPT)
def test_an_answer_within_the_contract_is_a_verdict(answer: object, verdict: RegoVerdict) -> None:
    assert read_answer(answer, groups=GROUP_TUPLES) == verdict


ANSWERS_REFUSED = [
    pytest.param(
        "auto_approve", 'data.jit.decision must be an object like {"effect": "pass"}, not "auto_approve"', id="a-string"
    ),
    pytest.param(["pass"], 'data.jit.decision must be an object like {"effect": "pass"}, not ["pass"]', id="a-list"),
    pytest.param(None, 'data.jit.decision must be an object like {"effect": "pass"}, not null', id="null"),
    pytest.param(
        {"effect": "pass", "why": "x", "also": 1},
        'data.jit.decision has unknown key(s) "also", "why"',
        id="unknown-keys",
    ),
    pytest.param(
        {},
        'effect must be one of "auto_approve", "deny", "require", "pass", not null',
        id="no-effect",
    ),
    pytest.param(
        {"effect": "allow"},
        'effect must be one of "auto_approve", "deny", "require", "pass", not "allow"',
        id="an-effect-that-is-not-one",
    ),
    pytest.param(
        {"effect": "DENY"},
        'effect must be one of "auto_approve", "deny", "require", "pass", not "DENY"',
        id="an-effect-in-capitals",
    ),
    pytest.param(
        {"effect": "auto_approve", "message": "hi"},
        'message is only for effect "deny", and the effect is "auto_approve"',
        id="message-on-auto-approve",
    ),
    pytest.param(
        {"effect": "require", "message": "hi"},
        'message is only for effect "deny", and the effect is "require"',
        id="message-on-require",
    ),
    pytest.param(
        {"effect": "pass", "message": "hi"},
        'message is only for effect "deny", and the effect is "pass"',
        id="message-on-pass",
    ),
    pytest.param(
        {"effect": "deny", "approvals": 2},
        'approvals is only for effect "require", and the effect is "deny"',
        id="approvals-on-deny",
    ),
    pytest.param(
        {"effect": "auto_approve", "approvals": 2},
        'approvals is only for effect "require", and the effect is "auto_approve"',
        id="approvals-on-auto-approve",
    ),
    pytest.param(
        {"effect": "pass", "approvers": ["dba"]},
        'approvers is only for effect "require", and the effect is "pass"',
        id="approvers-on-pass",
    ),
    pytest.param(
        {"effect": "deny", "approvers": ["dba"]},
        'approvers is only for effect "require", and the effect is "deny"',
        id="approvers-on-deny",
    ),
    pytest.param({"effect": "deny", "message": ""}, "message must be text of 1 to 500 characters", id="empty-message"),
    pytest.param(
        {"effect": "deny", "message": "  "}, "message must be text of 1 to 500 characters", id="blank-message"
    ),
    pytest.param(
        {"effect": "deny", "message": "x" * 501}, "message must be text of 1 to 500 characters", id="message-of-501"
    ),
    pytest.param(
        {"effect": "deny", "message": 7}, "message must be text of 1 to 500 characters", id="message-a-number"
    ),
    pytest.param(
        {"effect": "require", "approvals": 0}, "approvals must be a whole number from 1 to 10, not 0", id="approvals-0"
    ),
    pytest.param(
        {"effect": "require", "approvals": 11},
        "approvals must be a whole number from 1 to 10, not 11",
        id="approvals-11",
    ),
    pytest.param(
        {"effect": "require", "approvals": True},
        "approvals must be a whole number from 1 to 10, not true",
        id="approvals-a-bool",
    ),
    pytest.param(
        {"effect": "require", "approvals": 1.5},
        "approvals must be a whole number from 1 to 10, not 1.5",
        id="approvals-a-fraction",
    ),
    pytest.param(
        {"effect": "require", "approvals": "2"},
        'approvals must be a whole number from 1 to 10, not "2"',
        id="approvals-as-text",
    ),
    pytest.param(
        {"effect": "require", "approvers": []},
        "approvers must be a non-empty list of group names or Slack ids (U…, S…)",
        id="approvers-empty",
    ),
    pytest.param(
        {"effect": "require", "approvers": "dba"},
        "approvers must be a non-empty list of group names or Slack ids (U…, S…)",
        id="approvers-not-a-list",
    ),
    pytest.param(
        {"effect": "require", "approvers": ["dba", 7]},
        "approvers must be a non-empty list of group names or Slack ids (U…, S…)",
        id="approvers-with-a-number",
    ),
    pytest.param(
        {"effect": "require", "approvers": ["dbas"]},
        'approvers names "dbas", which is neither a group of the policy nor a Slack id',
        id="approvers-an-unknown-group",
    ),
    pytest.param(
        {"effect": "require", "approvers": ["bob@example.com"]},
        'approvers names "bob@example.com", which is neither a group of the policy nor a Slack id',
        id="approvers-an-email",
    ),
    pytest.param(
        {"effect": "require", "approvers": ["leads"]},
        "approvers group 'leads' lists 'dana', who cannot approve in Slack",
        id="approvers-a-group-with-an-idp-subject",
    ),
    pytest.param(
        {"effect": "require", "approvals": 3, "approvers": ["dba"]},
        "approvals is 3 but approvers lists only 2 person(s)",
        id="more-approvals-than-people",
    ),
    pytest.param(
        {"effect": "require", "approvals": 3, "approvers": ["dba", DBA_1]},
        "approvals is 3 but approvers lists only 2 person(s)",
        id="a-person-named-twice-counts-once",
    ),
]


@pytest.mark.parametrize(("answer", "why"), ANSWERS_REFUSED)
def test_an_answer_outside_the_contract_is_refused_saying_why(answer: object, why: str) -> None:
    with pytest.raises(ContractBroken) as refused:
        read_answer(answer, groups=GROUP_TUPLES)
    assert str(refused.value) == why


# --- 2. rego_input: what a module sees ------------------------------------------------------------------


def test_the_input_document_for_a_fixed_instant() -> None:
    # 00:30:15.999999 in UTC+02:00 is still Monday 22:30 in UTC: weekday and now are in UTC.
    now = datetime(2026, 3, 10, 0, 30, 15, 999_999, tzinfo=timezone(timedelta(hours=2)))
    resource = {"name": "prod-db", "audience": "https://db", "scopes": ["read", "write"], "max_duration_seconds": 7200}

    document = rego_input(
        requester=REQUESTER,
        subject="alice",
        groups=("me", ONCALL),
        resource=resource,
        scopes=("read",),
        duration_seconds=1800,
        reason="INC-1",
        now=now,
        recent_auto_approvals=2,
    )

    assert document == {
        "requester": {"slack_id": REQUESTER, "subject": "alice", "groups": ["me", ONCALL]},
        "resource": {
            "name": "prod-db",
            "audience": "https://db",
            "scopes": ["read", "write"],
            "max_duration_seconds": 7200,
        },
        "request": {"scopes": ["read"], "duration_seconds": 1800, "reason": "INC-1", "extension": False},
        "now": "2026-03-09T22:30:15Z",
        "now_ns": 1_773_095_415_999_999_000,
        "weekday": "mon",
        "recent_auto_approvals": 2,
    }
    assert datetime(2026, 3, 9, 22, 30, 15, tzinfo=UTC).timestamp() == 1_773_095_415
    assert json.loads(json.dumps(document)) == document  # the worker is sent JSON


def test_the_input_has_no_subject_when_none_is_known_and_sunday_is_sun() -> None:
    document = rego_input(
        requester=REQUESTER,
        subject=None,
        groups=(),
        resource={},
        scopes=("read",),
        duration_seconds=60,
        reason="",
        now=datetime(2026, 3, 15, 23, 59, 59, tzinfo=UTC),
        recent_auto_approvals=0,
    )
    assert document["requester"] == {"slack_id": REQUESTER, "subject": None, "groups": []}
    assert (document["weekday"], document["now"], document["now_ns"]) == (
        "sun",
        "2026-03-15T23:59:59Z",
        1_773_619_199_000_000_000,
    )


def test_what_decide_sends_the_module(engine: RegoEngine) -> None:
    recording = Recording(engine)
    policy = policy_with(rego_rule("pass"))

    run(policy, recording, ask(scopes=("read", "write"), reason="CHG-9"), recent={"pass": 4, "other": 9})

    assert recording.asked == [
        (
            "pass",
            {
                "requester": {"slack_id": REQUESTER, "subject": "alice", "groups": ["me"]},
                "resource": {
                    "name": "prod-db",
                    "audience": "https://db.internal.example",
                    "scopes": ["read", "write"],
                    "max_duration_seconds": 7200,
                },
                "request": {
                    "scopes": ["read", "write"],
                    "duration_seconds": 1800,
                    "reason": "CHG-9",
                    "extension": False,
                },
                "now": "2026-03-10T10:00:00Z",
                "now_ns": 1_773_136_800_000_000_000,
                "weekday": "tue",
                "recent_auto_approvals": 4,
            },
        )
    ]


# --- 3. decide() with real modules -----------------------------------------------------------------------


def test_a_module_that_auto_approves_decides(engine: RegoEngine) -> None:
    decision = run(policy_with(rego_rule("allow")), engine)

    assert (decision.effect, decision.rule, decision.approvers, decision.approvals_required) == (
        Effect.AUTO_APPROVE,
        "allow",
        (),
        0,
    )
    assert (decision.message, decision.rego_failure, decision.usergroups_unknown) == (None, None, False)
    assert decision.reason == "rule 'allow': its Rego module answered auto_approve"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        pytest.param("deny", "exec needs a change ticket", id="with-its-message"),
        pytest.param("deny-quietly", None, id="without-a-message"),
    ],
)
def test_a_module_that_denies_gives_its_message(engine: RegoEngine, rule: str, message: str | None) -> None:
    decision = run(policy_with(rego_rule(rule)), engine)

    assert (decision.effect, decision.rule, decision.message, decision.rego_failure) == (
        Effect.DENY,
        rule,
        message,
        None,
    )
    assert (decision.approvers, decision.approvals_required) == ((), 0)
    assert decision.reason == f"rule '{rule}': its Rego module answered deny"


def test_a_module_that_requires_names_people_through_the_policys_groups(engine: RegoEngine) -> None:
    decision = run(policy_with(rego_rule("require")), engine)

    assert (decision.effect, decision.rule, decision.message, decision.rego_failure) == (
        Effect.REQUIRE,
        "require",
        None,
        None,
    )
    assert decision.approvers == (DBA_1, DBA_2, APPROVER_1)
    assert decision.approvals_required == 2


def test_a_module_that_requires_without_naming_anyone_leaves_it_to_the_resource(engine: RegoEngine) -> None:
    decision = run(policy_with(rego_rule("require-resource")), engine, ask(resource="billing"))

    assert (decision.effect, decision.rule) == (Effect.REQUIRE, "require-resource")
    assert (decision.approvers, decision.approvals_required) == ((APPROVER_1, APPROVER_2), 2)


LATER_DENY = {"name": "later", "when": {"resources": ["prod-*"]}, "effect": "deny", "message": "later said no"}


@pytest.mark.parametrize("rule", ["pass", "undefined"], ids=["answers-pass", "answers-nothing"])
def test_a_module_that_passes_lets_the_next_rule_decide(engine: RegoEngine, rule: str) -> None:
    decision = run(policy_with(rego_rule(rule), LATER_DENY), engine)

    assert (decision.effect, decision.rule, decision.message, decision.rego_failure) == (
        Effect.DENY,
        "later",
        "later said no",
        None,
    )


@pytest.mark.parametrize("rule", ["pass", "undefined"], ids=["answers-pass", "answers-nothing"])
def test_a_module_that_passes_as_the_last_rule_leaves_it_to_the_resource(engine: RegoEngine, rule: str) -> None:
    decision = run(policy_with(rego_rule(rule)), engine)

    assert (decision.effect, decision.rule, decision.rego_failure) == (Effect.DEFAULT, None, None)
    assert (decision.approvers, decision.approvals_required) == ((APPROVER_1, APPROVER_2), 1)
    assert decision.reason == "no rule matched: the resource's approvers decide"


@pytest.mark.parametrize(
    ("resource", "effect", "rule", "asked"),
    [
        # prod-db: `when` does not hold, so the module (which would divide by zero) is never asked.
        pytest.param("prod-db", Effect.DENY, "later", [], id="when-fails-never-asked"),
        # billing: `when` holds, the module is asked, and its auto_approve decides.
        pytest.param("billing", Effect.AUTO_APPROVE, "billing-only", ["billing-only"], id="when-holds-asked"),
    ],
)
def test_a_rule_whose_when_does_not_hold_never_asks_its_module(
    engine: RegoEngine, resource: str, effect: Effect, rule: str, asked: list[str]
) -> None:
    later = {"name": "later", "when": {}, "effect": "deny", "message": "later said no"}
    policy = policy_with(rego_rule("billing-only", when={"resources": ["billing"]}), later)
    recording = Recording(engine)

    decision = run(policy, recording, ask(resource=resource))

    assert (decision.effect, decision.rule, decision.rego_failure) == (effect, rule, None)
    assert [name for name, _ in recording.asked] == asked
    # Had it been asked about prod-db, it would have failed (and denied with the failure message):
    without_when = run(policy_with(rego_rule("billing-only"), later), engine)
    assert (without_when.effect, without_when.rule, without_when.message) == (
        Effect.DENY,
        "billing-only",
        failed("billing-only"),
    )


@pytest.mark.parametrize(
    ("rule", "detail"),
    [
        pytest.param("divides-by-zero", None, id="division-by-zero"),
        pytest.param(
            "two-decisions",
            "the evaluation failed: rego-cpp gave no detail (common causes: two bodies that define decision for "
            "one input, or a built-in that failed, such as to_number of text)",
            id="two-decisions-hold",
        ),
    ],
)
def test_a_module_whose_evaluation_fails_denies(engine: RegoEngine, rule: str, detail: str | None) -> None:
    decision = run(policy_with(rego_rule(rule), {"name": "later", "when": {}, "effect": "auto_approve"}), engine)

    assert (decision.effect, decision.rule, decision.message) == (Effect.DENY, rule, failed(rule))
    assert decision.rego_failure is not None and decision.rego_failure.kind == "error"
    assert decision.rego_failure.detail.startswith("the evaluation failed: "), decision.rego_failure
    if detail is not None:
        assert decision.rego_failure.detail == detail
    assert decision.reason == f"rule '{rule}' failed closed: {decision.rego_failure.detail}"
    assert (decision.approvers, decision.approvals_required) == ((), 0)


CONTRACT_BREAKS = [
    pytest.param(
        "bad-effect",
        'effect must be one of "auto_approve", "deny", "require", "pass", not "allow"',
        id="an-effect-that-is-not-one",
    ),
    pytest.param(
        "not-an-object",
        'data.jit.decision must be an object like {"effect": "pass"}, not "auto_approve"',
        id="not-an-object",
    ),
    pytest.param("unknown-key", 'data.jit.decision has unknown key(s) "why"', id="an-unknown-key"),
    pytest.param(
        "deny-with-approvals",
        'approvals is only for effect "require", and the effect is "deny"',
        id="deny-with-approvals",
    ),
    pytest.param(
        "pass-with-message", 'message is only for effect "deny", and the effect is "pass"', id="pass-with-a-message"
    ),
    pytest.param(
        "more-approvals-than-approvers",
        "approvals is 3 but approvers lists only 2 person(s)",
        id="more-approvals-than-its-approvers",
    ),
    pytest.param(
        "more-approvals-than-the-resource-has",
        "approvals is 3 but resource 'prod-db' lists only 2 approver(s)",
        id="more-approvals-than-the-resources-approvers",
    ),
]


@pytest.mark.parametrize(("rule", "why"), CONTRACT_BREAKS)
def test_an_answer_outside_the_contract_denies(engine: RegoEngine, rule: str, why: str) -> None:
    decision = run(policy_with(rego_rule(rule), {"name": "later", "when": {}, "effect": "auto_approve"}), engine)

    assert (decision.effect, decision.rule, decision.message) == (Effect.DENY, rule, failed(rule))
    assert decision.rego_failure == RegoFailure("contract", why)
    assert decision.reason == f"rule '{rule}' failed closed: {why}"


def test_require_naming_fewer_people_than_the_resources_approvals_is_a_contract_break(engine: RegoEngine) -> None:
    """billing needs 2 approvals; the module names one person and leaves approvals to the resource, so no
    request could ever be approved. A YAML rule saying the same is refused when the policy is read
    ('approvers lists 1 approver(s) but resource 'billing' needs 2 approvals'); the module's answer
    should break the contract like `approvals: 3` with two approvers does."""
    decision = run(policy_with(rego_rule("one-approver")), engine, ask(resource="billing"))

    assert decision.rego_failure is not None and decision.rego_failure.kind == "contract", (
        f"{decision.effect} by {decision.rule}: {decision.approvals_required} of {decision.approvers}"
    )
    assert (decision.effect, decision.rule, decision.message) == (Effect.DENY, "one-approver", failed("one-approver"))


@pytest.mark.parametrize(
    ("rule", "effect", "decided_by", "approvers", "approvals"),
    [
        # The module is not asked (it would judge by groups short of some): the resource's people decide
        # at its rule, whatever it would have answered.
        pytest.param("allow", Effect.REQUIRE, "allow", (APPROVER_1, APPROVER_2), 1, id="auto-approve-goes-to-people"),
        pytest.param("deny", Effect.REQUIRE, "deny", (APPROVER_1, APPROVER_2), 1, id="deny-goes-to-people"),
        pytest.param("require", Effect.REQUIRE, "require", (APPROVER_1, APPROVER_2), 1, id="require-goes-to-people"),
        pytest.param("pass", Effect.REQUIRE, "pass", (APPROVER_1, APPROVER_2), 1, id="pass-goes-to-people"),
        # Not asked, so it cannot fail either.
        pytest.param(
            "divides-by-zero", Effect.REQUIRE, "divides-by-zero", (APPROVER_1, APPROVER_2), 1, id="not-even-asked"
        ),
    ],
)
def test_while_usergroups_are_unknown(
    engine: RegoEngine,
    rule: str,
    effect: Effect,
    decided_by: str | None,
    approvers: tuple[str, ...],
    approvals: int,
) -> None:
    decision = run(policy_with(rego_rule(rule)), engine, usergroups=None)

    assert (decision.effect, decision.rule, decision.approvers, decision.approvals_required) == (
        effect,
        decided_by,
        approvers,
        approvals,
    )
    assert (decision.message, decision.rego_failure, decision.usergroups_unknown) == (None, None, True)


def test_while_usergroups_are_unknown_no_later_rule_decides_in_the_modules_place(engine: RegoEngine) -> None:
    """ "Deny contractors, else pass" sees no contractors while Slack is down; a later, more lenient
    rule must not then decide. Later rules are not reached at all."""
    later_allow = {"name": "later-allow", "when": {}, "effect": "auto_approve"}
    decision = run(policy_with(rego_rule("pass"), later_allow), engine, usergroups=None)

    assert (decision.effect, decision.rule) == (Effect.REQUIRE, "pass")
    assert decision.usergroups_unknown is True
    assert "could not be looked up, so people decide" in decision.reason
    assert [t.rule for t in decision.trace] == ["pass"]


@pytest.mark.parametrize(
    ("requester", "subject", "usergroups", "seen"),
    [
        pytest.param(REQUESTER, None, frozenset(), "me", id="by-slack-id"),
        pytest.param("U0SOMEONE1", "dana", frozenset(), "leads", id="by-idp-subject"),
        pytest.param("U0SOMEONE1", None, frozenset({ONCALL}), f"oncall,{ONCALL}", id="by-usergroup-then-its-id"),
        pytest.param(
            REQUESTER,
            "dana",
            frozenset({"S0ZZZ", ONCALL}),
            f"oncall,leads,me,{ONCALL},S0ZZZ",
            id="policy-order-then-usergroups-sorted",
        ),
    ],
)
def test_the_module_sees_the_requesters_groups(
    engine: RegoEngine, requester: str, subject: str | None, usergroups: frozenset[str], seen: str
) -> None:
    decision = run(
        policy_with(rego_rule("echo-groups")),
        engine,
        ask(requester=requester, subject=subject),
        usergroups=usergroups,
    )
    assert (decision.effect, decision.message) == (Effect.DENY, seen)


def test_a_module_in_no_group_sees_an_empty_list(engine: RegoEngine) -> None:
    # concat of an empty list is "", which is not a message a deny may carry: the contract breaks.
    decision = run(policy_with(rego_rule("echo-groups")), engine, ask(requester="U0SOMEONE1", subject=None))
    assert decision.rego_failure == RegoFailure("contract", "message must be text of 1 to 500 characters")


def test_decide_without_an_evaluator_for_a_rego_rule_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="rule 'allow' is decided by a Rego module and no evaluator was given"):
        run(policy_with(rego_rule("allow")), None)


# --- timeouts: a runaway module costs one request ----------------------------------------------------------


@pytest.fixture
def impatient() -> Iterator[RegoEngine]:
    started = RegoEngine({"slow": module("slow", SLOW), "allow": module("allow")}, timeout=0.2)
    assert started.compile() == []
    yield started
    started.close()


def test_a_module_that_runs_too_long_denies_and_the_next_request_is_decided(impatient: RegoEngine) -> None:
    slow = {"name": "slow", "rego": module("slow", SLOW)}
    before = impatient.restarts

    decision = run(policy_with(slow, {"name": "later", "when": {}, "effect": "auto_approve"}), impatient)

    assert (decision.effect, decision.rule, decision.message) == (Effect.DENY, "slow", failed("slow"))
    assert decision.rego_failure == RegoFailure("timeout", "the module did not answer within 0.2 s")
    assert decision.reason == "rule 'slow' failed closed: the module did not answer within 0.2 s"
    assert impatient._process is None  # the runaway worker was killed, not left computing

    # The next request gets a new worker. Its deadline is raised so that a loaded machine cannot turn
    # the restart's first evaluation into a second timeout: what is checked is that it answers right.
    impatient.timeout = 10
    after = run(policy_with(rego_rule("allow")), impatient)
    assert (after.effect, after.rule, after.rego_failure) == (Effect.AUTO_APPROVE, "allow", None)
    assert impatient.restarts == before + 1


# --- 4. the trace of a rego rule ---------------------------------------------------------------------------


def _said(value: object) -> str:
    return "data.jit.decision = " + json.dumps(value, sort_keys=True)


TRACES = [
    pytest.param("pass", Outcome.PASSED, False, _said({"effect": "pass"}), id="pass-is-passed"),
    pytest.param("undefined", Outcome.PASSED, False, "data.jit.decision = undefined", id="nothing-is-passed"),
    pytest.param(
        "deny",
        Outcome.MATCHED,
        True,
        _said({"effect": "deny", "message": "exec needs a change ticket"}),
        id="deny-is-matched",
    ),
    pytest.param(
        "require",
        Outcome.MATCHED,
        True,
        _said({"effect": "require", "approvals": 2, "approvers": ["dba", APPROVER_1]}),
        id="require-is-matched",
    ),
    pytest.param(
        "divides-by-zero",
        Outcome.FAILED,
        False,
        "data.jit.decision = error: the evaluation failed",
        id="an-error-is-failed",
    ),
    pytest.param(
        "bad-effect",
        Outcome.FAILED,
        False,
        _said({"effect": "allow"}) + ': effect must be one of "auto_approve", "deny", "require", "pass", not "allow"',
        id="a-bad-effect-is-failed",
    ),
    pytest.param(
        "not-an-object",
        Outcome.FAILED,
        False,
        'data.jit.decision = "auto_approve": data.jit.decision must be an object like {"effect": "pass"}, '
        'not "auto_approve"',
        id="not-an-object-is-failed",
    ),
    # The module's effect is a real one, but the answer broke the contract and the request was denied
    # for it: the trace must say the rule failed, not that it passed or matched.
    pytest.param(
        "pass-with-message",
        Outcome.FAILED,
        False,
        _said({"effect": "pass", "message": "not my business"})
        + ': message is only for effect "deny", and the effect is "pass"',
        id="pass-with-a-message-is-failed",
    ),
    pytest.param(
        "deny-with-approvals",
        Outcome.FAILED,
        False,
        _said({"effect": "deny", "approvals": 2})
        + ': approvals is only for effect "require", and the effect is "deny"',
        id="deny-with-approvals-is-failed",
    ),
    pytest.param(
        "more-approvals-than-approvers",
        Outcome.FAILED,
        False,
        _said({"effect": "require", "approvals": 3, "approvers": ["dba"]})
        + ": approvals is 3 but approvers lists only 2 person(s)",
        id="too-many-approvals-is-failed",
    ),
]


@pytest.mark.parametrize(("rule", "outcome", "held", "detail"), TRACES)
def test_the_trace_says_what_the_module_answered(
    engine: RegoEngine, rule: str, outcome: Outcome, held: bool, detail: str
) -> None:
    before = {"name": "long", "when": {"min_duration": "1h"}, "effect": "deny"}
    policy = policy_with(before, rego_rule(rule, when={"resources": ["prod-*"]}), LATER_DENY)

    decision = run(policy, engine)

    first, mine, *rest = decision.trace
    assert (first.rule, first.outcome) == ("long", Outcome.NOT_MATCHED)
    assert (mine.rule, mine.outcome) == (rule, outcome)
    assert mine.checks == (
        Check("when", "resources", True, "'prod-db' matches prod-*"),
        Check("rego", f"policies/{rule}.rego", held, detail),
    )
    # A rule that failed is the one that denied; one that passed let the next rule decide.
    assert (outcome is Outcome.FAILED) == (decision.rego_failure is not None)
    assert [t.rule for t in rest] == (["later"] if outcome is Outcome.PASSED else [])


def test_the_trace_of_a_timeout(impatient: RegoEngine) -> None:
    decision = run(policy_with({"name": "slow", "rego": module("slow", SLOW)}), impatient)

    (trace,) = decision.trace
    assert (trace.rule, trace.outcome) == ("slow", Outcome.FAILED)
    assert trace.checks == (
        Check(
            "rego", "policies/slow.rego", False, "data.jit.decision = timeout: the module did not answer within 0.2 s"
        ),
    )


def test_the_trace_of_a_rule_whose_when_failed_has_no_rego_check(engine: RegoEngine) -> None:
    decision = run(policy_with(rego_rule("billing-only", when={"resources": ["billing"]})), engine)

    (trace,) = decision.trace
    assert (trace.outcome, trace.checks) == (
        Outcome.NOT_MATCHED,
        (Check("when", "resources", False, "'prod-db' matches none of billing"),),
    )


def test_the_trace_of_an_auto_approve_skipped_for_unknown_usergroups_does_not_say_matched(engine: RegoEngine) -> None:
    """The module's auto_approve was not used (the default decided, 'no rule matched'), as a YAML
    auto_approve rule that needs usergroups is skipped; the trace of that rule says usergroups_unknown,
    and this one should too rather than 'matched'."""
    decision = run(policy_with(rego_rule("allow")), engine, usergroups=None)

    assert (decision.effect, decision.rule) == (Effect.REQUIRE, "allow")
    (trace,) = decision.trace
    assert trace.outcome is Outcome.USERGROUPS_UNKNOWN, trace


# --- 5. reading modules with the policy ----------------------------------------------------------------------

BROKEN_SYNTAX = HEADER + 'decision := {"effect": "pass"\n'  # the { on line 5, column 13, is never closed
UNKNOWN_BUILTIN = HEADER + 'decision := {"effect": nosuchfn(1)}\n'  # nosuchfn at line 5, column 24


def policy_file(folder: Path, rule: dict[str, Any], modules: Mapping[str, str]) -> Path:
    for name, source in modules.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(source)
    return write_policy(folder, {**POLICY, "groups": GROUPS, "rules": [rule]})


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        load_policy(path)
    return refused.value.lines


def test_a_good_module_is_read_relative_to_the_policy_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "jit"
    folder.mkdir(parents=True)
    source = HEADER + BODIES["deny"]
    path = policy_file(folder, {"name": "mod", "rego": "policies/m.rego"}, {"policies/m.rego": source})

    policy = load_policy(path)

    (rule,) = policy.rules
    assert (rule.name, rule.rego, rule.effect, rule.when.names) == (
        "mod",
        RegoModule("policies/m.rego", source),
        None,
        (),
    )


def test_a_missing_module_file_is_a_line_naming_where_it_was_looked_for(tmp_path: Path) -> None:
    path = policy_file(tmp_path, {"name": "mod", "rego": "policies/m.rego"}, {})

    assert problems_of(path) == [
        f"{path}: rules[0].rego: 'policies/m.rego' not found (looked for {tmp_path}/policies/m.rego; the path is "
        "relative to the policy file)"
    ]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        pytest.param(BROKEN_SYNTAX, "policies/m.rego:5:13: this is unclosed", id="unclosed-brace"),
        pytest.param(
            HEADER + 'decision := {"effect": "pass"}\n\nx := [1,\n',
            "policies/m.rego:7:6: this is unclosed",
            id="unclosed-bracket-further-down",
        ),
        pytest.param(
            UNKNOWN_BUILTIN,
            "policies/m.rego:5:24: calls nosuchfn, which is not a Rego built-in this engine knows",
            id="unknown-builtin",
        ),
    ],
)
def test_a_module_that_does_not_compile_is_a_line_with_its_file_line_and_column(
    tmp_path: Path, source: str, problem: str
) -> None:
    path = policy_file(tmp_path, {"name": "mod", "rego": "policies/m.rego"}, {"policies/m.rego": source})

    assert problems_of(path) == [f"{path}: rules[0].rego: {problem}"]


def test_an_unknown_builtin_is_located_at_its_call_not_at_a_comment_naming_it(tmp_path: Path) -> None:
    source = "# nosuchfn(x) would be handy here\n" + UNKNOWN_BUILTIN  # the call is now on line 6
    path = policy_file(tmp_path, {"name": "mod", "rego": "policies/m.rego"}, {"policies/m.rego": source})

    assert problems_of(path) == [
        f"{path}: rules[0].rego: policies/m.rego:6:24: calls nosuchfn, which is not a Rego built-in this engine knows"
    ]


def test_a_misspelt_builtin_behind_a_condition_is_found_when_the_policy_is_read(tmp_path: Path) -> None:
    """The shipped k8s.rego with regex.match misspelt: the call sits behind `"exec" in
    input.request.scopes`, which the start-up probe (scopes [read]) never satisfies, so the policy loads
    and every exec request is then denied as 'the policy could not decide'."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policy-rego.yml").write_text(REGO_POLICY.read_text())
    source = (EXAMPLES / "policies" / "k8s.rego").read_text()
    assert "regex.match(" in source
    (tmp_path / "policies" / "k8s.rego").write_text(source.replace("regex.match(", "regex.mtch("))

    lines = problems_of(tmp_path / "policy-rego.yml")

    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / 'policy-rego.yml'}: rules[1].rego: policies/k8s.rego:")
    assert lines[0].endswith("calls regex.mtch, which is not a Rego built-in this engine knows"), lines


def test_a_module_that_can_never_define_data_jit_decision_is_refused(tmp_path: Path) -> None:
    """`package jti` (a typo) compiles, but data.jit.decision is then undefined for every request, so the
    rule silently passes them all: a typo that disables a rule, which the policy refuses everywhere else."""
    source = HEADER.replace("package jit", "package jti") + BODIES["deny"]
    path = policy_file(tmp_path, {"name": "mod", "rego": "policies/m.rego"}, {"policies/m.rego": source})

    lines = problems_of(path)

    assert len(lines) == 1 and lines[0].startswith(f"{path}: rules[0].rego: policies/m.rego:"), lines


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("effect", "deny", id="effect"),
        pytest.param("limit", {"count": 1, "per": "1h"}, id="limit"),
        pytest.param("approvals", 1, id="approvals"),
        pytest.param("approvers", [APPROVER_1], id="approvers"),
        pytest.param("message", "no", id="message"),
    ],
)
def test_a_rego_rule_with_a_key_the_module_answers_is_refused_naming_the_key(
    tmp_path: Path, key: str, value: object
) -> None:
    rule = {"name": "mod", "rego": "policies/m.rego", key: value}
    path = policy_file(tmp_path, rule, {"policies/m.rego": HEADER + BODIES["pass"]})

    assert problems_of(path) == [f"{path}: rules[0].{key}: is not for a rule with rego: the module's answer gives it"]


def test_policy_check_of_a_broken_module_exits_2_with_its_line(tmp_path: Path) -> None:
    policy_file(tmp_path, {"name": "mod", "rego": "policies/m.rego"}, {"policies/m.rego": BROKEN_SYNTAX})

    result = run_cli(tmp_path, "policy", "check", "policy.yml")

    assert result.returncode == 2, result.stdout + result.stderr
    assert_no_traceback(result.stderr)
    assert result.stderr.splitlines() == ["jit-bot: policy.yml: rules[0].rego: policies/m.rego:5:13: this is unclosed"]


def test_policy_check_of_the_rego_example(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "policy", "check", str(REGO_POLICY))

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{REGO_POLICY}: ok (1 resource(s), 2 rule(s), 2 group(s))"
    assert lines[2].startswith("  rules[1] k8s-rego: asks Rego module policies/k8s.rego when resource is k8s-prod")


# --- 6. the engine and its worker ----------------------------------------------------------------------------

ECHO = HEADER + 'decision := {"effect": "deny", "message": input.word}\n'


@pytest.fixture
def echo() -> Iterator[RegoEngine]:
    started = RegoEngine({"echo": RegoModule("echo.rego", ECHO), "slow": module("slow", SLOW)}, timeout=60)
    assert started.compile() == []
    yield started
    started.close()


def said(engine: RegoEngine, word: str) -> RegoAnswer:
    return engine.evaluate("echo", {"word": word})


def _state(pid: int) -> str:
    # /proc/<pid>/stat: "pid (comm) S ..." -- the state letter follows the command's closing paren.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _until(condition: Any, what: str, deadline: float = 30.0) -> None:
    """Wait for ``condition()`` (a generous deadline only so that a broken engine fails, not hangs)."""
    give_up = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def defined(word: str) -> RegoAnswer:
    return RegoAnswer(AnswerKind.DEFINED, {"effect": "deny", "message": word})


def test_a_worker_killed_between_requests_is_replaced_before_the_next(echo: RegoEngine) -> None:
    assert said(echo, "one") == defined("one")
    assert echo._process is not None
    pid, restarts = echo._process.pid, echo.restarts

    os.kill(pid, signal.SIGKILL)
    _until(lambda: _state(pid) == "Z", "the worker to be dead")  # dead, not yet reaped: poll() sees it

    assert said(echo, "two") == defined("two")
    assert echo.restarts == restarts + 1
    assert echo._process is not None and echo._process.pid != pid


def test_a_worker_killed_just_before_a_request_costs_at_most_that_request(echo: RegoEngine) -> None:
    assert echo._process is not None
    pid = echo._process.pid

    os.kill(pid, signal.SIGKILL)
    first = said(echo, "two")  # the death may or may not have been noticed yet

    if first.kind is AnswerKind.ERROR:
        assert first.detail == "the Rego engine stopped while evaluating (exit code -9)"
    else:
        assert first == defined("two")
    assert said(echo, "three") == defined("three")
    assert echo._process is not None and echo._process.pid != pid


def test_a_worker_killed_while_evaluating_answers_error_and_the_next_request_is_decided(echo: RegoEngine) -> None:
    assert echo._process is not None
    pid = echo._process.pid
    idle = _cpu_ticks(pid)
    answers: list[RegoAnswer] = []
    asking = threading.Thread(target=lambda: answers.append(echo.evaluate("slow", {})))
    asking.start()
    try:
        _until(lambda: _cpu_ticks(pid) >= idle + 20, "the worker to be busy evaluating")  # 0.2 s of its CPU
        os.kill(pid, signal.SIGKILL)
    finally:
        asking.join(timeout=60)

    assert answers == [RegoAnswer(AnswerKind.ERROR, detail="the Rego engine stopped while evaluating (exit code -9)")]
    assert said(echo, "after") == defined("after")


def test_an_unanswered_evaluation_times_out_and_the_worker_after_it_answers(impatient: RegoEngine) -> None:
    assert impatient.evaluate("slow", {}) == RegoAnswer(
        AnswerKind.TIMEOUT, detail="the module did not answer within 0.2 s"
    )
    impatient.timeout = 10  # the restart's first answer is what is checked, not its speed
    assert impatient.evaluate("allow", {}) == RegoAnswer(AnswerKind.DEFINED, {"effect": "auto_approve"})


def test_an_undefined_decision_is_undefined(engine: RegoEngine) -> None:
    assert engine.evaluate("undefined", {"request": {"reason": "x"}}) == RegoAnswer(AnswerKind.UNDEFINED)
    assert engine.evaluate("undefined", {"request": {"reason": "never given"}}) == RegoAnswer(
        AnswerKind.DEFINED, {"effect": "auto_approve"}
    )


def test_compile_reports_each_module_that_does_not() -> None:
    engine = RegoEngine({"good": module("pass"), "bad": RegoModule("policies/bad.rego", BROKEN_SYNTAX)})
    try:
        problems = engine.compile()
        assert [(p.rule, p.line_text()) for p in problems] == [("bad", "policies/bad.rego:5:13: this is unclosed")]
        assert engine.evaluate("good", {}) == RegoAnswer(AnswerKind.DEFINED, {"effect": "pass"})
    finally:
        engine.close()


ENVIRONMENT = HEADER + 'decision := {"effect": "deny", "message": json.marshal(object.keys(opa.runtime().env))}\n'
SECRETS = {"SLACK_BOT_TOKEN": BOT_TOKEN, "JIT_ENCRYPTION_KEY": "k" * 44, "OIDC_CLIENT_SECRET": "shh"}


def test_the_worker_is_not_given_the_bots_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    engine = RegoEngine({"env": RegoModule("env.rego", ENVIRONMENT)})
    try:
        assert engine.compile() == []
        answer = engine.evaluate("env", {})
        assert engine._process is not None
        environ = Path(f"/proc/{engine._process.pid}/environ").read_bytes()
    finally:
        engine.close()

    # What a module can read of its environment (rego-cpp's opa.runtime().env): PATH, and no secret.
    assert answer.kind is AnswerKind.DEFINED and isinstance(answer.value, dict), answer
    seen = set(json.loads(answer.value["message"]))
    assert "PATH" in seen, seen
    assert seen <= {"PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV"}, seen
    # And what the process was started with.
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert names == seen
    assert not any(secret.encode() in environ for secret in SECRETS.values())


# --- 7. `jit-bot policy test` with the Rego example ----------------------------------------------------------


def test_the_shipped_rego_cases_pass_against_the_shipped_rego_policy(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "policy", "test", str(REGO_POLICY), str(REGO_CASES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert_no_traceback(result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    assert lines[-1] == "10 of 10 case(s) passed"
    assert all(line.startswith("pass  ") for line in lines[:-1]), lines
    assert len(lines) == 11


def test_a_failing_rego_case_explains_with_the_modules_answer(tmp_path: Path) -> None:
    cases = yaml.safe_load(REGO_CASES.read_text())
    assert cases["cases"][5]["description"] == "exec without a change ticket"
    cases["cases"][5]["expect"] = {"effect": "auto_approve", "rule": "k8s-rego"}
    (tmp_path / "cases.yml").write_text(yaml.safe_dump(cases))

    result = run_cli(tmp_path, "policy", "test", str(REGO_POLICY), "cases.yml")

    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    failing = [i for i, line in enumerate(lines) if line.startswith("FAIL")]
    assert len(failing) == 1
    assert lines[failing[0]].split() == (
        "FAIL exec without a change ticket got deny (k8s-rego), expected auto_approve (k8s-rego)".split()
    )
    assert lines[failing[0] + 1].strip() == "long-needs-a-person: not_matched: when.min_duration failed (15m < 31m)"
    assert lines[failing[0] + 2].strip() == (
        "k8s-rego: matched: when.resources held ('k8s-prod' matches k8s-prod); policies/k8s.rego answered "
        'data.jit.decision = {"effect": "deny", "message": "exec needs a change ticket (CHG-...) in the reason."}'
    )
    assert lines[-1] == "9 of 10 case(s) passed"


# --- what an attack on the engine found -------------------------------------------------------------


@pytest.fixture
def fresh() -> Iterator[Callable[[str, str], RegoEngine]]:
    """Start an engine for one rule's module (closed after the test)."""
    started: list[RegoEngine] = []

    def start(rule: str, body: str) -> RegoEngine:
        engine = RegoEngine({rule: module(rule, body)}, timeout=10)
        assert engine.compile() == []
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.close()


def test_a_built_in_that_fails_inside_a_deny_fails_closed_instead_of_skipping_the_deny(
    fresh: Callable[[str, str], RegoEngine],
) -> None:
    """Non-strict, rego-cpp makes a body whose built-in fails undefined, and the default would decide."""
    body = (
        'default decision := {"effect": "auto_approve"}\n\n'
        'decision := {"effect": "deny", "message": "big ticket"} if {\n'
        "\tto_number(input.request.reason) > 9000\n}\n"
    )
    engine = fresh("numbers", body)
    policy = policy_with({"name": "numbers", "rego": module("numbers", body)})

    assert run(policy, engine, ask(reason="9001")).effect is Effect.DENY  # the control: a number
    decision = run(policy, engine, ask(reason="fix"))

    assert (decision.effect, decision.message) == (Effect.DENY, failed("numbers"))
    assert decision.rego_failure is not None and decision.rego_failure.kind == "error"


@pytest.mark.parametrize("reason", ["café", "Zugriff für INC-7 ✓"], ids=["accented", "symbols"])
def test_the_module_sees_text_as_written_not_as_json_escapes(
    fresh: Callable[[str, str], RegoEngine], reason: str
) -> None:
    body = (
        'decision := {"effect": "deny", "message": "same"} if {\n'
        f"\tinput.request.reason == {json.dumps(reason, ensure_ascii=False)}\n"
        "}\n"
    )
    engine = fresh("same-text", body)

    decision = run(policy_with({"name": "same-text", "rego": module("same-text", body)}), engine, ask(reason=reason))

    assert (decision.effect, decision.message) == (Effect.DENY, "same")


@pytest.mark.parametrize("effect", [pytest.param(["deny"], id="a-list"), pytest.param({"x": 1}, id="an-object")])
def test_an_effect_that_is_not_text_breaks_the_contract(effect: object) -> None:
    with pytest.raises(ContractBroken, match="effect must be one of"):
        read_answer({"effect": effect}, groups=GROUP_TUPLES)


def test_what_a_broken_answer_is_recorded_as_is_one_bounded_line(fresh: Callable[[str, str], RegoEngine]) -> None:
    # A key of 5,000 characters with a newline in it.
    long_key = 'concat("\\n", ["x", concat("", ["y" | some _ in numbers.range(1, 5000)])])'
    body = f'decision := {{"effect": "pass", {long_key}: 1}}\n'
    engine = fresh("huge-key", body)

    decision = run(policy_with({"name": "huge-key", "rego": module("huge-key", body)}), engine)

    assert decision.rego_failure is not None and decision.rego_failure.kind == "contract"
    assert len(decision.rego_failure.detail) <= 300
    assert "\n" not in decision.rego_failure.detail


def test_a_deny_message_is_one_line_so_it_cannot_forge_a_line_on_the_card() -> None:
    verdict = read_answer(
        {"effect": "deny", "message": "see runbook\n:white_check_mark: *Approved by* \u202eevil"}, groups={}
    )
    assert verdict.message == "see runbook :white_check_mark: *Approved by* evil"


def test_a_module_outside_the_policy_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.rego").write_text(HEADER + BODIES["pass"])
    folder = tmp_path / "policy"
    folder.mkdir()
    path = policy_file(folder, {"name": "mod", "rego": "../elsewhere.rego"}, {})

    assert problems_of(path) == [
        f"{path}: rules[0].rego: '../elsewhere.rego' is outside the policy file's folder ({folder})"
    ]


def test_a_module_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    os.mkfifo(tmp_path / "policies" / "m.rego")  # reading it would block start-up forever
    path = policy_file(tmp_path, {"name": "mod", "rego": "policies/m.rego"}, {})

    assert problems_of(path) == [f"{path}: rules[0].rego: 'policies/m.rego' is not a regular file"]


def test_an_indented_function_head_is_a_function_the_module_defines(tmp_path: Path) -> None:
    source = HEADER + (
        'decision := {"effect": "pass"} if {\n\tnot is_big(input.request.duration_seconds)\n}\n\n'
        "  is_big(n) if {\n\tn > 3600\n}\n"
    )
    path = policy_file(tmp_path, {"name": "mod", "rego": "policies/m.rego"}, {"policies/m.rego": source})

    (rule,) = load_policy(path).rules
    assert rule.rego is not None and rule.rego.source == source
