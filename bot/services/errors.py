"""Refusals a use case raises for the person in Slack: a type per kind, carrying facts.

Listeners turn these into ephemeral text in one place (``bot.slack.messages`` words them); anything
else is an unexpected error and the user gets a reference id instead of internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class UserFacingError(Exception):
    """A refusal safe to tell the user about: its facts hold no secrets; ``bot.slack.messages`` words it."""


class Unmapped(StrEnum):
    """Why a Slack account has no IdP subject."""

    NOT_LISTED = "not_listed"  # not under ``identities:``, and no email fallback
    NO_EMAIL = "no_email"  # the email fallback is on, but the profile has no email
    EMAIL_UNKNOWN = "email_unknown"  # the email fallback is on, and Slack could not say


@dataclass
class UnmappedRequester(UserFacingError):
    user: str
    why: Unmapped
    # EMAIL_UNKNOWN: Slack's error code.
    slack_error: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.why.value)


@dataclass
class TooManyPending(UserFacingError):
    pending: int
    limit: int

    def __post_init__(self) -> None:
        super().__init__(f"{self.pending} of {self.limit}")


@dataclass
class ApproversUnknown(UserFacingError):
    """Slack could not list a usergroup of the resource's approvers, and the caller refuses without it."""

    resource: str
    slack_error: str

    def __post_init__(self) -> None:
        super().__init__(self.slack_error)
