"""Reminders and escalation of requests nobody has decided: the policy's ``reminders:`` and its schedule.

Pure: the job (``bot.services.reminders``) reads the request's row, asks :func:`plan` what is due at
this moment, and claims it with a guarded update, so the arithmetic here is all there is to test
about *when*.

Reminder k (k = 1, 2, …) is due at ``created + after × (1 + backoff + … + backoff^(k-1))``; the
escalation once, at ``created + escalate_after``. Nothing is due at or after the request's expiry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import Field, field_validator, model_validator

from bot.domain.durations import format_duration
from bot.domain.policy_fields import (
    NAME,
    SLACK_USER_ID,
    SLACK_USERGROUP_ID,
    Duration,
    Key,
    KeyedProblems,
    Strict,
    is_slack_id,
)

# More often than this a reminder is noise in the approvers' channel (and the job looks every few seconds).
MIN_AFTER = timedelta(minutes=1)
MAX_BACKOFF = 10


class Reminders(Strict):
    """``reminders:`` globally or on a resource (a resource's replaces the global one)."""

    after: Duration
    backoff: float = 2
    escalate_after: Duration | None = None
    # Group names under ``groups:``, Slack user ids or usergroup ids.
    escalate_to: tuple[str, ...] | None = Field(default=None, min_length=1)

    @field_validator("after")
    @classmethod
    def _after(cls, value: timedelta) -> timedelta:
        if value < MIN_AFTER:
            raise ValueError("must be at least 1m: reminders more often than that are noise")
        return value

    @field_validator("backoff", mode="before")
    @classmethod
    def _backoff(cls, value: object) -> float:
        # Strictly a number: "2" in quotes, or true, is a typo in a security policy, not a factor.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number, like 2 or 1.5")
        if not 1 <= value <= MAX_BACKOFF:
            raise ValueError(f"must be a number from 1 (every `after`) to {MAX_BACKOFF}")
        return float(value)

    @field_validator("escalate_to")
    @classmethod
    def _entries(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for entry in value or ():
            if not (is_slack_id(entry) or NAME.fullmatch(entry)):
                raise ValueError(f"'{entry}' is neither a group name nor a Slack user id (U…) or usergroup id (S…)")
        twice = sorted({entry for entry in value or () if (value or ()).count(entry) > 1})
        if twice:
            raise ValueError(f"lists '{twice[0]}' twice")
        return value

    @model_validator(mode="after")
    def _both_or_neither(self) -> Reminders:
        if self.escalate_after is not None and self.escalate_to is None:
            why = "is required with escalate_after: who is the request escalated to?"
            raise KeyedProblems([(("escalate_to",), why)])
        if self.escalate_to is not None and self.escalate_after is None:
            why = "is required with escalate_to: when is the request escalated?"
            raise KeyedProblems([(("escalate_after",), why)])
        return self


def reminder_problems(
    reminders: Reminders, *, groups: Mapping[str, tuple[str, ...]], request_timeout: timedelta
) -> list[tuple[Key, str]]:
    """What one ``reminders:`` cannot see wrong with itself: groups that are not defined (or hold
    someone who cannot click in Slack), and a first reminder or an escalation that the request's
    timeout would always come first."""
    problems: list[tuple[Key, str]] = []
    timeout = _spelled(request_timeout)
    if reminders.after >= request_timeout:
        problems.append(
            (("after",), f"is {_spelled(reminders.after)}, not shorter than request_timeout {timeout}: never sent")
        )
    if reminders.escalate_after is not None and reminders.escalate_after >= request_timeout:
        problems.append(
            (
                ("escalate_after",),
                f"is {_spelled(reminders.escalate_after)}, not shorter than request_timeout {timeout}: "
                "the request would expire first",
            )
        )
    for entry in reminders.escalate_to or ():
        if is_slack_id(entry):
            continue
        if entry not in groups:
            problems.append(
                (
                    ("escalate_to",),
                    f"'{entry}' is neither a group defined under groups: nor a Slack user id (U…) or usergroup id (S…)",
                )
            )
            continue
        for member in groups[entry]:
            if not is_slack_id(member):
                problems.append(
                    (
                        ("escalate_to",),
                        f"group '{entry}' lists '{member}', which is not a Slack user id (U…) or usergroup id (S…): "
                        "only people in Slack can approve",
                    )
                )
                break
    return problems


def _spelled(value: timedelta) -> str:
    return format_duration(value)


def escalation_entries(reminders: Reminders, groups: Mapping[str, Iterable[str]]) -> tuple[str, ...]:
    """``escalate_to`` as Slack user and usergroup ids (group names replaced by their members)."""
    seen: dict[str, None] = {}
    for entry in reminders.escalate_to or ():
        for member in groups.get(entry, (entry,)):
            seen.setdefault(member, None)
    return tuple(seen)


def reminder_points(created: datetime, reminders: Reminders, until: datetime) -> Iterable[datetime]:
    """The moments reminders are due, in order, before ``until`` (the request's expiry)."""
    step = reminders.after
    at = created + step
    while at < until:
        yield at
        step = step * reminders.backoff
        at = at + step


@dataclass(frozen=True)
class Nudge:
    """What is due for one pending request at one moment."""

    remind: bool
    escalate: bool
    # When to look at the request again: the next reminder or the escalation, whichever is sooner,
    # or its expiry when nothing more is to come (then the job never looks again).
    next_at: datetime

    @property
    def says_something(self) -> bool:
        return self.remind or self.escalate


def plan(
    *,
    created: datetime,
    expires: datetime,
    reminders: Reminders | None,
    scheduled: datetime | None,
    escalated: bool,
    now: datetime,
) -> Nudge:
    """What is due at ``now``. ``scheduled``: the request's stored next look (None: never looked at).

    A reminder is due when the first reminder moment at or after ``scheduled`` has come. Since
    ``scheduled`` was set to the sooner of the next reminder and the escalation when the request was
    last looked at, that moment is exactly the reminder not sent yet. However many moments passed
    while the bot was down, one reminder is due (the catch-up), and the next is the first moment
    after ``now``: never a burst.
    """
    if reminders is None or now >= expires:
        return Nudge(remind=False, escalate=False, next_at=expires)
    since = scheduled or created
    owed: datetime | None = None
    upcoming: list[datetime] = []
    # Walked once and only as far as needed (backoff 1 and a long timeout make many moments).
    for point in reminder_points(created, reminders, expires):
        if owed is None and point >= since:
            owed = point
        if point > now:
            upcoming.append(point)
        if owed is not None and upcoming:
            break
    remind = owed is not None and owed <= now
    escalate_at = created + reminders.escalate_after if reminders.escalate_after is not None else None
    escalate = escalate_at is not None and not escalated and escalate_at <= now
    if escalate_at is not None and not escalated and not escalate and escalate_at > now:
        upcoming.append(escalate_at)
    return Nudge(remind=remind, escalate=escalate, next_at=min(upcoming, default=expires))


def awaited(entries: Iterable[str], *, voters: Iterable[str], requester: str) -> tuple[str, ...]:
    """Whom a reminder mentions: the approvers (user and usergroup ids) who have not voted.

    A usergroup is mentioned as a whole even when one of its members voted: expanding it would cost
    a Slack call per reminder and mention a large team one by one. The requester is never asked.
    """
    voted = set(voters)
    seen: dict[str, None] = {}
    for entry in entries:
        if SLACK_USERGROUP_ID.fullmatch(entry) or (
            SLACK_USER_ID.fullmatch(entry) and entry not in voted and entry != requester
        ):
            seen.setdefault(entry, None)
    return tuple(seen)
