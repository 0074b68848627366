"""The demo's workspace without a browser: what its page asks for becomes exactly what Slack sends,
a button is taken from the message (never from the page), and `jit-bot demo` fails in one line.

The browser walk of the whole story is tests/test_demo_browser.py.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.config import load_policy
from bot.demo.run import demo_policy_file
from bot.demo.workspace import Channel, Person, Workspace
from tests.processes import assert_no_traceback, base_env, run_cli
from tests.testbot import Bot, card_text
from tests.world import APPROVER_1, APPROVERS_CHANNEL, AUDIT_CHANNEL, CARD_ID, REQUESTER, SIGNING_SECRET

PEOPLE = [Person(REQUESTER, "Alice", "requester"), Person(APPROVER_1, "Bob", "approver")]
CHANNELS = [Channel(APPROVERS_CHANNEL, "approvers"), Channel(AUDIT_CHANNEL, "audit")]


def workspace_for(bot: Bot, *, signing_secret: str = SIGNING_SECRET) -> Workspace:
    return Workspace(
        standin=bot.slack,
        people=PEOPLE,
        channels=CHANNELS,
        bot_url=bot.served.base_url,
        signing_secret=signing_secret,
    ).attach()


def post(bot: Bot, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{bot.slack.base_url}{path}", json=body, timeout=30)


def state(bot: Bot, person: str) -> dict[str, Any]:
    response = httpx.get(f"{bot.slack.base_url}/workspace/state", params={"person": person}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def decision_block(card: dict[str, Any]) -> str:
    """The id of the card's buttons block as the page names it (Slack makes one up when the bot gave none)."""
    index, block = next((i, b) for i, b in enumerate(card["blocks"]) if b["type"] == "actions")
    return str(block.get("block_id", f"b{index}"))


def command(bot: Bot, text: str) -> httpx.Response:
    return post(bot, "/workspace/command", {"person": REQUESTER, "channel": "D" + REQUESTER[1:], "text": text})


def card_in(bot: Bot) -> tuple[str, dict[str, Any]]:
    def posted() -> tuple[str, dict[str, Any]] | None:
        for item in state(bot, APPROVER_1)["feed"][APPROVERS_CHANNEL]:
            found = CARD_ID.search(card_text(item))
            if found:
                return found.group(1), item
        return None

    request_id, card = bot.eventually(posted)
    # The card's coordinates (and its card_posted event) are stored just after the post.
    bot.eventually(lambda: bot.stored(request_id).card_ts is not None)
    return request_id, card


def test_the_page_acts_as_slack_does_and_shows_what_the_bot_sent(bot: Bot) -> None:
    workspace_for(bot)
    dm = "D" + REQUESTER[1:]
    typed = command(bot, "/jit request prod-db read 30m INC-1")
    assert typed.json() == {"ok": True}
    request_id, card = card_in(bot)
    # The command went out as Slack sends one: typed in the DM, by Alice, with a trigger and response_url.
    assert bot.stored(request_id).requester_slack_id == REQUESTER
    # Alice sees her own command and the bot's answer, only she does.
    mine = state(bot, REQUESTER)["feed"][dm]
    assert mine[0]["typed"] and mine[0]["text"].startswith("/jit request prod-db")
    assert any("was sent to" in (item["text"] or "") and item["ephemeral"] for item in mine)
    assert all(not item.get("typed") for item in state(bot, APPROVER_1)["feed"][APPROVERS_CHANNEL])

    pressed = post(
        bot,
        "/workspace/press",
        {
            "person": APPROVER_1,
            "channel": APPROVERS_CHANNEL,
            "ts": card["ts"],
            "block_id": decision_block(card),
            "action_id": "jit_approve",
        },
    )
    assert pressed.json() == {"ok": True}
    bot.eventually(lambda: bot.stored(request_id).status == "approved")
    assert bot.events(request_id, "vote_cast")[0].actor == APPROVER_1
    bot.eventually(lambda: f"Approved by <@{APPROVER_1}>" in card_text(bot.card(request_id)))
    assert bot.slack.rejected() == []


def test_a_button_the_message_does_not_have_is_refused_and_nothing_is_sent(bot: Bot) -> None:
    workspace_for(bot)
    command(bot, "/jit request prod-db read 30m INC-1")
    request_id, card = card_in(bot)
    before = len(bot.audit(request_id))
    for forged in (
        {"block_id": decision_block(card), "action_id": "jit_revoke"},  # a real action, but not on this card now
        {"block_id": "elsewhere", "action_id": "jit_approve"},
    ):
        body = {"person": APPROVER_1, "channel": APPROVERS_CHANNEL, "ts": card["ts"], **forged}
        answer = post(bot, "/workspace/press", body)
        assert answer.status_code == 400
        assert answer.json()["error"] == "that button is not on the message (any more)"
    stranger = post(bot, "/workspace/press", {"person": "U0MALLORY", "channel": APPROVERS_CHANNEL, "ts": card["ts"]})
    assert stranger.status_code == 400
    assert "no such person" in stranger.json()["error"] or "missing" in stranger.json()["error"]
    assert len(bot.audit(request_id)) == before
    assert bot.stored(request_id).status == "pending"


def test_a_workspace_that_signs_wrongly_is_refused_by_the_bot_and_says_so(bot: Bot) -> None:
    workspace_for(bot, signing_secret="not-the-bots-secret")
    dm = "D" + REQUESTER[1:]
    answer = command(bot, "/jit request prod-db read 30m x")
    assert answer.json() == {"ok": False}
    notes = [item["text"] for item in state(bot, REQUESTER)["feed"][dm] if not item.get("typed")]
    assert notes == ['/jit failed with the error "http_401"']
    assert bot.request_count() == 0


def test_the_demo_policy_is_an_ordinary_valid_policy() -> None:
    policy = load_policy(demo_policy_file())
    assert [r.name for r in policy.resources] == ["prod-db", "billing-api"]
    assert policy.channels.audit is not None


def test_demo_with_its_port_taken_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, "demo", "--port", str(port), "--dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert_no_traceback(result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"jit-bot: the demo's workspace cannot listen on 127.0.0.1:{port} (Address already in use); "
        "pass --port with another one"
    ]


def test_demo_without_node_is_one_line(tmp_path: Path) -> None:
    env = {**base_env(tmp_path), "PATH": str(tmp_path / "no-node-here")}
    result = run_cli(tmp_path, "demo", "--port", "0", "--dir", str(tmp_path / "data"), env=env)
    assert result.returncode == 2
    assert_no_traceback(result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("jit-bot: the dev IdP did not start: 'node' not found on PATH")
    assert "Node.js" in line


@pytest.mark.parametrize("path", ["/", "/workspace.js", "/workspace.css"])
def test_the_page_loads_nothing_from_elsewhere(bot: Bot, path: str) -> None:
    workspace_for(bot)
    response = httpx.get(f"{bot.slack.base_url}{path}", timeout=10)
    assert response.status_code == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert "https://" not in response.text  # no CDN, no fonts, no analytics
