"""The services' ports, implemented with the real Slack Web API client."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.services.ports import DeliveryError, DirectoryError, RequestSnapshot
from bot.slack.blocks import approval_card, audit_summary_text, card_text, outcome_text, pickup_text

log = logging.getLogger(__name__)
T = TypeVar("T")


def _slack_error(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error", "unknown_error"))
    # Network trouble: say what kind, never echo the request (it could carry a token header).
    return type(exc).__name__


def _call(fn: Callable[[], T], error: type[Exception]) -> T:
    try:
        return fn()
    except (SlackClientError, OSError) as exc:
        raise error(_slack_error(exc)) from None


class SlackNotifier:
    def __init__(self, client: WebClient) -> None:
        self._client = client

    def post_card(self, request: RequestSnapshot) -> tuple[str, str]:
        response: Any = _call(
            lambda: self._client.chat_postMessage(
                channel=request.approver_channel,
                text=card_text(request),
                blocks=approval_card(request),
                unfurl_links=False,
            ),
            DeliveryError,
        )
        return str(response["channel"]), str(response["ts"])

    def update_card(self, request: RequestSnapshot) -> None:
        if request.card_channel is None or request.card_ts is None:
            return
        channel, ts = request.card_channel, request.card_ts
        _call(
            lambda: self._client.chat_update(
                channel=channel, ts=ts, text=card_text(request), blocks=approval_card(request)
            ),
            DeliveryError,
        )

    def tell_requester(self, request: RequestSnapshot) -> None:
        # Posting to a user id opens (or reuses) the DM with the bot.
        _call(
            lambda: self._client.chat_postMessage(channel=request.requester, text=outcome_text(request)),
            DeliveryError,
        )

    def audit_summary(self, channel: str, request: RequestSnapshot, event: str) -> None:
        _call(
            lambda: self._client.chat_postMessage(
                channel=channel, text=audit_summary_text(request, event), unfurl_links=False
            ),
            DeliveryError,
        )

    def send_pickup_link(self, request: RequestSnapshot, url: str, link_expires_at: datetime) -> None:
        # No unfurling: Slack's unfurler would fetch the link and use up the one-time pickup.
        _call(
            lambda: self._client.chat_postMessage(
                channel=request.requester,
                text=pickup_text(request, url, link_expires_at),
                unfurl_links=False,
                unfurl_media=False,
            ),
            DeliveryError,
        )

    def alert(self, channel: str, text: str) -> None:
        _call(lambda: self._client.chat_postMessage(channel=channel, text=text, unfurl_links=False), DeliveryError)


class SlackDirectory:
    def __init__(self, client: WebClient) -> None:
        self._client = client

    def email_of(self, slack_user_id: str) -> str | None:
        response: Any = _call(lambda: self._client.users_info(user=slack_user_id), DirectoryError)
        user = response.get("user") or {}
        if user.get("deleted") or user.get("is_bot"):
            return None
        email = (user.get("profile") or {}).get("email")
        return str(email) if email else None

    def usergroup_members(self, usergroup_id: str) -> frozenset[str]:
        response: Any = _call(lambda: self._client.usergroups_users_list(usergroup=usergroup_id), DirectoryError)
        return frozenset(str(u) for u in response.get("users") or [])
