"""The policy's rules applied to real requests, over HTTP, with the dev IdP minting: auto-approval,
deny, a require rule's own approvers, a rule's limit, and usergroups Slack cannot list."""

from __future__ import annotations

import logging

import pytest

from bot.domain.policy import Policy
from bot.slack.ids import ActionId
from tests.testbot import MintingBot, buttons, card_text, cards_posted
from tests.world import (
    APPROVER_1,
    APPROVER_2,
    AUDIT_CHANNEL,
    GROUP_MEMBER,
    REQUESTER,
    lifted_quota,
    make_policy,
)

DENIED_WORDS = "Refunds go through finance, not jit."

RULES = [
    {
        "name": "no-refunds",
        "when": {"resources": ["billing"], "scopes_any": ["refund"]},
        "effect": "deny",
        "message": DENIED_WORDS,
    },
    {
        # Depends on a usergroup: when Slack cannot list it, it is passed over, not guessed.
        "name": "platform-reads",
        "when": {"requester_in": ["platform"], "resources": ["prod-db"], "scopes_within": ["read"]},
        "effect": "auto_approve",
    },
    {
        "name": "alice-reads",
        "when": {"requester_in": [REQUESTER], "resources": ["prod-db"], "scopes_within": ["read"]},
        "effect": "auto_approve",
        "limit": {"count": 2, "per": "1h"},
    },
    {
        # Approvers by usergroup: whoever is in S0PLATFORM when the button is pressed.
        "name": "platform-approves-billing-reads",
        "when": {"resources": ["billing"], "scopes_within": ["read"]},
        "effect": "require",
        "approvals": 1,
        "approvers": ["platform"],
    },
    {
        "name": "two-dbas",
        "when": {"resources": ["prod-db"], "scopes_any": ["write"]},
        "effect": "require",
        "approvals": 2,
        "approvers": ["dbas"],
    },
]


@pytest.fixture
def policy() -> Policy:
    # APPROVER_1 approves prod-db as a resource approver, but is not one of the rule's dbas.
    return make_policy(
        groups={"dbas": [APPROVER_2, GROUP_MEMBER], "platform": ["S0PLATFORM"]}, rules=RULES, **lifted_quota(5)
    )


def _submit(bot: MintingBot, user: str, text: str) -> tuple[str, str]:
    """``/jit <text>`` as ``user``: the request id (from its card, which is always posted) and the reply."""
    before = len(bot.slack.calls)
    response, key = bot.command(user, text)
    assert response.status_code == 200, response.text
    card = bot.eventually(lambda: next(iter(cards_posted(bot.slack, bot.slack.calls[before:])), None))
    bot.eventually(lambda: bot.stored(card.request_id).card_ts is not None)
    return card.request_id, bot.reply_text(key)


def _decision(bot: MintingBot, request_id: str) -> dict[str, object]:
    (submitted,) = bot.events(request_id, "request_submitted")
    decision: dict[str, object] = submitted.details["decision"]
    return decision


def _lifecycle(bot: MintingBot, step: str, request_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in bot.log_records.records
        if r.name == "jit-bot.lifecycle" and r.getMessage().startswith(f"{step}: request={request_id}")
    ]


def test_an_auto_approve_rule_mints_with_no_click_and_the_card_says_so(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id, reply = _submit(bot, REQUESTER, "request prod-db read 30m checking INC-1234")

    assert "auto-approved by rule `alice-reads`" in reply
    bot.eventually(lambda: bot.stored(request_id).status == "active", timeout=15)
    assert bot.idp.stats()["exchanges"] == 1
    assert bot.introspect(bot.token(request_id))["active"] is True

    card = bot.card_showing(request_id, "Active until")
    assert "auto-approved by rule `alice-reads`" in card_text(card).lower()
    assert "Rule: `alice-reads`" in card_text(card)
    assert [b["action_id"] for b in buttons(card)] == [ActionId.REVOKE.value]
    first_card = next(c for c in bot.slack.calls_to("chat.postMessage") if request_id in str(c.args.get("text")))
    assert "Auto-approved by rule `alice-reads`" in str(first_card.args["text"])
    assert bot.eventually(lambda: bot.posts_to(AUDIT_CHANNEL, f"[approved] `{request_id}`"))

    assert _decision(bot, request_id)["effect"] == "auto_approve"
    assert _decision(bot, request_id)["rule"] == "alice-reads"
    (approved,) = bot.events(request_id, "request_approved")
    assert (approved.actor, approved.details["decided_by_rule"], approved.details["approvers"]) == (
        "jit-bot",
        "alice-reads",
        [],
    )
    assert bot.events(request_id, "vote_cast") == []
    stored = bot.stored(request_id)
    assert (stored.rule, stored.approvals_required, stored.approvers) == ("alice-reads", 0, None)
    assert any("by=rule:alice-reads" in line for line in _lifecycle(bot, "approved", request_id))


def test_a_deny_rule_refuses_at_once_with_its_message_and_nothing_is_minted(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id, reply = _submit(bot, REQUESTER, "request billing refund 30m customer wants money back")

    assert reply.endswith(f"was denied by rule `no-refunds`: {DENIED_WORDS}")
    stored = bot.stored(request_id)
    assert (stored.status, stored.deny_reason, stored.rule) == ("denied", DENIED_WORDS, "no-refunds")
    card = bot.card(request_id)
    assert buttons(card) == [], "nothing left to decide on the card"
    assert f"Denied by rule `no-refunds`: {DENIED_WORDS}" in card_text(card)
    assert bot.eventually(lambda: bot.dms_to(REQUESTER, DENIED_WORDS))
    assert bot.eventually(lambda: bot.posts_to(AUDIT_CHANNEL, f"[denied] `{request_id}`"))

    assert _decision(bot, request_id)["effect"] == "deny"
    (denied,) = bot.events(request_id, "request_denied")
    assert (denied.actor, denied.details["decided_by_rule"], denied.details["reason"]) == (
        "jit-bot",
        "no-refunds",
        DENIED_WORDS,
    )
    assert bot.find_grant(request_id) is None
    assert bot.idp.stats()["exchanges"] == 0
    assert any("by=rule:no-refunds" in line for line in _lifecycle(bot, "denied", request_id))


def test_a_require_rule_takes_two_of_its_own_approvers_and_refuses_the_resources(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id, reply = _submit(bot, REQUESTER, "request prod-db write 30m migrating INC-77")

    assert "rule `two-dbas` asks for 2 approval(s)" in reply
    stored = bot.stored(request_id)
    assert (stored.rule, stored.approvals_required, stored.approvers) == ("two-dbas", 2, f"{APPROVER_2} {GROUP_MEMBER}")
    assert _decision(bot, request_id)["effect"] == "require"
    assert "Rule: `two-dbas`" in card_text(bot.card(request_id))

    # A resource approver, but not one of the rule's: refused, and nothing counted.
    bot.click(APPROVER_1, ActionId.APPROVE, request_id)
    refused = bot.eventually(lambda: bot.events(request_id, "unauthorized_attempt"))
    assert refused[0].actor == APPROVER_1 and refused[0].details["refusal"] == "not_approver"
    assert bot.events(request_id, "vote_cast") == []

    bot.click(GROUP_MEMBER, ActionId.APPROVE, request_id)
    bot.card_showing(request_id, "1 of 2 approval(s)")
    assert bot.stored(request_id).status == "pending"

    bot.click(APPROVER_2, ActionId.APPROVE, request_id)
    bot.eventually(lambda: bot.stored(request_id).status == "active", timeout=15)
    assert bot.events(request_id, "request_approved")[0].details["approvers"] == [GROUP_MEMBER, APPROVER_2]


def test_past_its_limit_an_auto_approve_rule_leaves_the_request_to_people(minting_bot: MintingBot) -> None:
    bot = minting_bot
    auto = [_submit(bot, REQUESTER, f"request prod-db read 30m check {n}")[0] for n in range(2)]
    for request_id in auto:
        bot.eventually(lambda rid=request_id: bot.stored(rid).status == "active", timeout=15)  # type: ignore[misc]

    third, reply = _submit(bot, REQUESTER, "request prod-db read 30m check 3")

    assert "for approval" in reply
    stored = bot.stored(third)
    assert (stored.status, stored.rule) == ("pending", None)
    assert [b["action_id"] for b in bot.buttons(third)] == [ActionId.APPROVE.value, ActionId.DENY.value]
    assert _decision(bot, third)["effect"] == "default"
    bot.click(APPROVER_1, ActionId.APPROVE, third)
    bot.eventually(lambda: bot.stored(third).status == "active", timeout=15)


def test_a_usergroup_member_is_auto_approved(minting_bot: MintingBot) -> None:
    """The control for the next test: with Slack answering, the usergroup rule matches."""
    bot = minting_bot
    request_id, _reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-9")
    bot.eventually(lambda: bot.stored(request_id).status == "active", timeout=15)
    assert bot.stored(request_id).rule == "platform-reads"

    # Its members are cached: a second request within the minute asks Slack nothing.
    again, _reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-10")
    assert bot.stored(again).rule == "platform-reads"
    assert len(bot.slack.calls_to("usergroups.users.list")) == 1


def test_usergroups_slack_cannot_list_send_the_request_to_people_and_are_audited(
    minting_bot: MintingBot, caplog: pytest.LogCaptureFixture
) -> None:
    bot = minting_bot
    bot.slack.fail_next("usergroups.users.list", "missing_scope", times=100)
    with caplog.at_level(logging.WARNING):
        request_id, reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-9")

    assert "for approval" in reply
    stored = bot.stored(request_id)
    assert (stored.status, stored.rule) == ("pending", None)
    (unknown,) = bot.events(request_id, "rules_usergroups_unknown")
    assert unknown.details["usergroups"] == ["S0PLATFORM"]
    decision = _decision(bot, request_id)
    assert decision["effect"] == "default"
    assert "could not be looked up" in str(decision["reason"])
    bot.click(APPROVER_1, ActionId.APPROVE, request_id)
    bot.eventually(lambda: bot.stored(request_id).status == "active", timeout=15)


def test_someone_taken_out_of_a_usergroup_stops_matching_once_its_cached_members_expire(
    minting_bot: MintingBot,
) -> None:
    bot = minting_bot
    seconds = [1000.0]
    bot.served.runtime.requests.monotonic = lambda: seconds[0]
    first, _reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-9")
    assert bot.stored(first).rule == "platform-reads"

    bot.slack.set_usergroup("S0PLATFORM", [APPROVER_1])
    seconds[0] += 59  # within the minute: the members Slack listed are still believed
    second, _reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-10")
    assert bot.stored(second).rule == "platform-reads"

    seconds[0] += 2  # past it: Slack is asked again, and says they left
    third, reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-11")
    assert "for approval" in reply
    assert (bot.stored(third).status, bot.stored(third).rule) == ("pending", None)
    assert len(bot.slack.calls_to("usergroups.users.list")) == 2


def test_a_require_rule_s_usergroup_approvers_are_expanded_when_the_button_is_pressed(
    minting_bot: MintingBot,
) -> None:
    bot = minting_bot
    request_id, reply = _submit(bot, REQUESTER, "request billing read 30m month-end report")

    assert "rule `platform-approves-billing-reads` asks for 1 approval(s)" in reply
    stored = bot.stored(request_id)
    assert (stored.approvals_required, stored.approvers) == (1, "S0PLATFORM")

    # A billing approver of the resource, but not in the usergroup: refused, nothing counted.
    bot.click(APPROVER_2, ActionId.APPROVE, request_id)
    refused = bot.eventually(lambda: bot.events(request_id, "unauthorized_attempt"))
    assert refused[0].actor == APPROVER_2 and refused[0].details["refusal"] == "not_approver"
    assert bot.events(request_id, "vote_cast") == []

    bot.click(GROUP_MEMBER, ActionId.APPROVE, request_id)  # in S0PLATFORM
    bot.eventually(lambda: bot.stored(request_id).status == "active", timeout=15)
    assert bot.events(request_id, "request_approved")[0].details["approvers"] == [GROUP_MEMBER]
