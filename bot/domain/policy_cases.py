"""``jit-bot policy test``: a table of requests with the decision each should get, run against a policy
with the same pure function the bot decides with (``bot.domain.rules.decide``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, field_validator

from bot.domain.policy import Policy
from bot.domain.policy_fields import Duration, Strict
from bot.domain.rego import RegoEvaluator
from bot.domain.rules import AccessRequest, Check, Decision, Effect, decide


class Expectation(Strict):
    effect: Effect
    rule: str | None = None  # None: whichever rule (or the default) decided is fine, only the effect counts


class Case(Strict):
    description: str = Field(min_length=1)
    requester: str = Field(min_length=1)
    subject: str | None = None
    # The usergroups (S…) the requester is in, as Slack would list them; `unknown`: Slack could not be asked.
    groups: tuple[str, ...] | Literal["unknown"] = ()
    resource: str
    scopes: Annotated[tuple[str, ...], Field(min_length=1)]
    duration: Duration
    reason: str = "testing"
    time: AwareDatetime
    recent_auto_approvals: dict[str, int] = Field(default_factory=dict)
    # An extension of an active grant (/jit extend); its duration is then the extra time.
    extension: bool = False
    expect: Expectation

    @field_validator("time", mode="before")
    @classmethod
    def _iso(cls, value: object) -> object:
        # YAML reads an unquoted 2026-12-01T10:00:00+01:00 as a datetime already; a string is parsed as ISO 8601.
        return datetime.fromisoformat(value) if isinstance(value, str) else value


class Cases(Strict):
    cases: Annotated[tuple[Case, ...], Field(min_length=1)]


@dataclass(frozen=True)
class Result:
    case: Case
    decision: Decision

    @property
    def passed(self) -> bool:
        expected = self.case.expect
        return self.decision.effect is expected.effect and (
            expected.rule is None or self.decision.rule == expected.rule
        )


def run_cases(policy: Policy, cases: Cases, *, rego: RegoEvaluator | None = None) -> list[Result]:
    """Each case decided, in order (``rego`` evaluates the policy's Rego rules, when it has any). A case
    naming a resource the policy lacks raises ValueError."""
    results = []
    for case in cases.cases:
        if policy.resource(case.resource) is None:
            raise ValueError(f"case {case.description!r}: the policy has no resource {case.resource!r}")
        request = AccessRequest(
            resource=case.resource,
            scopes=case.scopes,
            duration=case.duration,
            reason=case.reason,
            requester=case.requester,
            subject=case.subject,
            extension=case.extension,
        )
        usergroups = None if case.groups == "unknown" else frozenset(case.groups)
        decision = decide(
            policy,
            request,
            usergroups=usergroups,
            now=case.time,
            recent_auto_approvals=case.recent_auto_approvals,
            rego=rego,
        )
        results.append(Result(case=case, decision=decision))
    return results


def _said(check: Check) -> str:
    if check.part == "rego":  # the module's answer, not a condition that held or failed
        return f"{check.condition} answered {check.detail}"
    held = "held" if check.held else "unknown" if check.held is None else "failed"
    return f"{check.part}.{check.condition} {held}" + (f" ({check.detail})" if check.detail else "")


def explain(decision: Decision) -> list[str]:
    """For a failed case: what each rule evaluated made of the request."""
    lines = []
    for trace in decision.trace:
        checks = "; ".join(_said(check) for check in trace.checks)
        lines.append(f"{trace.rule}: {trace.outcome.value}" + (f": {checks}" if checks else ""))
    if decision.rule is None:
        lines.append(f"no rule decided: {decision.reason}")
    return lines
