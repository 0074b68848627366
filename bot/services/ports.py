"""What the use cases need from Slack, as interfaces; ``bot.slack`` implements them.

Keeping Slack behind these keeps services free of Slack types and lets tests drive them with the
real Slack client against the stand-in, or with a plain fake that implements the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bot.services.notices import Notice


class DirectoryError(Exception):
    """Slack could not answer a directory question; the message is Slack's error code."""


class DeliveryError(Exception):
    """Slack did not take a message. ``permanent``: it never will (the bot is not in the channel,
    the channel is gone, Slack refuses the content), so trying again is pointless; otherwise
    (network trouble, 5xx, rate limits, a token Slack refuses until an admin fixes it) it is
    retried, after ``retry_after`` seconds when Slack said how long to wait."""

    def __init__(self, code: str, *, permanent: bool, retry_after: float | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.permanent = permanent
        self.retry_after = retry_after


class Directory(Protocol):
    def email_of(self, slack_user_id: str) -> str | None: ...

    def usergroup_members(self, usergroup_id: str) -> frozenset[str]: ...


@dataclass(frozen=True)
class Delivered:
    """Where a posted message landed (for the approval card: its channel and ts)."""

    channel: str | None = None
    ts: str | None = None


class Notifier(Protocol):
    def deliver(self, notice: Notice, *, secret: str | None = None) -> Delivered:
        """Render and send one notice; ``secret`` is the pickup URL of a PickupLink, which goes
        nowhere else. Raises DeliveryError."""
        ...
