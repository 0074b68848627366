"""`jit-bot serve` in Socket Mode, end to end: the real process, slack_sdk's websocket client, and Slack's
side played by the Web API stand-in (apps.connections.open) and a websocket server (the envelopes)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from bot.slack.messages import help_text
from bot.store.db import make_engine
from bot.store.models import AccessRequest, AuditEvent
from tests.conftest import (
    APPROVER_1,
    APPROVERS_CHANNEL,
    BOT_TOKEN,
    REQUESTER,
    SIGNING_SECRET,
    SLACK_USERS,
    USERGROUPS,
)
from tests.harness import SlackRequests
from tests.slack_standin import SlackStandIn
from tests.socket_mode_server import SocketModeServer
from tests.test_cli import Served, assert_no_traceback, free_port, run_cli, serve_env, write_policy

APP_TOKEN = "xapp-1-A0JITBOT01-1234567890-5ocketM0deAppT0kenValue"
SECRETS = (BOT_TOKEN, SIGNING_SECRET, APP_TOKEN)
APPROVE = "jit_approve"  # bot.slack.ids.ActionId.APPROVE, spelled out as Slack would send it
CARD_ID = re.compile(r"Access request (R[0-9A-Z]{9})")


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    standin = SlackStandIn(BOT_TOKEN, users=SLACK_USERS, usergroups=USERGROUPS, app_token=APP_TOKEN)
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def socket_mode(slack: SlackStandIn) -> Iterator[SocketModeServer]:
    with SocketModeServer() as server:
        slack.socket_url = server.url
        yield server


class SocketModeBot:
    """A `jit-bot serve` process in Socket Mode, with what a test needs around it."""

    def __init__(self, tmp_path: Path, slack: SlackStandIn, socket_mode: SocketModeServer) -> None:
        write_policy(tmp_path)
        self.slack = slack
        self.socket_mode = socket_mode
        self.database_url = f"sqlite:///{tmp_path / 'jit.db'}"
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.served = Served(tmp_path, serve_env(slack, self.database_url, port, SLACK_APP_TOKEN=APP_TOKEN))
        self.engine = make_engine(self.database_url)
        # Builds interaction payloads exactly as the HTTP tests do; it never posts them here.
        self.payloads = SlackRequests(
            base_url=self.base_url,
            signing_secret=SIGNING_SECRET,
            response_url_for=slack.response_url,
            trigger_id=slack.new_trigger_id,
        )

    def close(self) -> None:
        self.payloads.http.close()
        self.served.close()
        self.engine.dispose()

    def slash(self, user: str, text: str) -> tuple[str, str]:
        """Type ``/jit <text>``: returns (envelope id, response_url key)."""
        key = secrets.token_hex(6)
        envelope = self.socket_mode.slash_command(
            user, text, response_url=self.slack.response_url(key), trigger_id=self.slack.new_trigger_id()
        )
        return envelope, key

    def stored(self, request_id: str) -> AccessRequest:
        with Session(self.engine) as session:
            row = session.get(AccessRequest, request_id)
            assert row is not None, f"request {request_id} not in the database"
            return row

    def audit(self, request_id: str) -> list[str]:
        with Session(self.engine) as session:
            query = select(AuditEvent).where(AuditEvent.request_id == request_id).order_by(AuditEvent.seq)
            return [event.event_type for event in session.exec(query).all()]


@pytest.fixture
def bot(tmp_path: Path, slack: SlackStandIn, socket_mode: SocketModeServer) -> Iterator[SocketModeBot]:
    started = SocketModeBot(tmp_path, slack, socket_mode)
    try:
        yield started
    finally:
        started.close()


def _card_posted(slack: SlackStandIn) -> tuple[str, str, str] | None:
    for call in slack.calls_to("chat.postMessage"):
        match = CARD_ID.search(str(call.args.get("text", "")))
        if call.ok and match and call.args.get("blocks") and call.args.get("channel") == APPROVERS_CHANNEL:
            return match.group(1), call.response["channel"], call.response["ts"]
    return None


def _dms_to(slack: SlackStandIn, user: str) -> list[str]:
    return [
        str(c.args.get("text")) for c in slack.calls_to("chat.postMessage") if c.args.get("channel") == user and c.ok
    ]


def _card_text(message: dict[str, Any]) -> str:
    parts = [str(message.get("text") or "")]
    for block in message.get("blocks") or []:
        if isinstance(block.get("text"), dict):
            parts.append(block["text"]["text"])
        parts.extend(field["text"] for field in block.get("fields") or [])
        parts.extend(e["text"] for e in block.get("elements") or [] if isinstance(e.get("text"), str))
    return "\n".join(parts)


def _card_showing(slack: SlackStandIn, channel: str, ts: str, words: str) -> dict[str, Any] | None:
    message = slack.message(channel, ts)
    return message if words in _card_text(message) else None


def _buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in message.get("blocks") or [] if b["type"] == "actions" for e in b["elements"]]


def _assert_no_secrets(output: str) -> None:
    for secret in SECRETS:
        assert secret not in output


def test_socket_mode_request_approve_and_stop(bot: SocketModeBot, slack: SlackStandIn) -> None:
    health = bot.served.wait_healthy(bot.base_url)
    assert health.json() == {"status": "ok", "database": "ok"}
    server = bot.socket_mode
    server.wait_connected()
    # The bot checked its bot token, then asked for a websocket URL with the app-level token.
    assert [(c.method, c.ok) for c in slack.calls[:2]] == [("auth.test", True), ("apps.connections.open", True)]

    # Slack never posts to us in Socket Mode, so the HTTP endpoint is not there, signed request or not.
    response, _key, _trigger = bot.payloads.slash(REQUESTER, "help")
    assert response.status_code == 404, response.text
    assert "jit-bot" not in response.text

    help_envelope, help_key = bot.slash(REQUESTER, "help")
    ack = server.wait_for_ack(help_envelope)
    assert ack.payload == {"text": help_text(), "response_type": "ephemeral"}

    request_envelope, request_key = bot.slash(REQUESTER, "request prod-db read 30m socket test")
    # Acked at once; the card and the confirmation follow from a worker thread.
    server.wait_for_ack(request_envelope)

    request_id, channel, ts = slack.wait_for(lambda: _card_posted(slack), timeout=15)
    assert channel == APPROVERS_CHANNEL
    card = slack.message(channel, ts)
    assert "socket test" in _card_text(card) and f"<@{REQUESTER}>" in _card_text(card)
    assert [b["value"] for b in _buttons(card)] == [request_id, request_id]
    submitted = slack.wait_for(lambda: [r for r in slack.responses if r.key == request_key])
    assert request_id in submitted[0].payload["text"]
    assert submitted[0].payload.get("response_type") == "ephemeral"
    # Votes update the card through its stored coordinates; wait until they are stored.
    slack.wait_for(lambda: bot.stored(request_id).card_ts == ts)
    assert bot.stored(request_id).status == "pending"

    click, _click_key = bot.payloads.click_payload(APPROVER_1, APPROVE, request_id, channel=channel, ts=ts)
    server.wait_for_ack(server.interactive(click))

    slack.wait_for(lambda: bot.stored(request_id).status == "approved", timeout=15)
    (dm,) = slack.wait_for(lambda: _dms_to(slack, REQUESTER))
    assert request_id in dm and "approved" in dm and f"<@{APPROVER_1}>" in dm
    card = slack.wait_for(lambda: _card_showing(slack, channel, ts, "Approved"))
    assert _buttons(card) == [], "a decided card has no buttons"
    assert bot.stored(request_id).decided_by == APPROVER_1
    assert bot.audit(request_id) == ["request_submitted", "card_posted", "vote_cast", "request_approved"]

    assert slack.rejected() == []
    assert server.unexpected == [], "the bot sent something that is not an envelope ack"
    assert server.refused == []
    assert server.connects == 1
    assert len(slack.calls_to("apps.connections.open")) == 1

    code = bot.served.terminate(timeout=15)
    output = bot.served.output()
    assert code == 0, output
    assert "Socket Mode connected" in output, output
    assert "Finished server process" in output, output
    # The bot let go of its websocket on the way out.
    slack.wait_for(lambda: server.open_connections == 0, timeout=10)
    assert_no_traceback(output)
    _assert_no_secrets(output)
    assert server.ticket not in output, "the websocket URL grants access to the app's events"
    # The help answer came in the ack; nothing went to its response_url.
    assert [r for r in slack.responses if r.key == help_key] == []


def test_socket_mode_reconnects_when_slack_refreshes_the_connection(bot: SocketModeBot, slack: SlackStandIn) -> None:
    bot.served.wait_healthy(bot.base_url)
    server = bot.socket_mode
    server.wait_connected()

    # Slack retires connections every few hours and warns first; the bot must open a new one.
    server.refresh()
    server.wait_connected(2)
    assert [c.ok for c in slack.calls_to("apps.connections.open")] == [True, True]

    envelope, _key = bot.slash(REQUESTER, "help")
    assert server.wait_for_ack(envelope).payload == {"text": help_text(), "response_type": "ephemeral"}
    slack.wait_for(lambda: server.open_connections == 1, timeout=10)

    code = bot.served.terminate(timeout=15)
    output = bot.served.output()
    assert code == 0, output
    assert_no_traceback(output)
    _assert_no_secrets(output)


def test_serve_with_a_refused_app_token_names_it(tmp_path: Path, slack: SlackStandIn) -> None:
    refused = "xapp-1-A0JITBOT01-9999999999-revokedAppToken"
    slack.socket_url = "ws://127.0.0.1:9/link/"  # never reached
    write_policy(tmp_path)
    env = serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port(), SLACK_APP_TOKEN=refused)

    result = run_cli(tmp_path, "serve", env=env)

    assert [(c.method, c.error) for c in slack.calls] == [
        ("auth.test", None),
        ("apps.connections.open", "invalid_auth"),
    ]
    for output in (result.stdout, result.stderr):
        assert refused not in output
        _assert_no_secrets(output)
    assert_no_traceback(result.stderr)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == "jit-bot: SLACK_APP_TOKEN was refused by Slack: invalid_auth"
