"""Rules decided by a Rego module, applied to real requests over HTTP with the dev IdP minting: a module's
auto-approval, deny and require; failing closed on an error, a timeout and an answer outside the contract;
input.recent_auto_approvals; and the usergroups a module sees in input.requester.groups.

Every module here is a real one, compiled and evaluated by the bot's own worker process."""

from __future__ import annotations

import logging
import textwrap
from datetime import timedelta
from typing import Any

import httpx
import pytest

from bot.domain.policy import Policy
from bot.domain.policy_fields import RegoModule
from bot.domain.rules import REGO_FAILED_MESSAGE
from bot.slack.ids import ActionId
from tests.testbot import PICKUP_LINK, MintingBot, buttons, card_text, cards_posted
from tests.world import (
    APPROVER_1,
    APPROVER_2,
    APPROVERS_CHANNEL,
    AUDIT_CHANNEL,
    AUDIT_KEY,
    BOT_TOKEN,
    GROUP_MEMBER,
    IDP_CLIENT_SECRET,
    REQUESTER,
    SIGNING_SECRET,
    lifted_quota,
    make_policy,
)

RULE = "prod-db-rego"


def rego_policy(
    body: str, *, groups: dict[str, list[str]] | None = None, after: list[dict[str, Any]] | None = None
) -> Policy:
    """POLICY with one rule decided by a module (``package jit`` and ``import rego.v1``, then ``body``)
    for prod-db requests, then the ``after`` rules."""
    source = "package jit\n\nimport rego.v1\n\n" + textwrap.dedent(body).strip() + "\n"
    rules = [
        {"name": RULE, "when": {"resources": ["prod-db"]}, "rego": RegoModule("policies/prod-db.rego", source)},
        *(after or []),
    ]
    return make_policy(groups=groups or {}, rules=rules, **lifted_quota(5))


def _submit(bot: MintingBot, user: str, text: str) -> tuple[str, str]:
    """``/jit <text>`` as ``user``: the request id (from its card, which is always posted) and the reply."""
    before = len(bot.slack.calls)
    response, key = bot.command(user, text)
    assert response.status_code == 200, response.text
    card = bot.eventually(lambda: next(iter(cards_posted(bot.slack, bot.slack.calls[before:])), None))
    assert card.channel == APPROVERS_CHANNEL
    bot.eventually(lambda: bot.stored(card.request_id).card_ts is not None)
    return card.request_id, bot.reply_text(key)


def _decision(bot: MintingBot, request_id: str) -> dict[str, object]:
    (submitted,) = bot.events(request_id, "request_submitted")
    decision: dict[str, object] = submitted.details["decision"]
    return decision


def _active(bot: MintingBot, request_id: str) -> None:
    bot.eventually(lambda: bot.stored(request_id).status == "active", timeout=15)


def _auto_approved(bot: MintingBot, request_id: str, rule: str = RULE) -> None:
    """Approved by ``rule`` with no vote, and its token minted: the IdP itself says the token is live."""
    _active(bot, request_id)
    stored = bot.stored(request_id)
    assert (stored.rule, stored.approvals_required, stored.decided_by) == (rule, 0, "jit-bot")
    assert bot.events(request_id, "vote_cast") == []
    assert bot.introspect(_token(bot, request_id))["active"] is True


def _token(bot: MintingBot, request_id: str) -> str:
    """The token the requester (whoever asked) picks up with the link in their DM."""
    requester = bot.stored(request_id).requester_slack_id
    dms = bot.eventually(lambda: [m for t in bot.dms_to(requester, request_id) if (m := PICKUP_LINK.search(t))])
    answer = httpx.get(dms[-1].group(1), headers={"Accept": "application/json"}).json()
    return str(answer["access_token"])


def _waits_for_people(bot: MintingBot, request_id: str) -> None:
    """Pending with Approve and Deny on its card, and a resource approver's click mints it."""
    assert bot.stored(request_id).status == "pending"
    assert [b["action_id"] for b in bot.buttons(request_id)] == [ActionId.APPROVE.value, ActionId.DENY.value]
    bot.click(APPROVER_1, ActionId.APPROVE, request_id)
    _active(bot, request_id)
    assert bot.events(request_id, "request_approved")[0].details["approvers"] == [APPROVER_1]


# --- what a module decides -------------------------------------------------------------------------------

# Reads of prod-db by alice (her IdP subject) for up to an hour: the module reads the input document.
AUTO_APPROVE = rego_policy(
    """
    decision := {"effect": "auto_approve"} if {
        input.requester.subject == "alice"
        input.resource.name == "prod-db"
        every scope in input.request.scopes {
            scope == "read"
        }
        input.request.duration_seconds <= 3600
    }
    """
)


@pytest.mark.parametrize("policy", [AUTO_APPROVE], ids=["auto-approve"])
def test_a_module_that_auto_approves_mints_with_no_click_and_the_card_says_so(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id, reply = _submit(bot, REQUESTER, "request prod-db read 30m checking INC-1234")

    assert f"auto-approved by rule `{RULE}`" in reply
    _auto_approved(bot, request_id)
    assert bot.idp.stats()["exchanges"] == 1

    (first_card,) = [
        c
        for c in bot.slack.calls_to("chat.postMessage")
        if c.args.get("channel") == APPROVERS_CHANNEL and request_id in str(c.args.get("text"))
    ]
    assert f"Auto-approved by rule `{RULE}`" in str(first_card.args["text"])
    card = bot.card_showing(request_id, "Active until")
    assert f"auto-approved by rule `{RULE}`" in card_text(card).lower()
    assert f"Rule: `{RULE}`" in card_text(card)
    assert [b["action_id"] for b in buttons(card)] == [ActionId.REVOKE.value]
    assert bot.eventually(lambda: bot.posts_to(AUDIT_CHANNEL, f"[approved] `{request_id}`"))

    assert _decision(bot, request_id)["effect"] == "auto_approve"
    assert _decision(bot, request_id)["rule"] == RULE
    (approved,) = bot.events(request_id, "request_approved")
    assert (approved.actor, approved.details["decided_by_rule"], approved.details["approvers"]) == ("jit-bot", RULE, [])

    # The module, not a default, decided: a write is not its to approve, so people decide.
    other, reply = _submit(bot, REQUESTER, "request prod-db write 30m checking INC-1235")
    assert "for approval" in reply
    assert _decision(bot, other)["effect"] == "default"
    _waits_for_people(bot, other)


DENY = rego_policy(
    """
    decision := {"effect": "deny", "message": sprintf("%s may not write to %s through jit; ask a DBA.", [
        input.requester.subject,
        input.resource.name,
    ])} if {
        "write" in input.request.scopes
    }
    """
)
DENIED_WORDS = "alice may not write to prod-db through jit; ask a DBA."


@pytest.mark.parametrize("policy", [DENY], ids=["deny"])
def test_a_module_that_denies_refuses_at_once_with_its_message_and_nothing_is_minted(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id, reply = _submit(bot, REQUESTER, "request prod-db write 30m migrating INC-77")

    assert reply.endswith(f"was denied by rule `{RULE}`: {DENIED_WORDS}")
    stored = bot.stored(request_id)
    assert (stored.status, stored.deny_reason, stored.rule) == ("denied", DENIED_WORDS, RULE)
    card = bot.card(request_id)
    assert buttons(card) == [], "nothing left to decide on the card"
    assert f"Denied by rule `{RULE}`: {DENIED_WORDS}" in card_text(card)
    assert bot.eventually(lambda: bot.dms_to(REQUESTER, DENIED_WORDS))
    assert bot.eventually(lambda: bot.posts_to(AUDIT_CHANNEL, f"[denied] `{request_id}`"))

    (denied,) = bot.events(request_id, "request_denied")
    assert (denied.actor, denied.details["decided_by_rule"], denied.details["reason"]) == (
        "jit-bot",
        RULE,
        DENIED_WORDS,
    )
    assert bot.events(request_id, "rego_failed") == []
    assert bot.find_grant(request_id) is None
    assert bot.idp.stats()["exchanges"] == 0


# APPROVER_1 approves prod-db as a resource approver, but is not one of the dbas the module names.
REQUIRE = rego_policy(
    """
    decision := {"effect": "require", "approvals": 2, "approvers": ["dbas"]} if {
        "write" in input.request.scopes
    } else := {"effect": "pass"}
    """,
    groups={"dbas": [APPROVER_2, GROUP_MEMBER]},
)


@pytest.mark.parametrize("policy", [REQUIRE], ids=["require"])
def test_a_module_that_requires_two_of_a_group_refuses_a_resource_approver_outside_it(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id, reply = _submit(bot, REQUESTER, "request prod-db write 30m migrating INC-77")

    assert f"rule `{RULE}` asks for 2 approval(s)" in reply
    stored = bot.stored(request_id)
    assert (stored.rule, stored.approvals_required, stored.approvers) == (RULE, 2, f"{APPROVER_2} {GROUP_MEMBER}")
    assert _decision(bot, request_id)["effect"] == "require"
    assert f"Rule: `{RULE}`" in card_text(bot.card(request_id))

    # A resource approver, but not one the module named: refused (the stored approvers say so), nothing counted.
    bot.click(APPROVER_1, ActionId.APPROVE, request_id)
    refused = bot.eventually(lambda: bot.events(request_id, "unauthorized_attempt"))
    assert refused[0].actor == APPROVER_1 and refused[0].details["refusal"] == "not_approver"
    assert bot.events(request_id, "vote_cast") == []

    bot.click(GROUP_MEMBER, ActionId.APPROVE, request_id)
    bot.card_showing(request_id, "1 of 2 approval(s)")
    assert bot.stored(request_id).status == "pending"
    assert bot.idp.stats()["exchanges"] == 0

    bot.click(APPROVER_2, ActionId.APPROVE, request_id)
    _active(bot, request_id)
    assert bot.events(request_id, "request_approved")[0].details["approvers"] == [GROUP_MEMBER, APPROVER_2]
    assert bot.introspect(_token(bot, request_id))["active"] is True


# --- failing closed --------------------------------------------------------------------------------------

# Each module fails only for a reason with FAIL in it, and auto-approves anything else; a YAML rule after
# it would auto-approve the same reads, so a failure taken for a pass would mint.
FAILING_MODULES = {
    # Two complete definitions that both hold with different values: rego-cpp's evaluation error.
    "error": """
        decision := {"effect": "auto_approve"} if contains(input.request.reason, "FAIL")

        decision := {"effect": "pass"} if contains(input.request.reason, "FAIL")

        decision := {"effect": "auto_approve"} if not contains(input.request.reason, "FAIL")
        """,
    # Seconds of work against a 0.2 s deadline.
    "timeout": """
        decision := {"effect": "auto_approve"} if {
            not contains(input.request.reason, "FAIL")
        } else := {"effect": "auto_approve"} if {
            count([x | some x in numbers.range(1, 3000000); x % 7 == 0]) > 0
        }
        """,
    # {"effect": "allow"}, unless the worker can read the bot's token from its environment: then that.
    "contract": """
        decision := {"effect": object.get(opa.runtime().env, "SLACK_BOT_TOKEN", "allow")} if {
            contains(input.request.reason, "FAIL")
        } else := {"effect": "auto_approve"}
        """,
}
FALLBACK = {"name": "reads", "when": {"resources": ["prod-db"], "scopes_within": ["read"]}, "effect": "auto_approve"}
# In the failing request's reason; the failure's audit detail and log line must not repeat it.
CONFIDENTIAL = "FAIL while rotating the replica credentials for INC-4711"
SECRETS = (BOT_TOKEN, SIGNING_SECRET, IDP_CLIENT_SECRET, AUDIT_KEY)


@pytest.fixture
def minting_settings(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every bot here starts its Rego worker with the bot's secrets in its environment, as `jit-bot serve`
    has them; a test may add settings (indirect parametrisation)."""
    for name, value in (
        ("SLACK_BOT_TOKEN", BOT_TOKEN),
        ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
        ("OIDC_CLIENT_SECRET", IDP_CLIENT_SECRET),
        ("JIT_AUDIT_KEY", AUDIT_KEY),
    ):
        monkeypatch.setenv(name, value)
    settings: dict[str, Any] = getattr(request, "param", {})
    return settings


@pytest.mark.parametrize("minting_settings", [{"jit_rego_timeout": 0.2}], indirect=True, ids=["timeout=0.2s"])
@pytest.mark.parametrize(
    ("kind", "policy"),
    [(kind, rego_policy(source, after=[FALLBACK])) for kind, source in FAILING_MODULES.items()],
    ids=list(FAILING_MODULES),
)
def test_a_module_that_fails_denies_the_request_audits_why_and_the_next_request_is_decided(
    minting_bot: MintingBot, kind: str
) -> None:
    bot = minting_bot
    engine = bot.served.runtime.rego
    assert engine is not None and engine.restarts == 1
    failed_words = REGO_FAILED_MESSAGE.format(rule=RULE)

    request_id, reply = _submit(bot, REQUESTER, f"request prod-db read 30m {CONFIDENTIAL}")

    assert reply.endswith(f"was denied by rule `{RULE}`: {failed_words}")
    stored = bot.stored(request_id)
    assert (stored.status, stored.rule, stored.deny_reason) == ("denied", RULE, failed_words)
    assert buttons(bot.card(request_id)) == []
    assert f"Denied by rule `{RULE}`" in card_text(bot.card(request_id))
    assert bot.eventually(lambda: bot.dms_to(REQUESTER, failed_words))
    (denied,) = bot.events(request_id, "request_denied")
    assert (denied.details["decided_by_rule"], denied.details["reason"]) == (RULE, failed_words)

    (failure,) = bot.events(request_id, "rego_failed")
    assert failure.actor == "jit-bot"
    assert (failure.details["rule"], failure.details["kind"]) == (RULE, kind)
    detail = str(failure.details["detail"])
    assert detail, "the detail says what went wrong"
    for text in (CONFIDENTIAL, "INC-4711", *SECRETS):
        assert text not in detail
    if kind == "contract":
        assert '"allow"' in detail, detail  # the module read no token from the worker's environment
    (logged,) = [
        r.getMessage()
        for r in bot.log_records.records
        if r.levelno == logging.ERROR and f"rule {RULE} failed closed for request {request_id}" in r.getMessage()
    ]
    assert f"({kind})" in logged
    for text in (CONFIDENTIAL, "INC-4711", *SECRETS):
        assert text not in logged

    assert bot.find_grant(request_id) is None
    assert bot.idp.stats()["exchanges"] == 0

    # The next request is decided by the module as usual (after a timeout, by a new worker).
    after, reply = _submit(bot, REQUESTER, "request prod-db read 30m checking INC-4712")
    assert f"auto-approved by rule `{RULE}`" in reply
    _auto_approved(bot, after)
    assert bot.events(after, "rego_failed") == []
    assert engine.restarts == (2 if kind == "timeout" else 1)


# --- input.recent_auto_approvals ---------------------------------------------------------------------------

RECENT = rego_policy(
    """
    decision := {"effect": "deny", "message": "Writes to prod-db need a DBA; ask in #dba."} if {
        "write" in input.request.scopes
    } else := {"effect": "auto_approve"} if {
        input.recent_auto_approvals < 2
    }
    """
)


@pytest.mark.parametrize("policy", [RECENT], ids=["recent-auto-approvals"])
def test_a_module_sees_the_requesters_auto_approvals_by_its_rule_over_the_last_day(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first, _reply = _submit(bot, REQUESTER, "request prod-db read 30m check 1")
    _auto_approved(bot, first)
    # Denied by the same rule: not an auto-approval, so not counted.
    denied, _reply = _submit(bot, REQUESTER, "request prod-db write 30m check 2")
    assert bot.stored(denied).status == "denied"
    second, _reply = _submit(bot, REQUESTER, "request prod-db read 30m check 3")
    _auto_approved(bot, second)

    third, reply = _submit(bot, REQUESTER, "request prod-db read 30m check 4")

    assert "for approval" in reply
    assert (bot.stored(third).rule, _decision(bot, third)["effect"]) == (None, "default")
    _waits_for_people(bot, third)

    # Counted for this requester only.
    theirs, _reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m check 5")
    _auto_approved(bot, theirs)

    # A day later, the first two have left the window.
    bot.clock.advance(timedelta(hours=24, minutes=1))
    later, reply = _submit(bot, REQUESTER, "request prod-db read 30m check 6")
    assert f"auto-approved by rule `{RULE}`" in reply
    assert bot.stored(later).rule == RULE


# --- usergroups in input.requester.groups --------------------------------------------------------------------

# S0PLATFORM (GROUP_MEMBER and APPROVER_1 in the Slack stand-in) is in the policy's group "platform".
PLATFORM = rego_policy(
    """
    decision := {"effect": "auto_approve"} if {
        "platform" in input.requester.groups
        every scope in input.request.scopes {
            scope == "read"
        }
    }
    """,
    groups={"platform": ["S0PLATFORM"]},
)


@pytest.mark.parametrize("policy", [PLATFORM], ids=["platform"])
def test_a_requester_in_a_usergroup_has_its_policy_group_in_the_input(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id, reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-9")
    assert f"auto-approved by rule `{RULE}`" in reply
    _auto_approved(bot, request_id)
    assert bot.slack.calls_to("usergroups.users.list")[0].args["usergroup"] == "S0PLATFORM"

    # Someone outside the usergroup does not have the group: the module passes and people decide.
    outside, reply = _submit(bot, REQUESTER, "request prod-db read 30m checking INC-10")
    assert "for approval" in reply
    _waits_for_people(bot, outside)


@pytest.mark.parametrize("policy", [PLATFORM], ids=["platform"])
def test_a_module_relying_on_a_usergroup_slack_cannot_list_leaves_the_request_to_people_and_it_is_audited(
    minting_bot: MintingBot,
) -> None:
    bot = minting_bot
    bot.slack.fail_next("usergroups.users.list", "missing_scope", times=100)

    request_id, reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-9")

    assert "auto-approved" not in reply
    assert bot.stored(request_id).status == "pending"
    assert bot.idp.stats()["exchanges"] == 0
    (unknown,) = bot.events(request_id, "rules_usergroups_unknown")
    assert unknown.details["usergroups"] == ["S0PLATFORM"]
    _waits_for_people(bot, request_id)


# A module that auto-approves anyone not in "contractors": with the usergroup unknown it would approve
# everyone, contractors too.
NOT_CONTRACTORS = rego_policy(
    """
    decision := {"effect": "auto_approve"} if {
        not "contractors" in input.requester.groups
    } else := {"effect": "pass"}
    """,
    groups={"contractors": ["S0PLATFORM"]},
)


@pytest.mark.parametrize("policy", [NOT_CONTRACTORS], ids=["not-contractors"])
def test_a_modules_auto_approval_is_not_applied_while_usergroups_are_unknown(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.slack.fail_next("usergroups.users.list", "missing_scope")  # this request's one lookup
    request_id, reply = _submit(bot, REQUESTER, "request prod-db read 30m checking INC-1")

    # The module is not asked while the usergroups are unknown: people decide at its rule.
    assert f"rule `{RULE}` asks for 1 approval(s)" in reply
    assert (bot.stored(request_id).rule, _decision(bot, request_id)["effect"]) == (RULE, "require")
    (unknown,) = bot.events(request_id, "rules_usergroups_unknown")
    assert unknown.details["usergroups"] == ["S0PLATFORM"]
    assert bot.idp.stats()["exchanges"] == 0
    _waits_for_people(bot, request_id)

    # The control: with Slack answering, the same request is auto-approved and the contractor waits.
    other, _reply = _submit(bot, REQUESTER, "request prod-db read 30m checking INC-2")
    _auto_approved(bot, other)
    contractor, _reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-3")
    assert (bot.stored(contractor).status, bot.stored(contractor).rule) == ("pending", None)


# A module that denies contractors and passes the rest, then a YAML rule that auto-approves reads.
NO_CONTRACTORS_THEN_READS = rego_policy(
    """
    decision := {"effect": "deny", "message": "Contractors do not get prod-db through jit."} if {
        "contractors" in input.requester.groups
    } else := {"effect": "pass"}
    """,
    groups={"contractors": ["S0PLATFORM"]},
    after=[FALLBACK],
)


@pytest.mark.parametrize("policy", [NO_CONTRACTORS_THEN_READS], ids=["no-contractors-then-reads"])
def test_a_modules_pass_while_usergroups_are_unknown_does_not_let_a_later_rule_auto_approve(
    minting_bot: MintingBot,
) -> None:
    bot = minting_bot
    bot.slack.fail_next("usergroups.users.list", "missing_scope")  # this request's one lookup
    request_id, reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-1")

    # The module could not see that the requester is a contractor, so it passed; a later, more lenient
    # rule must not decide in its place (as with a YAML deny rule whose usergroups are unknown, people
    # decide, and the unknown usergroups are audited).
    assert "auto-approved" not in reply, reply
    assert bot.stored(request_id).status == "pending"
    assert bot.idp.stats()["exchanges"] == 0
    (unknown,) = bot.events(request_id, "rules_usergroups_unknown")
    assert unknown.details["usergroups"] == ["S0PLATFORM"]

    # The control: with Slack answering, the module denies the contractor.
    denied, _reply = _submit(bot, GROUP_MEMBER, "request prod-db read 30m checking INC-2")
    assert (bot.stored(denied).status, bot.stored(denied).rule) == ("denied", RULE)
