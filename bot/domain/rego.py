"""What a rule decided by a Rego module is given, and what it must answer: the contract, as pure code.

The module's ``data.jit.decision`` sees the input document built by ``rego_input`` and answers an
object that ``read_answer`` checks. Evaluating it is an outside call (``RegoEvaluator``); everything
about what goes in and what may come out is here, where it can be tested without an engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from bot.domain.policy_fields import SLACK_USER_ID, SLACK_USERGROUP_ID, RegoModule, is_slack_id
from bot.domain.policy_rules import DAYS, expand
from bot.domain.text import one_line

# How long one evaluation may take before the rule fails closed, unless the settings say otherwise.
DEFAULT_TIMEOUT_SECONDS = 0.5
# input.recent_auto_approvals counts the requester's auto-approvals by the rule within this window.
RECENT_WINDOW = timedelta(hours=24)
# The query every module answers.
QUERY = "data.jit.decision"
# Room for a module's deny message, as for a YAML rule's.
MESSAGE_MAX = 500
_KEYS = frozenset({"effect", "message", "approvals", "approvers"})

__all__ = ["RegoModule"]


class AnswerKind(StrEnum):
    DEFINED = "defined"
    UNDEFINED = "undefined"  # data.jit.decision has no value for this input: the rule passes
    ERROR = "error"  # the evaluation failed
    TIMEOUT = "timeout"  # it did not finish in time


@dataclass(frozen=True)
class RegoAnswer:
    """What the engine said: a value, no value, or why there is none (never the input back)."""

    kind: AnswerKind
    value: object = None
    detail: str = ""


class RegoEvaluator(Protocol):
    def evaluate(self, rule: str, document: Mapping[str, object]) -> RegoAnswer:
        """The rule's module's data.jit.decision for ``document``; never raises for what the module does."""
        ...


class RegoEffect(StrEnum):
    AUTO_APPROVE = "auto_approve"
    DENY = "deny"
    REQUIRE = "require"
    PASS = "pass"


@dataclass(frozen=True)
class RegoVerdict:
    effect: RegoEffect
    message: str | None = None
    approvals: int | None = None
    approvers: tuple[str, ...] | None = None  # as the module wrote them: group names and Slack ids


class ContractBroken(ValueError):
    """The module answered something the contract does not allow; the message says what."""


def rego_input(
    *,
    requester: str,
    subject: str | None,
    groups: tuple[str, ...],
    resource: Mapping[str, object],
    scopes: tuple[str, ...],
    duration_seconds: int,
    reason: str,
    now: datetime,
    recent_auto_approvals: int,
    extension: bool = False,
) -> dict[str, object]:
    """The input document. ``now_ns`` is beside ``now`` because rego-cpp's time.parse_rfc3339_ns does
    not parse RFC 3339 text, while its time.clock, time.weekday and time.date do take nanoseconds."""
    utc = now.astimezone(UTC)
    return {
        "requester": {"slack_id": requester, "subject": subject, "groups": list(groups)},
        "resource": dict(resource),
        "request": {
            "scopes": list(scopes),
            "duration_seconds": duration_seconds,
            "reason": reason,
            "extension": extension,
        },
        "now": utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "now_ns": int(utc.timestamp()) * 1_000_000_000 + utc.microsecond * 1000,
        "weekday": DAYS[utc.weekday()],
        "recent_auto_approvals": recent_auto_approvals,
    }


def probe_input() -> dict[str, object]:
    """A plausible input for compiling a module at start-up (rego-cpp resolves names at the first query)."""
    resource: dict[str, object] = {
        "name": "probe",
        "audience": "probe",
        "scopes": ["read"],
        "max_duration_seconds": 3600,
    }
    return rego_input(
        requester="U0PROBE",
        subject=None,
        groups=(),
        resource=resource,
        scopes=("read",),
        duration_seconds=600,
        reason="probe",
        now=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
        recent_auto_approvals=0,
    )


def read_answer(value: object, *, groups: Mapping[str, tuple[str, ...]]) -> RegoVerdict:
    """The module's answer as a verdict, or ContractBroken naming what is wrong with it."""
    if not isinstance(value, dict):
        raise ContractBroken(f'data.jit.decision must be an object like {{"effect": "pass"}}, not {_shown(value)}')
    unknown = sorted(str(key) for key in value if key not in _KEYS)
    if unknown:
        raise ContractBroken(f"data.jit.decision has unknown key(s) {', '.join(_shown(k) for k in unknown[:5])}")
    effect = value.get("effect")
    if not isinstance(effect, str) or effect not in {e.value for e in RegoEffect}:
        choices = ", ".join(f'"{e}"' for e in RegoEffect)
        raise ContractBroken(f"effect must be one of {choices}, not {_shown(effect)}")
    verdict_effect = RegoEffect(str(effect))
    for key, owner in (
        ("message", RegoEffect.DENY),
        ("approvals", RegoEffect.REQUIRE),
        ("approvers", RegoEffect.REQUIRE),
    ):
        if key in value and verdict_effect is not owner:
            raise ContractBroken(f'{key} is only for effect "{owner}", and the effect is "{verdict_effect}"')
    # One line, like every text people see on a card: a module's newline must not forge one.
    message = one_line(value["message"]) if isinstance(value.get("message"), str) else value.get("message")
    if "message" in value and (not isinstance(message, str) or not message or len(message) > MESSAGE_MAX):
        raise ContractBroken(f"message must be text of 1 to {MESSAGE_MAX} characters")
    approvals = value.get("approvals")
    if approvals is not None and (
        isinstance(approvals, bool) or not isinstance(approvals, int) or not 1 <= approvals <= 10
    ):
        raise ContractBroken(f"approvals must be a whole number from 1 to 10, not {_shown(approvals)}")
    approvers = _approvers(value.get("approvers"), groups) if "approvers" in value else None
    if approvers is not None and approvals is not None:
        people = expand(groups, approvers)
        users = {a for a in people if SLACK_USER_ID.fullmatch(a)}
        if not any(SLACK_USERGROUP_ID.fullmatch(a) for a in people) and approvals > len(users):
            raise ContractBroken(f"approvals is {approvals} but approvers lists only {len(users)} person(s)")
    return RegoVerdict(verdict_effect, message, approvals, approvers)


def _approvers(value: object, groups: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(entry, str) for entry in value):
        raise ContractBroken("approvers must be a non-empty list of group names or Slack ids (U…, S…)")
    for entry in value:
        if not is_slack_id(entry) and entry not in groups:
            raise ContractBroken(
                f"approvers names {_shown(entry)}, which is neither a group of the policy nor a Slack id"
            )
        for member in groups.get(entry, ()):
            if not is_slack_id(member):
                raise ContractBroken(f"approvers group '{entry}' lists '{member}', who cannot approve in Slack")
    return tuple(value)


def _shown(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "…"
