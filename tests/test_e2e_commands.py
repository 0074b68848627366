"""Slash commands over HTTP: signatures, bad input, help, the request modal."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from bot.demo.signing import slack_signature
from bot.slack.forms import RequestForm
from bot.slack.ids import ActionId
from tests.testbot import Bot, opened_views, request_form
from tests.world import APPROVER_1, APPROVERS_CHANNEL, AUDIT_CHANNEL, OUTSIDER, REQUESTER, SIGNING_SECRET, UNMAPPED


def _nothing_recorded(bot: Bot) -> None:
    assert bot.request_count() == 0
    assert bot.audit() == []
    assert [c.method for c in bot.slack.calls if c.method != "auth.test"] == []


# --- signatures ----------------------------------------------------------------------------------


def _approve_body(bot: Bot) -> str:
    return bot.click_body(APPROVER_1, ActionId.APPROVE, "RAAAAAAAAA", channel=APPROVERS_CHANNEL, ts="1.000001")


@pytest.mark.parametrize("kind", ["command", "click"])
def test_forged_missing_and_stale_signatures_get_401(bot: Bot, kind: str) -> None:
    body = (
        bot.send.command_body(REQUESTER, "request prod-db read 30m x")[0] if kind == "command" else _approve_body(bot)
    )
    now = int(time.time())

    forged = bot.send.post_signed(body, signature=slack_signature("not-the-secret", str(now), body))
    assert forged.status_code == 401

    missing = bot.send.http.post(
        f"{bot.served.base_url}/slack/events",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert missing.status_code == 401

    stale = bot.send.post_signed(body, timestamp=now - 5 * 60 - 10)
    assert stale.status_code == 401

    # A signature over a different body (tampered text) is also refused.
    tampered = body.replace("30m", "2h") if kind == "command" else body.replace("RAAAAAAAAA", "RBBBBBBBBB")
    ts = str(now)
    response = bot.send.http.post(
        f"{bot.served.base_url}/slack/events",
        content=tampered,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": slack_signature(SIGNING_SECRET, ts, body),
        },
    )
    assert response.status_code == 401

    time.sleep(0.3)  # give any (wrongly) accepted work the chance to show up
    _nothing_recorded(bot)


def test_correct_signature_is_accepted(bot: Bot) -> None:
    response, _, _ = bot.send.slash(REQUESTER, "help")
    assert response.status_code == 200
    assert "/jit request" in response.json()["text"]


# --- bad input -----------------------------------------------------------------------------------

BAD_COMMANDS = [
    ("frobnicate", ["Unknown command `frobnicate`"]),
    ("request nosuch read 30m why", ["Unknown resource `nosuch`", "`prod-db`"]),
    ("request prod-db admin 30m why", ["does not offer scope `admin`", "`read`, `write`"]),
    ("request prod-db read forever why", ["'forever' is not a duration", "maximum for `prod-db` is 2h"]),
    ("request prod-db read 3h why", ["`3h` is longer than the maximum for `prod-db`: 2h"]),
    ("request prod-db read 30m", ["A reason is required"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD_COMMANDS, ids=[b[0] for b in BAD_COMMANDS])
def test_bad_input_gets_a_specific_ephemeral_message_and_records_nothing(
    bot: Bot, text: str, expected: list[str]
) -> None:
    response, _, _ = bot.send.slash(REQUESTER, text)
    assert response.status_code == 200
    answer = response.json()
    # A slash command's direct answer is ephemeral unless it says in_channel.
    assert answer["response_type"] == "ephemeral"
    for words in expected:
        assert words in answer["text"]
    time.sleep(0.3)
    _nothing_recorded(bot)


def test_unmapped_requester_is_told_and_nothing_is_recorded(bot: Bot) -> None:
    _, key, _ = bot.send.slash(UNMAPPED, "request prod-db read 30m checking")
    (reply,) = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "not mapped to an identity" in reply.payload["text"]
    assert reply.payload["response_type"] == "ephemeral"
    assert bot.request_count() == 0 and bot.audit() == []
    assert bot.slack.calls_to("chat.postMessage") == []


def test_help_and_resources(bot: Bot) -> None:
    help_answer = bot.send.slash(OUTSIDER, "help")[0].json()["text"]
    assert "`/jit request &lt;resource&gt; &lt;scopes&gt; &lt;duration&gt; &lt;reason…&gt;`" in help_answer
    resources = bot.send.slash(OUTSIDER, "resources")[0].json()["text"]
    for expected in ("`prod-db`", "Production Postgres", "`read`, `write`", "max 2h", "`billing`", "max 1h", "max 30m"):
        assert expected in resources


def test_reason_cannot_ping_the_channel_link_or_format(bot: Bot) -> None:
    typed = "<!channel> see <https://evil|docs> *urgent* `x` ~y~ :lock: Revoked"
    request_id, channel, ts = bot.request(REQUESTER, f"request prod-db read 30m {typed}")
    card = bot.slack.message(channel, ts)
    flat = json.dumps(card["blocks"])
    assert "<!channel>" not in flat and "&lt;!channel&gt;" in flat
    assert "<https://evil" not in flat
    # Plain text, so no bold, code, strike or emoji either; Slack's three reserved characters escaped.
    shown = "&lt;!channel&gt; see &lt;https://evil|docs&gt; *urgent* `x` ~y~ :lock: Revoked"
    (reason,) = [b for b in card["blocks"] if b["type"] == "section" and b.get("text", {}).get("text") == shown]
    assert reason["text"] == {"type": "plain_text", "text": shown, "emoji": False}
    assert bot.stored(request_id).reason == typed


def test_card_that_cannot_be_posted_cancels_the_request(bot: Bot) -> None:
    bot.slack.remove_bot_from(APPROVERS_CHANNEL)
    _, key, _ = bot.send.slash(REQUESTER, "request prod-db read 30m checking")
    (reply,) = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "for approval" in reply.payload["text"]
    # The card could never be posted, so the request is cancelled and the requester told the true reason.
    told = bot.slack.wait_for(
        lambda: [
            c.args["text"]
            for c in bot.slack.calls_to("chat.postMessage")
            if c.ok and c.args.get("channel") == REQUESTER and "cancelled" in c.args["text"]
        ]
    )
    assert len(told) == 1
    assert "could not be posted" in told[0] and "not_in_channel" in told[0] and "invite the bot" in told[0]
    bot.slack.wait_for(lambda: len(bot.audit()) >= 2)
    time.sleep(0.2)  # anything more would be a bug; give it the chance to show
    assert [e.event_type for e in bot.audit()] == ["request_submitted", "request_cancelled"]
    (event,) = [e for e in bot.audit() if e.event_type == "request_cancelled"]
    assert event.details["slack_error"] == "not_in_channel"
    assert bot.stored(str(event.request_id)).status == "cancelled"
    # The audit channel hears of the ending once, with the same reason.
    ended = bot.slack.wait_for(lambda: bot.posts_to(AUDIT_CHANNEL, f"[cancelled] `{event.request_id}`"))
    assert len(ended) == 1
    assert "the approval card could not be posted (Slack said `not_in_channel`)" in ended[0]


# --- the modal -----------------------------------------------------------------------------------


def test_request_modal_behaves_like_the_typed_command(bot: Bot) -> None:
    _, key, _ = bot.send.slash(REQUESTER, "request")
    (view,) = bot.slack.wait_for(lambda: opened_views(bot.slack))
    assert view["callback_id"] == RequestForm.CALLBACK_ID
    assert [b["block_id"] for b in view["blocks"]] == [RequestForm.BlockId.RESOURCE, RequestForm.BlockId.REASON]

    # Choosing a resource rebuilds the form with that resource's scopes and durations.
    choose = {
        "type": "static_select",
        "action_id": RequestForm.ActionId.RESOURCE,
        "block_id": RequestForm.BlockId.RESOURCE,
        "selected_option": {"text": {"type": "plain_text", "text": "prod-db"}, "value": "prod-db"},
        "action_ts": "1.1",
    }
    assert bot.send.view_action(REQUESTER, view, choose).status_code == 200
    updated = bot.slack.wait_for(lambda: [c.response["view"] for c in bot.slack.calls_to("views.update") if c.ok])[0]
    blocks = {b["block_id"]: b for b in updated["blocks"]}
    scopes, duration = f"{RequestForm.BlockId.SCOPES}:prod-db", f"{RequestForm.BlockId.DURATION}:prod-db"
    assert set(blocks) == {RequestForm.BlockId.RESOURCE, scopes, duration, RequestForm.BlockId.REASON}
    assert [o["value"] for o in blocks[scopes]["element"]["options"]] == ["read", "write"]
    durations = [o["value"] for o in blocks[duration]["element"]["options"]]
    assert durations[-1] == "2h" and "4h" not in durations

    def values(chosen_scopes: list[str], chosen_duration: str, reason: str) -> dict[str, Any]:
        return request_form("prod-db", chosen_scopes, chosen_duration, reason)

    # The form is checked like the command: errors land on the right field and nothing is stored.
    bad = bot.send.submit_view(REQUESTER, updated, values(["read"], "30m", "   "))
    assert bad.json() == {
        "response_action": "errors",
        "errors": {RequestForm.BlockId.REASON: bad.json()["errors"][RequestForm.BlockId.REASON]},
    }
    assert "reason is required" in bad.json()["errors"][RequestForm.BlockId.REASON]
    forged_scope = bot.send.submit_view(REQUESTER, updated, values(["admin"], "30m", "x"))
    assert "does not offer scope `admin`" in forged_scope.json()["errors"][scopes]
    too_long = bot.send.submit_view(REQUESTER, updated, values(["read"], "4h", "x"))
    assert "longer than the maximum" in too_long.json()["errors"][duration]
    time.sleep(0.3)
    assert bot.request_count() == 0

    ok = bot.send.submit_view(REQUESTER, updated, values(["read", "write"], "1h", "checking INC-1234"))
    assert ok.status_code == 200 and ok.text in ("", "null")
    card = bot.slack.wait_for(
        lambda: [c for c in bot.slack.calls_to("chat.postMessage") if c.args.get("channel") == APPROVERS_CHANNEL]
    )[0]
    assert "checking INC-1234" in json.dumps(card.args["blocks"])
    # The confirmation goes back where the command was typed, through the original response_url.
    confirmation = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "was sent to" in confirmation[0].payload["text"]
    (row_id,) = [e.request_id for e in bot.audit() if e.event_type == "request_submitted"]
    row = bot.stored(str(row_id))
    assert (row.resource, row.scopes, row.duration_seconds, row.reason) == (
        "prod-db",
        "read write",
        3600,
        "checking INC-1234",
    )


def test_partial_command_prefills_the_modal(bot: Bot) -> None:
    bot.send.slash(REQUESTER, "request k8s")
    (view,) = bot.slack.wait_for(lambda: opened_views(bot.slack))
    blocks = {b["block_id"]: b for b in view["blocks"]}
    assert blocks[RequestForm.BlockId.RESOURCE]["element"]["initial_option"]["value"] == "k8s"
    assert [o["value"] for o in blocks[f"{RequestForm.BlockId.DURATION}:k8s"]["element"]["options"]][-1] == "30m"


def test_unmapped_requester_gets_no_modal(bot: Bot) -> None:
    _, key, _ = bot.send.slash(UNMAPPED, "request")
    (reply,) = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "not mapped" in reply.payload["text"]
    assert bot.slack.calls_to("views.open") == []
