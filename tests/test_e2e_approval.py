"""The approval flow end to end: signed HTTP in, real slack_sdk calls out to the stand-in."""

from __future__ import annotations

import base64
import time

from bot.slack.forms import DenyForm
from bot.slack.ids import ActionId
from bot.store.audit import verify_chain
from bot.store.db import session_scope
from tests.testbot import Bot, buttons, card_text, deny_form
from tests.world import (
    APPROVER_1,
    APPROVER_2,
    APPROVERS_CHANNEL,
    AUDIT_CHANNEL,
    AUDIT_KEY,
    GROUP_MEMBER,
    OUTSIDER,
    REQUESTER,
)

APPROVE, DENY = ActionId.APPROVE, ActionId.DENY


def test_request_posts_a_card_with_everything_an_approver_needs(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read 30m checking INC-1234")

    assert channel == APPROVERS_CHANNEL
    card = bot.slack.message(channel, ts)
    text = card_text(card)
    for expected in (
        f"<@{REQUESTER}>",
        "prod-db",
        "Production Postgres",
        "`read`",
        "30m",
        "checking INC-1234",
        request_id,
        "Approvals needed*\n1",
    ):
        assert expected in text, f"{expected!r} not on the card"
    shown = buttons(card)
    assert [b["text"]["text"] for b in shown] == ["Approve", "Deny"]
    assert [b["action_id"] for b in shown] == [APPROVE, DENY]
    assert all(b["value"] == request_id for b in shown), "buttons carry only the request id"

    row = bot.stored(request_id)
    assert (row.status, row.requester_subject, row.scopes, row.duration_seconds) == ("pending", "alice", "read", 1800)
    assert (row.card_channel, row.card_ts) == (channel, ts)
    # The requester heard where the request went.
    reply = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if request_id in str(r.payload.get("text"))])
    assert f"<#{APPROVERS_CHANNEL}>" in reply[0].payload["text"]
    assert [e.event_type for e in bot.audit(request_id)] == ["request_submitted", "card_posted"]
    assert bot.slack.rejected() == []


def test_one_of_two_approvers_approves(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read,write 1h30m deploy hotfix")

    response, _ = bot.send.click(APPROVER_2, APPROVE, request_id, channel=channel, ts=ts)
    assert response.status_code == 200

    bot.slack.wait_for(lambda: bot.stored(request_id).status == "approved")
    bot.slack.wait_for(lambda: bot.dms_to(REQUESTER))
    card = bot.card_showing(request_id, "Approved")
    assert f"<@{APPROVER_2}>" in card_text(card)
    assert buttons(card) == [], "a decided card has no buttons"
    (dm,) = bot.dms_to(REQUESTER)
    assert request_id in dm and "approved" in dm and f"<@{APPROVER_2}>" in dm
    row = bot.stored(request_id)
    assert row.decided_by == APPROVER_2 and row.decided_at is not None
    assert [e.event_type for e in bot.audit(request_id)] == [
        "request_submitted",
        "card_posted",
        "vote_cast",
        "request_approved",
    ]
    summaries = bot.slack.wait_for(
        lambda: [
            c
            for c in bot.slack.calls_to("chat.postMessage")
            if c.args.get("channel") == AUDIT_CHANNEL and "approved" in str(c.args.get("text"))
        ]
    )
    assert request_id in str(summaries[0].args["text"])
    assert bot.slack.rejected() == []


def test_two_of_two_needs_two_distinct_approvers(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request billing refund 15m refund order 42")

    bot.send.click(APPROVER_1, APPROVE, request_id, channel=channel, ts=ts)
    bot.slack.wait_for(lambda: "1 of 2" in card_text(bot.slack.message(channel, ts)))
    card = bot.slack.message(channel, ts)
    assert f"<@{APPROVER_1}>" in card_text(card)
    assert len(buttons(card)) == 2, "still pending: buttons stay"
    assert bot.stored(request_id).status == "pending"
    assert bot.dms_to(REQUESTER) == []

    # The same approver again does not count twice.
    _, key = bot.send.click(APPROVER_1, APPROVE, request_id, channel=channel, ts=ts)
    refusal = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "already voted" in refusal[0].payload["text"]
    assert bot.stored(request_id).status == "pending"

    bot.send.click(APPROVER_2, APPROVE, request_id, channel=channel, ts=ts)
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "approved")
    bot.slack.wait_for(lambda: bot.dms_to(REQUESTER))
    text = card_text(bot.card_showing(request_id, "Approved"))
    assert f"<@{APPROVER_1}>" in text and f"<@{APPROVER_2}>" in text
    assert len(bot.dms_to(REQUESTER)) == 1


def test_usergroup_members_may_approve(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request k8s view 10m look at pods")
    bot.send.click(GROUP_MEMBER, APPROVE, request_id, channel=channel, ts=ts)
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "approved")
    assert any(c.args.get("usergroup") == "S0PLATFORM" for c in bot.slack.calls_to("usergroups.users.list"))


def test_deny_asks_for_a_reason_and_tells_the_requester(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db write 30m migrate")

    bot.send.click(APPROVER_1, DENY, request_id, channel=channel, ts=ts)
    opened = bot.slack.wait_for(lambda: [c for c in bot.slack.calls_to("views.open") if c.ok])
    view = opened[0].response["view"]
    assert view["callback_id"] == DenyForm.CALLBACK_ID
    assert bot.stored(request_id).status == "pending", "opening the modal decides nothing"

    # A blank reason is refused inside the modal and changes nothing.
    blank = bot.send.submit_view(APPROVER_1, view, deny_form("  "))
    assert blank.json()["response_action"] == "errors"
    assert bot.stored(request_id).status == "pending"

    ok = bot.send.submit_view(APPROVER_1, view, deny_form("use the replica"))
    assert ok.status_code == 200 and ok.text in ("", "null")
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "denied")
    (dm,) = bot.slack.wait_for(lambda: bot.dms_to(REQUESTER))
    assert "denied" in dm and "use the replica" in dm and f"<@{APPROVER_1}>" in dm
    text = card_text(bot.card_showing(request_id, "Denied"))
    assert "use the replica" in text and f"<@{APPROVER_1}>" in text
    assert bot.stored(request_id).deny_reason == "use the replica"
    assert [e.event_type for e in bot.audit(request_id)][-2:] == ["vote_cast", "request_denied"]


def _refused(bot: Bot, user: str, action: ActionId, request_id: str, channel: str, ts: str) -> str:
    _, key = bot.click(user, action, request_id, channel=channel, ts=ts)
    payload = bot.replies(key)[0].payload
    assert payload.get("response_type") == "ephemeral"
    assert payload.get("replace_original") in (False, None), "a refusal must not replace the card"
    return str(payload["text"])


def test_refused_clicks_change_nothing_and_are_audited(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read 30m checking INC-1234")
    card_before = bot.slack.message(channel, ts)

    assert "own request" in _refused(bot, REQUESTER, APPROVE, request_id, channel, ts)
    assert "own request" in _refused(bot, REQUESTER, DENY, request_id, channel, ts)
    assert "not an approver" in _refused(bot, OUTSIDER, APPROVE, request_id, channel, ts)
    assert "not an approver" in _refused(bot, OUTSIDER, DENY, request_id, channel, ts)
    assert "does not exist" in _refused(bot, APPROVER_1, APPROVE, "RNOSUCH000", channel, ts)

    assert bot.stored(request_id).status == "pending"
    assert bot.slack.message(channel, ts)["blocks"] == card_before["blocks"]
    assert bot.slack.calls_to("views.open") == [], "no deny modal for people who may not deny"
    attempts = [e for e in bot.audit() if e.event_type == "unauthorized_attempt"]
    assert [(e.actor, e.details["refusal"]) for e in attempts] == [
        (REQUESTER, "self_approval"),
        (REQUESTER, "self_approval"),
        (OUTSIDER, "not_approver"),
        (OUTSIDER, "not_approver"),
        (APPROVER_1, "unknown_request"),
    ]


def test_vote_after_decision_is_refused(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read 30m checking")
    bot.send.click(APPROVER_1, APPROVE, request_id, channel=channel, ts=ts)
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "approved")

    assert "no longer pending" in _refused(bot, APPROVER_2, DENY, request_id, channel, ts)
    assert "no longer pending" in _refused(bot, APPROVER_2, APPROVE, request_id, channel, ts)
    assert bot.stored(request_id).status == "approved"
    assert len(bot.slack.wait_for(lambda: bot.dms_to(REQUESTER))) == 1
    assert [e.details["refusal"] for e in bot.audit(request_id) if e.event_type == "unauthorized_attempt"] == [
        "not_pending",
        "not_pending",
    ]


def test_slack_retry_of_a_click_changes_state_once(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read 30m checking")
    payload, _ = bot.send.click_payload(APPROVER_1, APPROVE, request_id, channel=channel, ts=ts)
    body = bot.send.payload_body(payload)
    bot.send.post_signed(body)
    retry = bot.send.post_signed(body, extra_headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.status_code == 200 and retry.headers["x-slack-no-retry"] == "1"
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "approved")
    # The retry is acknowledged at the edge and never handled: one vote, one approval, nothing refused.
    events = [e.event_type for e in bot.audit(request_id)]
    assert events.count("vote_cast") == 1 and events.count("request_approved") == 1
    assert "unauthorized_attempt" not in events
    # The DM goes out just after the commit; wait for it, then make sure it was the only one.
    bot.slack.wait_for(lambda: bot.dms_to(REQUESTER))
    time.sleep(0.3)
    assert len(bot.dms_to(REQUESTER)) == 1


def test_audit_chain_verifies_after_a_flow(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read 30m checking")
    bot.send.click(APPROVER_1, APPROVE, request_id, channel=channel, ts=ts)
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "approved")
    with session_scope(bot.engine) as session:
        report = verify_chain(session=session, key=base64.urlsafe_b64decode(AUDIT_KEY))
    assert report.intact and report.events == 4
