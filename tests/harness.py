"""Serving the real app on loopback and talking to it the way Slack does."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn

from bot.runtime import Runtime
from bot.slack.ids import ActionId
from tests.signing import signed_headers
from tests.slack_standin import APP_ID, TEAM_ID, SlackStandIn, slash_command_fields  # the workspace it plays
from tests.world import SIGNING_SECRET

__all__ = ["APP_ID", "TEAM_ID", "ServedApp", "SlackRequests", "free_socket"]


def free_socket() -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP, and
    # without it Nagle's algorithm adds ~40 ms to each request on a kept-alive connection.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class ServedApp:
    """uvicorn on a pre-bound loopback socket, in a thread, as `jit-bot serve` would run it."""

    def __init__(self, runtime: Runtime, sock: socket.socket) -> None:
        self.runtime = runtime
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(runtime.web_app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)

    def start(self) -> ServedApp:
        self.runtime.connect_slack()
        self.runtime.start_background()
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the app did not start serving")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.runtime.close()


@dataclass
class SlackRequests:
    """Builds and signs slash commands and interaction payloads, and posts them to the app."""

    base_url: str
    signing_secret: str
    response_url_for: Any  # the stand-in's response_url(key, channel=, ts=)
    trigger_id: Any  # the stand-in's new_trigger_id()
    # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout: a request sent on a
    # connection the server is closing at that moment is reset (seen once in a benchmark's minting).
    http: httpx.Client = field(
        default_factory=lambda: httpx.Client(timeout=30, limits=httpx.Limits(keepalive_expiry=2.0))
    )

    @classmethod
    def for_standin(cls, base_url: str, slack: SlackStandIn, *, http: httpx.Client | None = None) -> SlackRequests:
        """Requests to the app at ``base_url`` from the workspace ``slack`` plays, signed with the test secret."""
        extra = {} if http is None else {"http": http}
        return cls(
            base_url=base_url,
            signing_secret=SIGNING_SECRET,
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
        self, user: str, action_id: ActionId, value: str, *, channel: str, ts: str
    ) -> tuple[dict[str, Any], str]:
        key = secrets.token_hex(6)
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "deprecated-verification-token",
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            "trigger_id": self.trigger_id(),
            "team": {"id": TEAM_ID, "domain": "example"},
            "channel": {"id": channel, "name": "approvers"},
            "message": {"type": "message", "ts": ts, "text": "card"},
            "response_url": self.response_url_for(key, channel=channel, ts=ts),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "actions",
                    "text": {"type": "plain_text", "text": action_id},
                    "value": value,
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        return payload, key

    def click(
        self, user: str, action_id: ActionId, value: str, *, channel: str, ts: str, **kwargs: Any
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
