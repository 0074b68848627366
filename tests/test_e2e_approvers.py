"""Who counts as an approver when Slack cannot list a usergroup: each use case says, and keeps to it."""

from __future__ import annotations

from bot.slack.ids import ActionId
from tests.testbot import Bot
from tests.world import GROUP_MEMBER, REQUESTER


def _reply(bot: Bot, key: str) -> str:
    (reply,) = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert reply.payload["response_type"] == "ephemeral"
    return str(reply.payload["text"])


def test_a_vote_is_refused_while_slack_cannot_list_the_approver_group(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request k8s view 10m look at pods")
    # Not an error Slack's client retries: the lookup fails once, for this click.
    bot.slack.fail_next("usergroups.users.list", "missing_scope")
    _, key = bot.click(GROUP_MEMBER, ActionId.APPROVE, request_id, channel=channel, ts=ts)
    assert _reply(bot, key) == (
        "Slack could not list the approver group for `k8s` (missing_scope). Nothing changed; try again."
    )
    assert bot.stored(request_id).status == "pending"

    # Once Slack answers, the same member's vote counts.
    bot.click(GROUP_MEMBER, ActionId.APPROVE, request_id, channel=channel, ts=ts)
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "approved")


def test_revoke_falls_back_to_the_approvers_listed_by_id(bot: Bot) -> None:
    request_id, _, _ = bot.request(REQUESTER, "request k8s view 10m look at pods")
    # With Slack answering, the group member is an approver (and is pointed at the card's Deny button).
    _, key, _ = bot.send.slash(GROUP_MEMBER, f"revoke {request_id}")
    assert _reply(bot, key) == "Approvers decide pending requests with the Deny button on the card."

    # Without the group, k8s has no approver listed by id: the member is nobody here, not an error.
    bot.slack.fail_next("usergroups.users.list", "missing_scope")
    _, key, _ = bot.send.slash(GROUP_MEMBER, f"cancel {request_id}")
    assert _reply(bot, key) == "Only the requester or an approver of this resource can revoke it."

    # The requester needs no Slack lookup at all.
    bot.slack.fail_next("usergroups.users.list", "missing_scope", times=5)
    _, key, _ = bot.send.slash(REQUESTER, f"cancel {request_id}")
    assert _reply(bot, key) == f"Request `{request_id}` was cancelled."
    assert bot.stored(request_id).status == "cancelled"
