"""Typed errors whose message is written for the person in Slack.

Listeners turn these into ephemeral text in one place; anything else is an unexpected error and the
user gets a reference id instead of internals.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """Safe to show to the user as it is: no secrets, no stack, says what to do."""

    code = "user_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnmappedRequester(UserFacingError):
    code = "unmapped_requester"


class DeliveryFailed(UserFacingError):
    code = "delivery_failed"
