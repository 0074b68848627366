"""`jit-bot serve` in Socket Mode, end to end: the real process, slack_sdk's websocket client, and Slack's
side played by the Web API stand-in (apps.connections.open) and a websocket server (the envelopes)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from bot.demo.slack_api import SlackStandIn
from bot.slack.ids import ActionId
from bot.slack.messages import help_text
from bot.store.db import make_engine
from bot.store.models import AccessRequest, AuditEvent
from tests.harness import SlackRequests
from tests.processes import ServeProcess, assert_no_traceback, free_port, run_cli, write_policy
from tests.socket_mode_server import SocketModeServer
from tests.testbot import buttons, card_text, cards_posted, dms_to
from tests.world import (
    APPROVER_1,
    APPROVERS_CHANNEL,
    BOT_TOKEN,
    REQUESTER,
    SIGNING_SECRET,
    SLACK_USERS,
    USERGROUPS,
    serve_env,
)

APP_TOKEN = "xapp-1-A0JITBOT01-1234567890-5ocketM0deAppT0kenValue"
SECRETS = (BOT_TOKEN, SIGNING_SECRET, APP_TOKEN)


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
        # No signing secret: Socket Mode serves no /slack/events, so a Socket Mode app needs none.
        env = serve_env(slack, self.database_url, free_port(), SLACK_APP_TOKEN=APP_TOKEN, SLACK_SIGNING_SECRET="")
        self.served = ServeProcess(tmp_path, env)
        self.base_url = self.served.base_url
        self.engine = make_engine(self.database_url)
        # Builds interaction payloads exactly as the HTTP tests do; it never posts them here.
        self.payloads = SlackRequests.for_standin(self.base_url, slack)

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


def _assert_no_secrets(output: str) -> None:
    for secret in SECRETS:
        assert secret not in output


def test_socket_mode_request_approve_and_stop(bot: SocketModeBot, slack: SlackStandIn) -> None:
    health = bot.served.wait_healthy()
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

    request_id, channel, ts = slack.wait_for(lambda: next(iter(cards_posted(slack)), None), timeout=15)
    assert channel == APPROVERS_CHANNEL
    card = slack.message(channel, ts)
    assert "socket test" in card_text(card) and f"<@{REQUESTER}>" in card_text(card)
    assert [b["value"] for b in buttons(card)] == [request_id, request_id]
    submitted = slack.wait_for(lambda: [r for r in slack.responses if r.key == request_key])
    assert request_id in submitted[0].payload["text"]
    assert submitted[0].payload.get("response_type") == "ephemeral"
    # Votes update the card through its stored coordinates; wait until they are stored.
    slack.wait_for(lambda: bot.stored(request_id).card_ts == ts)
    assert bot.stored(request_id).status == "pending"

    click, _click_key = bot.payloads.click_payload(APPROVER_1, ActionId.APPROVE, request_id, channel=channel, ts=ts)
    server.wait_for_ack(server.interactive(click))

    slack.wait_for(lambda: bot.stored(request_id).status == "approved", timeout=15)
    (dm,) = slack.wait_for(lambda: dms_to(slack, REQUESTER))
    assert request_id in dm and "approved" in dm and f"<@{APPROVER_1}>" in dm
    card = slack.wait_for(lambda: (m := slack.message(channel, ts)) and "Approved" in card_text(m) and m)
    assert buttons(card) == [], "a decided card has no buttons"
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
    bot.served.wait_healthy()
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
