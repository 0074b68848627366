"""What every part of the policy model shares: strict mappings, durations, the shapes of Slack ids, and
an error that names keys below the one a validator runs on.

It is its own module so that the resources (``bot.domain.policy``) and the rules
(``bot.domain.policy_rules``) can both use it without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from bot.domain.durations import DurationError, parse_duration

SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
SLACK_USERGROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")
SLACK_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,}$")
# Resources, rules and groups share it: lower-case, so a name can never be mistaken for a Slack id.
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
NAME_RULE = "must be lower-case letters, digits, '.', '_' or '-' (at most 63)"
SCOPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._/-]{0,127}$")

Key = tuple[str | int, ...]


def key_path(parts: Key) -> str:
    """``("rules", 0, "when", "hours")`` as a YAML author reads it: ``rules[0].when.hours``."""
    key = ""
    for part in parts:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


class KeyedProblems(ValueError):
    """Problems with keys below the one being validated, each with its key relative to it.

    A check that needs several keys at once (a rule naming a group defined elsewhere) runs on the
    mapping that holds them all, but its error must still name the key that is wrong; the policy
    loader joins these keys onto the location pydantic reports.
    """

    def __init__(self, problems: list[tuple[Key, str]]) -> None:
        super().__init__("; ".join(f"{key_path(key) or 'policy'}: {message}" for key, message in problems))
        self.problems = problems


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        # 90 could mean seconds or minutes; in an access policy a guess either way is a mistake.
        raise ValueError(f"{value} has no unit: write {value}s, {value}m or {value}h")
    if not isinstance(value, str):
        raise ValueError("must be a duration like 90s, 15m, 2h or 1h30m")
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


Duration = Annotated[timedelta, BeforeValidator(_duration)]


@dataclass(frozen=True)
class RegoModule:
    """A rule's Rego module: its path as the policy names it (relative to the policy file), and its source."""

    path: str
    source: str


class Strict(BaseModel):
    # A typo in a security policy must not silently disable a rule, so unknown keys are errors.
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_slack_id(entry: str) -> bool:
    return bool(SLACK_USER_ID.fullmatch(entry) or SLACK_USERGROUP_ID.fullmatch(entry))
