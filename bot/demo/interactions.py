"""What a Slack client sends to the app: signed slash commands and interaction payloads.

The local demo's workspace page and the tests both act through this, so a test that drives the bot
with it proves what the demo shows. The shapes follow what Slack sends over the Events API (HTTP
mode): a form body for slash commands, ``payload=<json>`` for interactions.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

from bot.demo.signing import signed_headers
from bot.demo.slack_api import APP_ID, TEAM_ID, SlackStandIn, slash_command_fields


@dataclass
class SlackRequests:
    """Builds and signs slash commands and interaction payloads, and posts them to the app."""

    base_url: str
    signing_secret: str
    response_url_for: Callable[..., str]  # the stand-in's response_url(key, channel=, ts=)
    trigger_id: Callable[[], str]  # the stand-in's new_trigger_id()
    # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout: a request sent on a
    # connection the server is closing at that moment is reset (seen once in a benchmark's minting).
    http: httpx.Client = field(
        default_factory=lambda: httpx.Client(timeout=30, limits=httpx.Limits(keepalive_expiry=2.0))
    )

    @classmethod
    def for_standin(
        cls, base_url: str, slack: SlackStandIn, *, signing_secret: str, http: httpx.Client | None = None
    ) -> SlackRequests:
        """Requests to the app at ``base_url`` from the workspace ``slack`` plays, signed with ``signing_secret``."""
        extra = {} if http is None else {"http": http}
        return cls(
            base_url=base_url,
            signing_secret=signing_secret,
            response_url_for=slack.response_url,
            trigger_id=slack.new_trigger_id,
            **extra,
        )

    def post_signed(
        self,
        body: str,
        *,
        content_type: str = "application/x-www-form-urlencoded",
        timestamp: int | None = None,
        extra_headers: dict[str, str] | None = None,
        signature: str | None = None,
    ) -> httpx.Response:
        headers = signed_headers(self.signing_secret, body, timestamp=timestamp, content_type=content_type)
        if signature is not None:
            headers["X-Slack-Signature"] = signature
        headers.update(extra_headers or {})
        return self.http.post(f"{self.base_url}/slack/events", content=body, headers=headers)

    def command_body(self, user: str, text: str, *, channel: str = "C0GENERAL01") -> tuple[str, str, str]:
        key = secrets.token_hex(6)
        trigger_id = self.trigger_id()
        fields = slash_command_fields(
            user, text, response_url=self.response_url_for(key), trigger_id=trigger_id, channel=channel
        )
        body = urlencode(fields)
        return body, key, trigger_id

    def slash(self, user: str, text: str, **kwargs: Any) -> tuple[httpx.Response, str, str]:
        """Returns (http response, response_url key, trigger_id)."""
        body, key, trigger_id = self.command_body(user, text)
        return self.post_signed(body, **kwargs), key, trigger_id

    def payload_body(self, payload: dict[str, Any]) -> str:
        return urlencode({"payload": json.dumps(payload)})

    def click_payload(
        self, user: str, action_id: str, value: str, *, channel: str, ts: str
    ) -> tuple[dict[str, Any], str]:
        """A press of the button ``action_id`` (carrying ``value``) on the message at ``channel``/``ts``."""
        button = {"type": "button", "action_id": action_id, "value": value}
        message = {"type": "message", "ts": ts, "text": "card"}
        return self.press_payload(user, button, block_id="actions", channel=channel, message=message)

    def press_payload(
        self,
        user: str,
        element: dict[str, Any],
        *,
        block_id: str,
        channel: str,
        message: dict[str, Any],
        channel_name: str = "approvers",
    ) -> tuple[dict[str, Any], str]:
        """What Slack sends when ``user`` presses the button ``element`` in block ``block_id`` of
        ``message`` (as Slack returns it, with its ``ts``) in ``channel``; and the response_url's key."""
        key, ts = secrets.token_hex(6), str(message["ts"])
        action: dict[str, Any] = {
            "action_id": element["action_id"],
            "block_id": block_id,
            "text": element.get("text") or {"type": "plain_text", "text": element["action_id"]},
            "type": "button",
            "action_ts": f"{time.time():.6f}",
        }
        for optional in ("value", "style"):
            if optional in element:
                action[optional] = element[optional]
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "deprecated-verification-token",
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            "trigger_id": self.trigger_id(),
            "team": {"id": TEAM_ID, "domain": "example"},
            "channel": {"id": channel, "name": channel_name},
            "message": message,
            "response_url": self.response_url_for(key, channel=channel, ts=ts),
            "actions": [action],
        }
        return payload, key

    def click(
        self, user: str, action_id: str, value: str, *, channel: str, ts: str, **kwargs: Any
    ) -> tuple[httpx.Response, str]:
        payload, key = self.click_payload(user, action_id, value, channel=channel, ts=ts)
        return self.post_signed(self.payload_body(payload), **kwargs), key

    def submit_view(self, user: str, view: dict[str, Any], values: dict[str, dict[str, Any]]) -> httpx.Response:
        payload = {
            "type": "view_submission",
            "team": {"id": TEAM_ID, "domain": "example"},
            "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "deprecated-verification-token",
            "trigger_id": self.trigger_id(),
            "view": {**view, "state": {"values": values}},
        }
        return self.post_signed(self.payload_body(payload))

    def close_view(self, user: str, view: dict[str, Any]) -> httpx.Response:
        """Cancel pressed on a modal that asked to hear of it (``notify_on_close``)."""
        payload = {
            "type": "view_closed",
            "team": {"id": TEAM_ID, "domain": "example"},
            "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "deprecated-verification-token",
            "view": view,
            "is_cleared": False,
        }
        return self.post_signed(self.payload_body(payload))

    def view_action(self, user: str, view: dict[str, Any], action: dict[str, Any]) -> httpx.Response:
        """A block_actions payload from inside a modal (e.g. choosing the resource)."""
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "deprecated-verification-token",
            "container": {"type": "view", "view_id": view["id"]},
            "trigger_id": self.trigger_id(),
            "team": {"id": TEAM_ID, "domain": "example"},
            "view": view,
            "actions": [action],
        }
        return self.post_signed(self.payload_body(payload))
