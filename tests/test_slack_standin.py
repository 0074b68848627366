"""The Slack stand-in, driven by the real slack_sdk clients over HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from bot.demo.slack_api import BOT_USER_ID, SlackStandIn
from bot.slack.ids import ActionId

# slack_sdk warns when blocks come without fallback text; some tests do that on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")

TOKEN = "xoxb-0000-standin-test"
USERS = {
    "U0ALICE01": {"email": "alice@example.com", "real_name": "Alice A"},
    "U0BOB0001": {"profile": {"email": "bob@example.com"}, "tz": "Europe/Oslo"},
}
GROUPS = {"S0APPROVE1": ["U0ALICE01", "U0BOB0001"]}


@pytest.fixture(scope="module")
def server() -> Iterator[SlackStandIn]:
    with SlackStandIn(TOKEN, users=USERS, usergroups=GROUPS) as standin:
        yield standin


@pytest.fixture
def slack(server: SlackStandIn) -> SlackStandIn:
    server.reset()
    return server


@pytest.fixture
def client(slack: SlackStandIn) -> WebClient:
    return WebClient(token=TOKEN, base_url=slack.api_url)


@pytest.fixture
def bare(slack: SlackStandIn) -> WebClient:
    """A client that never retries, so each fault reaches the test as the bot would first see it."""
    return WebClient(token=TOKEN, base_url=slack.api_url, retry_handlers=[])


# -- Block Kit builders, valid by default -------------------------------------------------------


def plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def section(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"type": "section", "text": mrkdwn(text), **extra}


def button(text: str = "Approve", action_id: str = ActionId.APPROVE, **extra: Any) -> dict[str, Any]:
    return {"type": "button", "text": plain(text), "action_id": action_id, **extra}


def actions(*elements: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "actions", "elements": list(elements), **extra}


def option(text: str = "one", value: str = "1") -> dict[str, Any]:
    return {"text": plain(text), "value": value}


def select(*options: dict[str, Any], action_id: str = "pick") -> dict[str, Any]:
    return {
        "type": "static_select",
        "action_id": action_id,
        "placeholder": plain("Pick"),
        "options": list(options),
    }


def text_input(label: Any = None, **extra: Any) -> dict[str, Any]:
    block = {"type": "input", "block_id": "reason", "element": {"type": "plain_text_input", "action_id": "r"}}
    return {**block, "label": plain("Reason") if label is None else label, **extra}


def modal(*blocks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "modal", "title": plain("Request access"), "blocks": list(blocks), **extra}


def buttons(n: int) -> list[dict[str, Any]]:
    return [button(f"b{i}", f"a{i}") for i in range(n)]


def opts(n: int) -> list[dict[str, Any]]:
    return [option(f"o{i}", str(i)) for i in range(n)]


def msg(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"channel": "C0REQUESTS", "text": "fallback", "blocks": list(blocks)}


# Each row: (rule, method, expected error, json-pointer in the refusal, bad kwargs, good kwargs).
# The good payload differs from the bad one only in the rule under test, so the row proves the
# limit is exactly where Slack puts it.
RULES = [
    ("channel name is not an id", "chat_postMessage", "channel_not_found", None,
     {"channel": "#requests", "text": "hi"},
     {"channel": "C0REQUESTS", "text": "hi"}),
    ("lowercase channel id", "chat_postMessage", "channel_not_found", None,
     {"channel": "c0requests", "text": "hi"},
     {"channel": "G0PRIVATE", "text": "hi"}),
    ("text or blocks required", "chat_postMessage", "no_text", None,
     {"channel": "C0REQUESTS"},
     {"channel": "C0REQUESTS", "blocks": [section()]}),
    ("message text <= 40000", "chat_postMessage", "msg_too_long", None,
     {"channel": "C0REQUESTS", "text": "x" * 40001},
     {"channel": "C0REQUESTS", "text": "x" * 40000}),
    ("<= 50 blocks in a message", "chat_postMessage", "invalid_blocks", "/blocks",
     msg(*[section()] * 51),
     msg(*[section()] * 50)),
    ("unknown block type", "chat_postMessage", "invalid_blocks", "/blocks/0/type",
     msg({"type": "sektion", "text": mrkdwn("x")}),
     msg(section("x"))),
    ("section text <= 3000", "chat_postMessage", "invalid_blocks", "/blocks/0/text/text",
     msg(section("x" * 3001)),
     msg(section("x" * 3000))),
    ("section needs text or fields", "chat_postMessage", "invalid_blocks", "/blocks/0",
     msg({"type": "section"}),
     msg({"type": "section", "fields": [mrkdwn("a")]})),
    ("section fields <= 10", "chat_postMessage", "invalid_blocks", "/blocks/0/fields",
     msg({"type": "section", "fields": [mrkdwn("f")] * 11}),
     msg({"type": "section", "fields": [mrkdwn("f")] * 10})),
    ("section field <= 2000", "chat_postMessage", "invalid_blocks", "/blocks/0/fields/0/text",
     msg({"type": "section", "fields": [mrkdwn("f" * 2001)]}),
     msg({"type": "section", "fields": [mrkdwn("f" * 2000)]})),
    ("header text <= 150", "chat_postMessage", "invalid_blocks", "/blocks/0/text/text",
     msg({"type": "header", "text": plain("h" * 151)}),
     msg({"type": "header", "text": plain("h" * 150)})),
    ("header text is plain_text", "chat_postMessage", "invalid_blocks", "/blocks/0/text/type",
     msg({"type": "header", "text": mrkdwn("h")}),
     msg({"type": "header", "text": plain("h")})),
    ("text objects are plain_text or mrkdwn", "chat_postMessage", "invalid_blocks", "/blocks/0/text/type",
     msg({"type": "section", "text": {"type": "markdown", "text": "x"}}),
     msg(section("x"))),
    ("text objects are not empty", "chat_postMessage", "invalid_blocks", "/blocks/0/text/text",
     msg(section("")),
     msg(section("x"))),
    ("button text <= 75", "chat_postMessage", "invalid_blocks", "/blocks/0/elements/0/text/text",
     msg(actions(button("b" * 76))),
     msg(actions(button("b" * 75)))),
    ("button text is plain_text", "chat_postMessage", "invalid_blocks", "/blocks/0/elements/0/text/type",
     msg(actions({**button(), "text": mrkdwn("*Go*")})),
     msg(actions(button()))),
    ("button value <= 2000", "chat_postMessage", "invalid_blocks", "/blocks/0/elements/0/value",
     msg(actions(button(value="v" * 2001))),
     msg(actions(button(value="v" * 2000)))),
    ("action_id <= 255", "chat_postMessage", "invalid_blocks", "/blocks/0/elements/0/action_id",
     msg(actions(button(action_id="a" * 256))),
     msg(actions(button(action_id="a" * 255)))),
    ("block_id <= 255", "chat_postMessage", "invalid_blocks", "/blocks/0/block_id",
     msg(section(block_id="b" * 256)),
     msg(section(block_id="b" * 255))),
    ("action_id unique in a message", "chat_postMessage", "invalid_blocks", "/blocks/1/elements/0/action_id",
     msg(actions(button("a", "same")), actions(button("b", "same"))),
     msg(actions(button("a", "one")), actions(button("b", "two")))),
    ("block_id unique in a message", "chat_postMessage", "invalid_blocks", "/blocks/1/block_id",
     msg(section(block_id="same"), section(block_id="same")),
     msg(section(block_id="one"), section(block_id="two"))),
    ("actions elements <= 25", "chat_postMessage", "invalid_blocks", "/blocks/0/elements",
     msg(actions(*buttons(26))),
     msg(actions(*buttons(25)))),
    ("context elements <= 10", "chat_postMessage", "invalid_blocks", "/blocks/0/elements",
     msg({"type": "context", "elements": [mrkdwn("c")] * 11}),
     msg({"type": "context", "elements": [mrkdwn("c")] * 10})),
    ("select options <= 100", "chat_postMessage", "invalid_blocks", "/blocks/0/elements/0/options",
     msg(actions(select(*opts(101)))),
     msg(actions(select(*opts(100))))),
    ("option text <= 75", "chat_postMessage", "invalid_blocks", "/blocks/0/elements/0/options/0/text/text",
     msg(actions(select(option("o" * 76)))),
     msg(actions(select(option("o" * 75))))),
    ("option value <= 150", "chat_postMessage", "invalid_blocks", "/blocks/0/elements/0/options/0/value",
     msg(actions(select(option(value="v" * 151)))),
     msg(actions(select(option(value="v" * 150))))),
    ("select option text is plain_text", "chat_postMessage", "invalid_blocks",
     "/blocks/0/elements/0/options/0/text/type",
     msg(actions(select({"text": mrkdwn("o"), "value": "1"}))),
     msg(actions(select(option())))),
    ("<= 100 blocks in a modal", "views_open", "invalid_arguments", "/view/blocks",
     modal(*[section()] * 101),
     modal(*[section()] * 100)),
    ("modal blocks are checked too", "views_open", "invalid_arguments", "/view/blocks/0/text/text",
     modal(section("x" * 3001)),
     modal(section("x" * 3000))),
    ("view type is modal", "views_open", "invalid_arguments", "/view/type",
     {**modal(), "type": "dialog"},
     modal()),
    ("modal title <= 24", "views_open", "invalid_arguments", "/view/title/text",
     {**modal(), "title": plain("t" * 25)},
     {**modal(), "title": plain("t" * 24)}),
    ("modal title is plain_text", "views_open", "invalid_arguments", "/view/title/type",
     {**modal(), "title": mrkdwn("t")},
     modal()),
    ("modal submit <= 24", "views_open", "invalid_arguments", "/view/submit/text",
     modal(submit=plain("s" * 25)),
     modal(submit=plain("s" * 24))),
    ("modal close <= 24", "views_open", "invalid_arguments", "/view/close/text",
     modal(close=plain("c" * 25)),
     modal(close=plain("c" * 24))),
    ("callback_id <= 255", "views_open", "invalid_arguments", "/view/callback_id",
     modal(callback_id="c" * 256),
     modal(callback_id="c" * 255)),
    ("private_metadata <= 3000", "views_open", "invalid_arguments", "/view/private_metadata",
     modal(private_metadata="p" * 3001),
     modal(private_metadata="p" * 3000)),
    ("modal with inputs needs submit", "views_open", "invalid_arguments", "/view/submit",
     modal(text_input()),
     modal(text_input(), submit=plain("Request"))),
    ("input needs a label", "views_open", "invalid_arguments", "/view/blocks/0/label",
     modal({"type": "input", "element": {"type": "plain_text_input"}}, submit=plain("Go")),
     modal(text_input(), submit=plain("Go"))),
    ("input needs an element", "views_open", "invalid_arguments", "/view/blocks/0/element",
     modal({"type": "input", "label": plain("Reason")}, submit=plain("Go")),
     modal(text_input(), submit=plain("Go"))),
    ("input label is plain_text", "views_open", "invalid_arguments", "/view/blocks/0/label/type",
     modal(text_input(mrkdwn("Reason")), submit=plain("Go")),
     modal(text_input(), submit=plain("Go"))),
    ("action_id unique in a modal", "views_open", "invalid_arguments", "/view/blocks/1/accessory/action_id",
     modal(actions(button("a", "same")), section("x", accessory=button("b", "same"))),
     modal(actions(button("a", "one")), section("x", accessory=button("b", "two")))),
]  # fmt: skip


def _call(slack: SlackStandIn, client: WebClient, method: str, kwargs: dict[str, Any]) -> Any:
    if method == "views_open":
        return client.views_open(trigger_id=slack.new_trigger_id(), view=kwargs)
    return client.chat_postMessage(**kwargs)


@pytest.mark.parametrize(("rule", "method", "error", "pointer", "bad", "good"), RULES, ids=[r[0] for r in RULES])
def test_validation_rule(
    slack: SlackStandIn,
    client: WebClient,
    rule: str,
    method: str,
    bad: dict[str, Any],
    good: dict[str, Any],
    error: str,
    pointer: str | None,
) -> None:
    with pytest.raises(SlackApiError) as refused:
        _call(slack, client, method, bad)
    assert refused.value.response["error"] == error, rule
    [rejection] = slack.rejected()
    assert (rejection.ok, rejection.error, rejection.kind) == (False, error, "rejected")
    if pointer is not None:
        messages = refused.value.response["response_metadata"]["messages"]
        assert any(m.endswith(f"[json-pointer:{pointer}]") for m in messages), messages

    slack.reset()
    assert _call(slack, client, method, good)["ok"] is True
    assert slack.rejected() == []
    assert len(slack.messages("C0REQUESTS") if method == "chat_postMessage" else slack.views()) <= 1


# -- messages ----------------------------------------------------------------------------------


def test_post_and_update_keep_history(slack: SlackStandIn, client: WebClient) -> None:
    first = client.chat_postMessage(channel="C0REQUESTS", text="pending", blocks=[section("*pending*")])
    second = client.chat_postMessage(channel="C0REQUESTS", text="another")
    assert first["channel"] == "C0REQUESTS"
    assert first["ts"] != second["ts"]

    updated = client.chat_update(channel="C0REQUESTS", ts=first["ts"], text="approved", blocks=[section("*approved*")])
    assert updated["ts"] == first["ts"]

    current = slack.message("C0REQUESTS", first["ts"])
    assert current["text"] == "approved"
    assert current["blocks"] == [section("*approved*")]
    assert current["history"] == [{"text": "pending", "blocks": [section("*pending*")]}]
    assert [m["text"] for m in slack.messages("C0REQUESTS")] == ["approved", "another"]
    assert [c.method for c in slack.calls] == ["chat.postMessage", "chat.postMessage", "chat.update"]
    assert slack.calls_to("chat.update")[0].args["blocks"] == [section("*approved*")]
    assert slack.rejected() == []


def test_update_keeps_omitted_blocks_and_empty_list_removes_them(slack: SlackStandIn, client: WebClient) -> None:
    ts = client.chat_postMessage(channel="C0REQUESTS", text="t", blocks=[section()])["ts"]
    client.chat_update(channel="C0REQUESTS", ts=ts, text="text only")
    assert slack.message("C0REQUESTS", ts)["blocks"] == [section()]
    client.chat_update(channel="C0REQUESTS", ts=ts, text="no blocks", blocks=[])
    assert slack.message("C0REQUESTS", ts)["blocks"] == []


def test_update_must_name_an_earlier_message_in_that_channel(slack: SlackStandIn, client: WebClient) -> None:
    ts = client.chat_postMessage(channel="C0REQUESTS", text="t")["ts"]
    for channel, bad_ts in [("C0OTHER", ts), ("C0REQUESTS", "1.000001")]:
        with pytest.raises(SlackApiError) as refused:
            client.chat_update(channel=channel, ts=bad_ts, text="x")
        assert refused.value.response["error"] == "message_not_found"
    with pytest.raises(SlackApiError) as refused:
        client.chat_update(channel="C0REQUESTS", ts=ts, blocks=[section("x" * 3001)])
    assert refused.value.response["error"] == "invalid_blocks"
    assert slack.message("C0REQUESTS", ts)["text"] == "t"
    assert [c.error for c in slack.rejected()] == ["message_not_found", "message_not_found", "invalid_blocks"]


def test_dm_by_user_id_lands_in_dm_channel(slack: SlackStandIn, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="U0ALICE01", text="your access was approved")
    opened = client.conversations_open(users="U0ALICE01")
    assert posted["channel"] == opened["channel"]["id"]
    assert posted["channel"].startswith("D")
    assert [m["text"] for m in slack.messages("U0ALICE01")] == ["your access was approved"]
    assert slack.messages(posted["channel"]) == slack.messages("U0ALICE01")
    # chat.update wants the DM id, as Slack documents.
    client.chat_update(channel=posted["channel"], ts=posted["ts"], text="expired")
    with pytest.raises(SlackApiError) as refused:
        client.chat_update(channel="U0ALICE01", ts=posted["ts"], text="expired")
    assert refused.value.response["error"] == "channel_not_found"


def test_dm_to_unknown_user_is_not_found_not_rejected(slack: SlackStandIn, client: WebClient) -> None:
    with pytest.raises(SlackApiError) as refused:
        client.chat_postMessage(channel="U0NOBODY1", text="hi")
    assert refused.value.response["error"] == "channel_not_found"
    assert slack.rejected() == []
    assert slack.calls[0].kind == "not_found"


def test_post_ephemeral(slack: SlackStandIn, client: WebClient) -> None:
    result = client.chat_postEphemeral(channel="C0REQUESTS", user="U0BOB0001", text="only you can see this")
    assert result["message_ts"]
    assert slack.ephemerals("C0REQUESTS") == [
        {"channel": "C0REQUESTS", "user": "U0BOB0001", "ts": result["message_ts"],
         "text": "only you can see this", "blocks": None}
    ]  # fmt: skip
    assert slack.messages("C0REQUESTS") == []
    with pytest.raises(SlackApiError):
        client.chat_postEphemeral(channel="C0REQUESTS", user="U0BOB0001", blocks=[section("")])
    assert [c.error for c in slack.rejected()] == ["invalid_blocks"]


def test_form_encoded_and_query_string_arguments(slack: SlackStandIn, client: WebClient) -> None:
    # Form body, blocks as a JSON string: what slack_sdk sends for "params" methods.
    form = client.api_call(
        "chat.postMessage",
        params={"channel": "C0REQUESTS", "text": "form", "blocks": json.dumps([section("f")])},
    )
    assert slack.message("C0REQUESTS", form["ts"])["blocks"] == [section("f")]
    # GET with a query string, as other clients (and curl) do.
    request = urllib.request.Request(
        f"{slack.api_url}users.info?user=U0ALICE01", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert json.loads(reply.read())["user"]["profile"]["email"] == "alice@example.com"
    # Form blocks that are not JSON are refused, not silently dropped.
    with pytest.raises(SlackApiError) as refused:
        client.api_call("chat.postMessage", params={"channel": "C0REQUESTS", "blocks": "[{not json"})
    assert refused.value.response["error"] == "invalid_blocks_format"


# -- auth and methods ----------------------------------------------------------------------------


def test_auth_test_identifies_the_bot(client: WebClient) -> None:
    result = client.auth_test()
    assert result["user_id"].startswith("U")
    assert result["bot_id"].startswith("B")
    assert result["team_id"].startswith("T")


def test_bad_token_is_invalid_auth(slack: SlackStandIn) -> None:
    wrong = WebClient(token="xoxb-wrong", base_url=slack.api_url)
    with pytest.raises(SlackApiError) as refused:
        wrong.chat_postMessage(channel="C0REQUESTS", text="hi")
    assert refused.value.response.status_code == 200
    assert refused.value.response["error"] == "invalid_auth"
    assert slack.messages("C0REQUESTS") == []

    anonymous = WebClient(base_url=slack.api_url)
    with pytest.raises(SlackApiError) as refused:
        anonymous.auth_test()
    assert refused.value.response["error"] == "not_authed"
    assert [c.error for c in slack.rejected()] == ["invalid_auth", "not_authed"]


APP_TOKEN = "xapp-1-A0JITBOT01-0000-standin-app-token"


def test_apps_connections_open_takes_only_the_app_level_token() -> None:
    with SlackStandIn(TOKEN, app_token=APP_TOKEN) as standin:
        client = WebClient(token=TOKEN, base_url=standin.api_url)
        # No websocket server yet: refused, and not counted as the caller's mistake.
        with pytest.raises(SlackApiError) as refused:
            client.apps_connections_open(app_token=APP_TOKEN)
        assert refused.value.response["error"] == "standin_no_socket_url"
        assert standin.rejected() == []

        standin.socket_url = "ws://127.0.0.1:9/link/?ticket=t0&app_id=A0JITBOT01"
        opened = client.apps_connections_open(app_token=APP_TOKEN)
        assert opened["url"] == standin.socket_url

        # Each token type is refused by the other's methods, as Slack does.
        with pytest.raises(SlackApiError) as refused:
            client.apps_connections_open(app_token=TOKEN)
        assert refused.value.response["error"] == "not_allowed_token_type"
        with pytest.raises(SlackApiError) as refused:
            WebClient(token=APP_TOKEN, base_url=standin.api_url).chat_postMessage(channel="C0REQUESTS", text="hi")
        assert refused.value.response["error"] == "not_allowed_token_type"
        with pytest.raises(SlackApiError) as refused:
            client.apps_connections_open(app_token="xapp-1-A0JITBOT01-0000-wrong")
        assert refused.value.response["error"] == "invalid_auth"
        # Slack wants the app token in the Authorization header; as a POST parameter it does not count.
        form = urllib.request.Request(
            f"{standin.api_url}apps.connections.open",
            data=f"token={APP_TOKEN}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(form, timeout=5) as reply:
            assert json.loads(reply.read()) == {"ok": False, "error": "not_authed"}
        # The bot token keeps working for everything else.
        assert client.auth_test()["ok"]

        assert [(c.method, c.error) for c in standin.rejected()] == [
            ("apps.connections.open", "not_allowed_token_type"),
            ("chat.postMessage", "not_allowed_token_type"),
            ("apps.connections.open", "invalid_auth"),
            ("apps.connections.open", "not_authed"),
        ]
        # Recorded arguments never hold a token, though slack_sdk also sends it in the form body.
        assert all(APP_TOKEN not in json.dumps(c.args) for c in standin.calls)


def test_apps_connections_open_without_an_app_token_refuses_every_token() -> None:
    with SlackStandIn(TOKEN) as standin:
        standin.socket_url = "ws://127.0.0.1:9/link/"
        client = WebClient(base_url=standin.api_url)
        for token, error in ((APP_TOKEN, "invalid_auth"), (TOKEN, "not_allowed_token_type")):
            with pytest.raises(SlackApiError) as refused:
                client.apps_connections_open(app_token=token)
            assert refused.value.response["error"] == error


def test_unknown_method(slack: SlackStandIn, client: WebClient) -> None:
    with pytest.raises(SlackApiError) as refused:
        client.api_call("chat.explode", json={"channel": "C0REQUESTS"})
    assert refused.value.response["error"] == "unknown_method"
    assert slack.rejected()[0].method == "chat.explode"


def test_users_info(slack: SlackStandIn, client: WebClient) -> None:
    alice = client.users_info(user="U0ALICE01")["user"]
    assert alice["id"] == "U0ALICE01"
    assert alice["profile"] == {"email": "alice@example.com", "real_name": "Alice A"}
    assert alice["real_name"] == "Alice A"
    bob = client.users_info(user="U0BOB0001")["user"]
    assert (bob["profile"]["email"], bob["tz"]) == ("bob@example.com", "Europe/Oslo")
    with pytest.raises(SlackApiError) as refused:
        client.users_info(user="U0NOBODY1")
    assert refused.value.response["error"] == "user_not_found"
    assert slack.rejected() == []
    assert [c.kind for c in slack.calls_to("users.info")] == ["ok", "ok", "not_found"]


def test_usergroups_users_list(slack: SlackStandIn, client: WebClient) -> None:
    assert client.usergroups_users_list(usergroup="S0APPROVE1")["users"] == ["U0ALICE01", "U0BOB0001"]
    with pytest.raises(SlackApiError) as refused:
        client.usergroups_users_list(usergroup="S0NOSUCH1")
    assert refused.value.response["error"] == "no_such_subteam"
    assert slack.rejected() == []


def test_conversations_open_group_dm(client: WebClient) -> None:
    channel = client.conversations_open(users=["U0ALICE01", "U0BOB0001"])["channel"]["id"]
    assert channel.startswith("G")
    assert client.conversations_open(users=["U0BOB0001", "U0ALICE01"])["channel"]["id"] == channel


# -- views ---------------------------------------------------------------------------------------


def test_trigger_id_is_usable_once(slack: SlackStandIn, client: WebClient) -> None:
    trigger = slack.new_trigger_id()
    opened = client.views_open(trigger_id=trigger, view=modal(section()))
    assert opened["view"]["id"].startswith("V")
    with pytest.raises(SlackApiError) as refused:
        client.views_open(trigger_id=trigger, view=modal(section()))
    assert refused.value.response["error"] == "exchanged_trigger_id"
    with pytest.raises(SlackApiError) as refused:
        client.views_open(view=modal(section()))  # slack_sdk drops the None trigger_id
    assert refused.value.response["error"] == "invalid_arguments"
    assert client.views_open(trigger_id="trigger.made-up-by-a-test", view=modal())["ok"] is True
    assert len(slack.views()) == 2
    assert [c.error for c in slack.rejected()] == ["exchanged_trigger_id", "invalid_arguments"]


def test_invalid_view_does_not_use_up_the_trigger(slack: SlackStandIn, client: WebClient) -> None:
    trigger = slack.new_trigger_id()
    with pytest.raises(SlackApiError):
        client.views_open(trigger_id=trigger, view={**modal(), "title": plain("t" * 25)})
    assert client.views_open(trigger_id=trigger, view=modal())["ok"] is True


def test_views_update_and_push(slack: SlackStandIn, client: WebClient) -> None:
    view = client.views_open(
        trigger_id=slack.new_trigger_id(),
        view=modal(section("step 1"), external_id="req-1", private_metadata="r1"),
    )["view"]
    updated = client.views_update(view_id=view["id"], hash=view["hash"], view=modal(section("step 2")))["view"]
    assert updated["id"] == view["id"]
    assert slack.view(view["id"])["blocks"] == [section("step 2")]
    with pytest.raises(SlackApiError) as refused:
        client.views_update(view_id=view["id"], hash=view["hash"], view=modal(section("stale")))
    assert refused.value.response["error"] == "hash_conflict"
    by_external = client.views_update(external_id="req-1", view=modal(section("step 3"), external_id="req-1"))
    assert by_external["view"]["id"] == view["id"]
    with pytest.raises(SlackApiError) as refused:
        client.views_update(view_id="V0NOSUCH", view=modal())
    assert refused.value.response["error"] == "not_found"
    pushed = client.views_push(trigger_id=slack.new_trigger_id(), view=modal(section("details")))["view"]
    assert pushed["id"] != view["id"]
    assert [v["blocks"] for v in slack.views()] == [[section("step 3")], [section("details")]]


# -- response_url ----------------------------------------------------------------------------


def test_response_url_posts_are_recorded(slack: SlackStandIn) -> None:
    url = slack.response_url("cmd-1")
    reply = WebhookClient(url).send(text="Request received", response_type="ephemeral")
    assert (reply.status_code, reply.body) == (200, "ok")
    [post] = slack.responses
    assert (post.key, post.ok) == ("cmd-1", True)
    assert post.payload == {"text": "Request received", "response_type": "ephemeral"}
    assert slack.calls[0].method == "response_url"
    assert slack.calls[0].key == "cmd-1"


def test_response_url_replaces_and_deletes_linked_message(slack: SlackStandIn, client: WebClient) -> None:
    ts = client.chat_postMessage(channel="C0REQUESTS", text="pending", blocks=[actions(button())])["ts"]
    url = slack.response_url("click-1", channel="C0REQUESTS", ts=ts)
    WebhookClient(url).send(text="approved", blocks=[section("Approved by <@U0BOB0001>")], replace_original=True)
    assert slack.message("C0REQUESTS", ts)["blocks"] == [section("Approved by <@U0BOB0001>")]
    assert slack.message("C0REQUESTS", ts)["history"][0]["text"] == "pending"
    WebhookClient(url).send_dict({"delete_original": True})
    assert slack.messages("C0REQUESTS") == []
    assert slack.rejected() == []


def test_response_url_rejects_what_slack_rejects(slack: SlackStandIn) -> None:
    hook = WebhookClient(slack.response_url("cmd-2"))
    assert hook.send(blocks=[section("x" * 3001)]).status_code == 400
    assert hook.send_dict({"response_type": "ephemeral"}).status_code == 400
    for i in range(5):
        assert hook.send(text=f"update {i}").status_code == 200
    sixth = hook.send(text="one too many")
    assert (sixth.status_code, sixth.body) == (404, "used_url")
    assert [c.error.split(":")[0] for c in slack.rejected() if c.error] == [
        "invalid_blocks",
        "no_text",
        "used_url",
    ]
    assert [p.ok for p in slack.responses].count(True) == 5


# -- failure injection -----------------------------------------------------------------------


def test_fail_next_ratelimits_like_slack(slack: SlackStandIn, client: WebClient) -> None:
    slack.fail_next("chat.postMessage", times=2, retry_after=7)
    for _ in range(2):
        with pytest.raises(SlackApiError) as refused:
            client.chat_postMessage(channel="C0REQUESTS", text="hi")
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["Retry-After"] == "7"
        assert refused.value.response["error"] == "ratelimited"
    assert client.chat_postMessage(channel="C0REQUESTS", text="hi")["ok"] is True
    assert [c.kind for c in slack.calls] == ["injected", "injected", "ok"]
    assert slack.rejected() == []
    assert len(slack.messages("C0REQUESTS")) == 1


def test_fail_next_works_with_slack_sdk_retry_handler(slack: SlackStandIn) -> None:
    retrying = WebClient(token=TOKEN, base_url=slack.api_url, retry_handlers=[RateLimitErrorRetryHandler()])
    slack.fail_next("chat.postMessage", retry_after=0)
    assert retrying.chat_postMessage(channel="C0REQUESTS", text="hi")["ok"] is True
    assert [c.ok for c in slack.calls_to("chat.postMessage")] == [False, True]


def test_fail_next_other_errors_and_methods(slack: SlackStandIn, client: WebClient) -> None:
    slack.fail_next("views.open", "internal_error")
    with pytest.raises(SlackApiError) as refused:
        client.views_open(trigger_id=slack.new_trigger_id(), view=modal())
    assert (refused.value.response.status_code, refused.value.response["error"]) == (200, "internal_error")
    assert client.auth_test()["ok"] is True  # other methods unaffected

    slack.fail_next("response_url", "expired_url")
    reply = WebhookClient(slack.response_url("late")).send(text="too late")
    assert (reply.status_code, reply.body) == (404, "expired_url")


def test_set_delay_makes_client_time_out(slack: SlackStandIn) -> None:
    impatient = WebClient(token=TOKEN, base_url=slack.api_url, timeout=1)
    slack.set_delay("users.info", 5)
    with pytest.raises(TimeoutError):
        impatient.users_info(user="U0ALICE01")
    slack.set_delay("users.info", 0)
    assert impatient.users_info(user="U0ALICE01")["ok"] is True


# -- recording helpers ---------------------------------------------------------------------------


def test_wait_for_returns_value_posted_from_another_thread(slack: SlackStandIn, client: WebClient) -> None:
    timer = threading.Timer(0.1, lambda: client.chat_postMessage(channel="C0REQUESTS", text="later"))
    timer.start()
    try:
        message = slack.wait_for(lambda: slack.messages("C0REQUESTS")[0], timeout=5)
    finally:
        timer.join()
    assert message["text"] == "later"


def test_wait_for_times_out_with_assertion_error(slack: SlackStandIn, client: WebClient) -> None:
    client.chat_postMessage(channel="C0REQUESTS", text="unrelated")
    with pytest.raises(AssertionError) as timed_out:
        slack.wait_for(lambda: slack.messages("C0NEVER01"), timeout=0.2)
    text = str(timed_out.value)
    assert "C0NEVER01" in text  # the predicate's source
    assert "chat.postMessage: ok" in text  # what did happen


def test_concurrent_posts_get_unique_ts(slack: SlackStandIn, client: WebClient) -> None:
    results: list[str] = []

    def post(i: int) -> None:
        results.append(client.chat_postMessage(channel="C0REQUESTS", text=f"m{i}")["ts"])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 20
    assert len(slack.messages("C0REQUESTS")) == 20
    assert len(slack.calls) == 20


def test_reset_forgets_everything_but_users(slack: SlackStandIn, client: WebClient) -> None:
    client.chat_postMessage(channel="C0REQUESTS", text="x")
    slack.fail_next("auth.test")
    slack.reset()
    assert (slack.calls, slack.messages("C0REQUESTS"), slack.responses) == ([], [], [])
    assert client.auth_test()["ok"] is True
    assert client.users_info(user="U0ALICE01")["ok"] is True


# -- faults: rate limits ---------------------------------------------------------------------------


def test_rate_limit_per_channel_answers_429_like_slack(slack: SlackStandIn, bare: WebClient) -> None:
    slack.rate_limit("chat.postMessage", burst=2, per_second=1, retry_after=3)
    assert [bare.chat_postMessage(channel="C0REQUESTS", text=f"m{i}")["ok"] for i in range(2)] == [True, True]
    with pytest.raises(SlackApiError) as limited:
        bare.chat_postMessage(channel="C0REQUESTS", text="m2")
    reply = limited.value.response
    assert (reply.status_code, reply["error"], reply.headers["Retry-After"]) == (429, "ratelimited", "3")
    assert reply.data == {"ok": False, "error": "ratelimited"}
    # Another channel has a bucket of its own; the limited call had no effect.
    assert bare.chat_postMessage(channel="C0OTHER01", text="elsewhere")["ok"] is True
    assert [m["text"] for m in slack.messages("C0REQUESTS")] == ["m0", "m1"]

    [call] = slack.ratelimited_calls()
    assert (call.ok, call.error, call.kind, call.args["text"]) == (False, "ratelimited", "ratelimited", "m2")
    assert [c.kind for c in slack.calls] == ["ok", "ok", "ratelimited", "ok"]
    assert slack.rejected() == []
    assert slack.retry_after_violations() == []  # nobody came back too soon


def test_rate_limit_per_method_and_clear(slack: SlackStandIn, bare: WebClient) -> None:
    slack.rate_limit("chat.postMessage", burst=1, per_second=0, per_channel=False)
    assert bare.chat_postMessage(channel="C0REQUESTS", text="one")["ok"] is True
    with pytest.raises(SlackApiError) as limited:
        bare.chat_postMessage(channel="C0OTHER01", text="other channel, same bucket")
    assert limited.value.response.status_code == 429
    assert bare.auth_test()["ok"] is True  # other methods are not limited
    slack.clear_rate_limits()
    assert bare.chat_postMessage(channel="C0OTHER01", text="free again")["ok"] is True


def test_retry_after_violations_are_calls_before_the_wait_ran_out(slack: SlackStandIn, bare: WebClient) -> None:
    slack.rate_limit("chat.postMessage", burst=1, per_second=1, retry_after=1)
    bare.chat_postMessage(channel="C0REQUESTS", text="first")
    for text in ("limited", "too soon"):
        with pytest.raises(SlackApiError) as limited:
            bare.chat_postMessage(channel="C0REQUESTS", text=text)
        assert limited.value.response.status_code == 429  # a violation is still answered 429
        assert limited.value.response.headers["Retry-After"] == "1"
    assert [c.args["text"] for c in slack.retry_after_violations()] == ["too soon"]

    time.sleep(1.2)  # what Retry-After asked for, and a token has come back meanwhile
    assert bare.chat_postMessage(channel="C0REQUESTS", text="after waiting")["ok"] is True
    assert [c.args["text"] for c in slack.retry_after_violations()] == ["too soon"]
    assert [c.args["text"] for c in slack.ratelimited_calls()] == ["limited", "too soon"]
    assert [m["text"] for m in slack.messages("C0REQUESTS")] == ["first", "after waiting"]


def test_slack_sdk_retry_handler_honours_retry_after(slack: SlackStandIn) -> None:
    retrying = WebClient(token=TOKEN, base_url=slack.api_url, retry_handlers=[RateLimitErrorRetryHandler()])
    slack.rate_limit("chat.postMessage", burst=1, per_second=1, retry_after=1)
    retrying.chat_postMessage(channel="C0REQUESTS", text="first")
    assert retrying.chat_postMessage(channel="C0REQUESTS", text="second")["ok"] is True  # after one 429
    assert len(slack.ratelimited_calls()) == 1
    assert slack.retry_after_violations() == []


# -- faults: outages ---------------------------------------------------------------------------------


def _port(standin: SlackStandIn) -> int:
    return int(standin.base_url.rsplit(":", 1)[1])


def _connection_closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_outage_refuses_connections_and_comes_back_on_the_same_port() -> None:
    with SlackStandIn(TOKEN, users=USERS) as standin:
        bare = WebClient(token=TOKEN, base_url=standin.api_url, retry_handlers=[])
        ts = bare.chat_postMessage(channel="C0REQUESTS", text="before")["ts"]
        link = standin.response_url("cmd-1", channel="C0REQUESTS", ts=ts)
        api_url = standin.api_url
        standin.wait_for(lambda: standin.open_connections() == 0, timeout=5)  # the post's connection is done
        with socket.create_connection(("127.0.0.1", _port(standin)), timeout=5) as idle:
            standin.wait_for(lambda: standin.open_connections() == 1, timeout=5)  # accepted, being served
            standin.go_away()
            assert _connection_closed(idle)  # open connections are cut, as a dead load balancer does
        with pytest.raises(urllib.error.URLError) as refused:
            bare.chat_postMessage(channel="C0REQUESTS", text="while away")
        assert isinstance(refused.value.reason, ConnectionRefusedError)
        assert standin.api_url == api_url

        standin.come_back()
        assert standin.api_url == api_url
        assert bare.chat_postMessage(channel="C0REQUESTS", text="after")["ok"] is True  # the same client
        assert bare.chat_update(channel="C0REQUESTS", ts=ts, text="before, updated")["ok"] is True
        assert WebhookClient(link).send(text="replaced", replace_original=True).status_code == 200
        assert [m["text"] for m in standin.messages("C0REQUESTS")] == ["replaced", "after"]
        # The call made while away never reached Slack, so it is not recorded.
        assert [c.args.get("text") for c in standin.calls] == ["before", "after", "before, updated", "replaced"]
        standin.wait_for(lambda: standin.open_connections() == 0, timeout=5)


def test_outage_context_manager_cuts_a_call_in_flight() -> None:
    with SlackStandIn(TOKEN) as standin:
        bare = WebClient(token=TOKEN, base_url=standin.api_url, retry_handlers=[])
        standin.stall("auth.test")
        thread, outcome = _run_in_thread(bare.auth_test)
        standin.wait_for(lambda: standin.calls_to("auth.test"), timeout=5)
        with standin.outage():
            thread.join(5)
            assert isinstance(outcome.get("error"), ConnectionError)  # closed without an answer
            with pytest.raises(urllib.error.URLError):
                bare.users_info(user="U0ALICE01")
        standin.release("auth.test")
        assert bare.auth_test()["ok"] is True
        assert [c.method for c in standin.calls] == ["auth.test", "auth.test"]


def test_a_call_in_flight_when_slack_goes_away_is_not_recorded() -> None:
    with SlackStandIn(TOKEN, users=USERS) as standin:
        bare = WebClient(token=TOKEN, base_url=standin.api_url, retry_handlers=[])
        standin.set_delay("users.info", 1)
        assert standin.open_connections() == 0
        thread, outcome = _run_in_thread(lambda: bare.users_info(user="U0ALICE01"))
        standin.wait_for(lambda: standin.open_connections() == 1, timeout=5)
        time.sleep(0.3)  # the request has been read; its answer is being delayed
        with standin.outage():
            thread.join(5)
            assert isinstance(outcome.get("error"), ConnectionError), outcome
        standin.wait_for(lambda: standin.open_connections() == 0, timeout=5)  # the delayed handler is done
        assert standin.calls == []


def test_stop_works_while_away() -> None:
    standin = SlackStandIn(TOKEN).start()
    with standin.outage():
        standin.stop()
    with pytest.raises(RuntimeError):
        standin.base_url  # noqa: B018 - stopped for good


# -- faults: HTTP status failures ------------------------------------------------------------------


SERVER_ERRORS = [(500, "internal_error"), (502, "bad_gateway"), (503, "service_unavailable")]


@pytest.mark.parametrize(("status", "error"), SERVER_ERRORS)
def test_fail_next_with_http_status(slack: SlackStandIn, bare: WebClient, status: int, error: str) -> None:
    slack.fail_next("chat.postMessage", error, status=status)
    with pytest.raises(SlackApiError) as failed:
        bare.chat_postMessage(channel="C0REQUESTS", text="hi")
    reply = failed.value.response
    assert (reply.status_code, reply.data) == (status, {"ok": False, "error": error})
    assert "Retry-After" not in reply.headers
    assert bare.chat_postMessage(channel="C0REQUESTS", text="hi")["ok"] is True
    assert [c.kind for c in slack.calls] == ["injected", "ok"]
    assert len(slack.messages("C0REQUESTS")) == 1
    assert slack.rejected() == []


def test_fail_next_with_status_on_response_url_and_429(slack: SlackStandIn, bare: WebClient) -> None:
    slack.fail_next("response_url", "service_unavailable", status=503)
    reply = WebhookClient(slack.response_url("cmd-1")).send(text="hi")
    assert (reply.status_code, reply.body) == (503, "service_unavailable")
    slack.fail_next("auth.test", status=429, retry_after=4)
    with pytest.raises(SlackApiError) as failed:
        bare.auth_test()
    assert (failed.value.response.status_code, failed.value.response.headers["Retry-After"]) == (429, "4")


# -- faults: slow answers -----------------------------------------------------------------------------


def _raw_post(standin: SlackStandIn, method: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", _port(standin)), timeout=5)
    sock.sendall(
        f"POST /api/{method} HTTP/1.1\r\nHost: slack.com\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_trickle_sends_even_the_status_line_slowly(slack: SlackStandIn) -> None:
    slack.trickle("auth.test", 2)
    with _raw_post(slack, "auth.test") as sock:
        received = sock.recv(100)  # the first byte comes at once (waits at most the socket's 5 s)
        sock.settimeout(0.05)
        second_later = time.monotonic() + 1
        while time.monotonic() < second_later:
            try:
                received += sock.recv(100)
            except TimeoutError:
                pass
    assert 0 < len(received) < 10, received
    assert b"HTTP/1.0 200 OK".startswith(received)
    assert [c.kind for c in slack.calls_to("auth.test")] == ["ok"]  # the call took effect at once


def test_trickled_answer_arrives_whole_and_trickle_0_removes_it(slack: SlackStandIn, bare: WebClient) -> None:
    with _raw_post(slack, "auth.test") as sock:
        size = len(_read_all(sock))
    slack.trickle("auth.test", 200)
    started = time.monotonic()
    assert bare.auth_test()["user_id"] == BOT_USER_ID
    assert time.monotonic() - started >= 0.8 * size / 200
    slack.trickle("auth.test", 0)
    started = time.monotonic()
    assert bare.auth_test()["ok"] is True
    assert time.monotonic() - started < 0.8 * size / 200


def _run_in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["reply"] = call()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_stall_takes_effect_but_answers_only_on_release(slack: SlackStandIn, bare: WebClient) -> None:
    slack.stall("chat.postMessage")
    thread, outcome = _run_in_thread(lambda: bare.chat_postMessage(channel="C0REQUESTS", text="slow"))
    try:
        [stored] = slack.wait_for(lambda: slack.messages("C0REQUESTS"), timeout=5)
        thread.join(0.5)
        assert thread.is_alive() and outcome == {}  # posted, but no answer
        assert [c.kind for c in slack.calls] == ["ok"]
    finally:
        slack.release("chat.postMessage")
    thread.join(5)
    assert outcome["reply"]["ts"] == stored["ts"]
    assert bare.chat_postMessage(channel="C0REQUESTS", text="quick")["ok"] is True  # not stalled any more


def test_reset_closes_a_stalled_call_unanswered(slack: SlackStandIn, bare: WebClient) -> None:
    slack.stall("users.info")
    thread, outcome = _run_in_thread(lambda: bare.users_info(user="U0ALICE01"))
    slack.wait_for(lambda: slack.calls_to("users.info"), timeout=5)
    slack.reset()
    thread.join(5)
    assert isinstance(outcome.get("error"), ConnectionError), outcome
    assert bare.users_info(user="U0ALICE01")["ok"] is True  # reset removed the stall


def test_stop_returns_promptly_while_answers_are_stalled_or_trickling() -> None:
    standin = SlackStandIn(TOKEN).start()
    bare = WebClient(token=TOKEN, base_url=standin.api_url, retry_handlers=[])
    standin.stall("chat.postMessage")
    standin.trickle("auth.test", 1)
    stalled = _run_in_thread(lambda: bare.chat_postMessage(channel="C0REQUESTS", text="hi"))
    trickling = _run_in_thread(bare.auth_test)
    standin.wait_for(lambda: len(standin.calls) == 2, timeout=5)
    started = time.monotonic()
    standin.stop()
    assert time.monotonic() - started < 3
    # Both connections are closed: the stalled one before any byte, the trickling one mid-status-line.
    for thread, outcome in (stalled, trickling):
        thread.join(5)
        assert isinstance(outcome.get("error"), ConnectionError | http.client.HTTPException), outcome


# -- channel membership --------------------------------------------------------------------------------


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(SlackApiError) as refused:
        call()
    return str(refused.value.response["error"])


def test_posting_where_the_bot_is_not_in_the_channel_or_it_is_archived() -> None:
    with SlackStandIn(TOKEN, users=USERS, channels_without_bot={"C0SECRET1"}) as standin:
        bare = WebClient(token=TOKEN, base_url=standin.api_url, retry_handlers=[])
        assert _refused(lambda: bare.chat_postMessage(channel="C0SECRET1", text="hi")) == "not_in_channel"
        standin.add_bot_to("C0SECRET1")
        ts = bare.chat_postMessage(channel="C0SECRET1", text="hi")["ts"]
        standin.remove_bot_from("C0SECRET1")
        assert _refused(lambda: bare.chat_update(channel="C0SECRET1", ts=ts, text="edited")) == "not_in_channel"
        assert standin.message("C0SECRET1", ts)["text"] == "hi"

        requests_ts = bare.chat_postMessage(channel="C0REQUESTS", text="card")["ts"]
        standin.archive("C0REQUESTS")
        assert _refused(lambda: bare.chat_postMessage(channel="C0REQUESTS", text="hi")) == "is_archived"
        assert _refused(lambda: bare.chat_update(channel="C0REQUESTS", ts=requests_ts, text="x")) == "is_archived"
        # DMs have no membership: they keep working.
        dm = bare.chat_postMessage(channel="U0ALICE01", text="your access was approved")
        assert bare.chat_update(channel=dm["channel"], ts=dm["ts"], text="expired")["ok"] is True

        refusals = [c for c in standin.calls if not c.ok]
        assert [(c.error, c.kind) for c in refusals] == [
            ("not_in_channel", "not_found"),
            ("not_in_channel", "not_found"),
            ("is_archived", "not_found"),
            ("is_archived", "not_found"),
        ]
        assert standin.rejected() == []
        assert [m["text"] for m in standin.messages("C0REQUESTS")] == ["card"]

        standin.reset()  # membership is back to what the constructor said
        assert bare.chat_postMessage(channel="C0REQUESTS", text="unarchived")["ok"] is True
        assert _refused(lambda: bare.chat_postMessage(channel="C0SECRET1", text="hi")) == "not_in_channel"
        for not_a_channel in ("U0ALICE01", "D0ALICE01", "#requests"):
            with pytest.raises(ValueError):
                standin.remove_bot_from(not_a_channel)


def test_conversations_info_says_whether_the_channel_exists_and_the_bot_is_in_it() -> None:
    with SlackStandIn(TOKEN, users=USERS, channels={"C0REQUESTS", "C0SECRET1"}) as standin:
        bare = WebClient(token=TOKEN, base_url=standin.api_url, retry_handlers=[])
        info = bare.conversations_info(channel="C0REQUESTS")["channel"]
        assert (info["id"], info["is_member"], info["is_archived"], info["is_private"]) == (
            "C0REQUESTS",
            True,
            False,
            False,
        )
        standin.remove_bot_from("C0SECRET1")
        assert bare.conversations_info(channel="C0SECRET1")["channel"]["is_member"] is False
        standin.archive("C0REQUESTS")
        assert bare.conversations_info(channel="C0REQUESTS")["channel"]["is_archived"] is True

        # Only the channels the constructor named exist; create_channel and delete_channel change that.
        assert _refused(lambda: bare.conversations_info(channel="C0NOSUCH01")) == "channel_not_found"
        assert _refused(lambda: bare.chat_postMessage(channel="C0NOSUCH01", text="hi")) == "channel_not_found"
        standin.create_channel("C0NEWCHAN1", name="new-approvers", bot_member=False)
        created = bare.conversations_info(channel="C0NEWCHAN1")["channel"]
        assert (created["name"], created["is_member"]) == ("new-approvers", False)
        assert _refused(lambda: bare.chat_postMessage(channel="C0NEWCHAN1", text="hi")) == "not_in_channel"
        standin.delete_channel("C0NEWCHAN1")
        assert _refused(lambda: bare.conversations_info(channel="C0NEWCHAN1")) == "channel_not_found"

        # Slack hides a private channel from a bot that is not in it.
        standin.create_channel("G0PRIVATE1", private=True, bot_member=False)
        assert _refused(lambda: bare.conversations_info(channel="G0PRIVATE1")) == "channel_not_found"
        assert _refused(lambda: bare.chat_postMessage(channel="G0PRIVATE1", text="hi")) == "channel_not_found"
        standin.add_bot_to("G0PRIVATE1")
        assert bare.conversations_info(channel="G0PRIVATE1")["channel"]["is_private"] is True

        # A user id is not a conversation; a malformed id is a malformed call.
        assert _refused(lambda: bare.conversations_info(channel="U0ALICE01")) == "channel_not_found"
        assert _refused(lambda: bare.conversations_info(channel="#requests")) == "channel_not_found"
        assert [c.args["channel"] for c in standin.rejected()] == ["#requests"]

        standin.reset()  # back to the channels the constructor named
        assert bare.conversations_info(channel="C0SECRET1")["channel"]["is_member"] is True
        assert _refused(lambda: bare.conversations_info(channel="G0PRIVATE1")) == "channel_not_found"


def test_without_a_channel_list_every_well_formed_channel_exists_until_deleted(
    slack: SlackStandIn, client: WebClient
) -> None:
    assert client.conversations_info(channel="C0ANYTHING")["channel"]["is_member"] is True
    slack.delete_channel("C0ANYTHING")
    assert _refused(lambda: client.conversations_info(channel="C0ANYTHING")) == "channel_not_found"
    assert [c.kind for c in slack.calls_to("conversations.info")] == ["ok", "not_found"]


def test_usergroups_list(slack: SlackStandIn, client: WebClient) -> None:
    (group,) = client.usergroups_list()["usergroups"]
    assert (group["id"], group["team_id"], group["date_delete"]) == ("S0APPROVE1", "T0STANDIN1", 0)
    assert "users" not in group
    (with_users,) = client.usergroups_list(include_users=True, include_count=True)["usergroups"]
    assert (with_users["users"], with_users["user_count"]) == (["U0ALICE01", "U0BOB0001"], 2)
    assert slack.rejected() == []
