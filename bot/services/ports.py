"""What the use cases need from Slack, as interfaces; ``bot.slack`` implements them.

Keeping Slack behind these keeps services free of Slack types and lets tests drive them with the
real Slack client against the stand-in, or with a plain fake that implements the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


@dataclass(frozen=True)
class VoteView:
    voter: str
    choice: str
    reason: str | None


@dataclass(frozen=True)
class RequestSnapshot:
    """A request as it stood when a transaction committed: what cards and messages are drawn from."""

    id: str
    requester: str
    resource: str
    resource_description: str
    scopes: tuple[str, ...]
    duration: timedelta
    reason: str
    status: str
    approvals_required: int
    votes: tuple[VoteView, ...]
    created_at: datetime
    decided_at: datetime | None
    deny_reason: str | None
    approver_channel: str
    card_channel: str | None
    card_ts: str | None
    active_until: datetime | None = None
    revoked_at: datetime | None = None
    revocation_pending: bool = False
    failure_code: str | None = None
    failure_detail: str | None = None

    @property
    def approvers_so_far(self) -> tuple[str, ...]:
        return tuple(v.voter for v in self.votes if v.choice == "approve")

    @property
    def deniers(self) -> tuple[str, ...]:
        return tuple(v.voter for v in self.votes if v.choice == "deny")


class DirectoryError(Exception):
    """Slack could not answer a directory question; the message is Slack's error code."""


class DeliveryError(Exception):
    """Slack refused or could not take a message; the message is Slack's error code."""


class Directory(Protocol):
    def email_of(self, slack_user_id: str) -> str | None: ...

    def usergroup_members(self, usergroup_id: str) -> frozenset[str]: ...


class Notifier(Protocol):
    def post_card(self, request: RequestSnapshot) -> tuple[str, str]:
        """Post the approval card; returns (channel, ts). Raises DeliveryError."""
        ...

    def update_card(self, request: RequestSnapshot) -> None: ...

    def tell_requester(self, request: RequestSnapshot) -> None: ...

    def audit_summary(self, channel: str, request: RequestSnapshot, event: str) -> None: ...

    def send_pickup_link(self, request: RequestSnapshot, url: str, link_expires_at: datetime) -> None:
        """DM the requester the one-time link. The URL is a secret: it goes nowhere else."""
        ...

    def alert(self, channel: str, text: str) -> None:
        """Something a security lead must look at (e.g. the IdP granted more than was approved)."""
        ...
