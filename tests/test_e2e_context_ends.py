"""Access that ends when its reason does, end to end: a grant a ``revoke_when_context_ends`` rule
auto-approved for a usergroup's member ends early once they leave it (revoked and proven at the dev
IdP), and nothing ends while Slack cannot say who is in the group."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot import runtime
from bot.config import ConfigError, load_policy
from bot.domain.context import context_ended, context_usergroups
from bot.domain.policy import Policy
from bot.domain.policy_lint import describe
from bot.runtime import CONTEXT_ENDS_JOB
from tests.testbot import MintingBot
from tests.world import APPROVER_2, AUDIT_CHANNEL, GROUP_MEMBER, REQUESTER, SQLITE_ONLY, make_policy, policy_data

ONCALL = "S0ONCALL"
USERGROUP_CALL = "usergroups.users.list"

RULES: list[dict[str, Any]] = [
    {
        # On call: read prod-db while in the on-call usergroup, and only while.
        "name": "oncall-reads",
        "when": {"requester_in": ["oncall"], "resources": ["prod-db"], "scopes_within": ["read"]},
        "effect": "auto_approve",
        "revoke_when_context_ends": True,
    },
    {
        # Alice is listed by id as well: nothing about her can end, so her grants are left alone.
        "name": "alice-or-oncall-views-k8s",
        "when": {"requester_in": [REQUESTER, "oncall"], "resources": ["k8s"], "scopes_within": ["view"]},
        "effect": "auto_approve",
        "revoke_when_context_ends": True,
    },
]


@pytest.fixture(autouse=True)
def _checks_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests count Slack calls and failures per run: the scheduler's own runs must not add any.
    monkeypatch.setattr(runtime, "CONTEXT_CHECK_SECONDS", 3600.0)


@pytest.fixture
def policy() -> Policy:
    return make_policy(
        groups={"oncall": [ONCALL]},
        rules=RULES,
        security_leads=[APPROVER_2],
        limits={"pending_per_requester": 5},
    )


def _auto_approved(bot: MintingBot, text: str) -> str:
    request_id = bot.request(REQUESTER, text).request_id
    bot.eventually(lambda: bot.stored(request_id).status == "active", timeout=15)
    return request_id


def _check(bot: MintingBot) -> int:
    """Run the context-end job once; returns how many usergroup reads it made."""
    before = len(bot.slack.calls_to(USERGROUP_CALL))
    bot.served.runtime.jobs.run_now(CONTEXT_ENDS_JOB)
    return len(bot.slack.calls_to(USERGROUP_CALL)) - before


# Each end is one guarded UPDATE (the expiry engine's own, tested on both databases): SQLite suffices.
@SQLITE_ONLY
def test_a_grant_ends_when_its_requester_leaves_the_usergroup_and_is_proven_dead(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.slack.set_usergroup(ONCALL, [REQUESTER, GROUP_MEMBER])
    first = _auto_approved(bot, "request prod-db read 1h paged for INC-1")
    second = _auto_approved(bot, "request prod-db read 1h paged for INC-2")
    listed = _auto_approved(bot, "request k8s view 30m looking at pods")
    assert (bot.stored(first).context_usergroups, bot.stored(listed).context_usergroups) == (ONCALL, None)
    (approved,) = bot.events(first, "request_approved")
    assert approved.details["context_usergroups"] == [ONCALL]
    tokens = {rid: bot.token(rid) for rid in (first, second, listed)}

    # Still on call: nothing ends, and two grants on one usergroup cost one Slack call.
    assert _check(bot) == 1
    assert [bot.grant(rid).status for rid in (first, second, listed)] == ["active"] * 3
    assert bot.events(first, "context_ended") == []

    # Off call: both grants resting on the usergroup end; the one listed by id stays.
    bot.slack.set_usergroup(ONCALL, [GROUP_MEMBER])
    assert _check(bot) == 1
    for rid in (first, second):
        bot.eventually(lambda rid=rid: bot.stored(rid).status == "revoked", timeout=15)
        assert bot.introspect(tokens[rid]) == {"active": False}
        (ended,) = bot.events(rid, "context_ended")
        assert (ended.actor, ended.details) == (
            "jit-bot",
            {"rule": "oncall-reads", "usergroups": [ONCALL], "requester": REQUESTER},
        )
        (requested,) = bot.events(rid, "revoke_requested")
        assert requested.actor == "jit-bot"
        assert bot.grant(rid).revoke_requested_by == "context_ended"
        why = bot.eventually(lambda rid=rid: bot.dms_to(REQUESTER, f"request `{rid}`, has ended"))
        assert why[0].startswith(f"You are no longer in <!subteam^{ONCALL}>, so your access to `prod-db` (read)")
        assert "rule `oncall-reads` granted it for members only" in why[0]
    gone = "ended early by jit-bot, because the requester left the usergroup its rule granted it for"
    assert bot.eventually(lambda: bot.dms_to(REQUESTER, f"`{first}` for `prod-db` (read) has ended, {gone}"))
    assert bot.card_showing(first, "Revoked early by jit-bot, because the requester left the usergroup")
    assert bot.eventually(lambda: bot.posts_to(AUDIT_CHANNEL, f"[revoked] `{first}`"))
    assert bot.grant(listed).status == "active" and bot.introspect(tokens[listed])["active"] is True

    # Nothing left resting on the usergroup: later runs ask Slack nothing.
    assert _check(bot) == 0
    assert len(bot.events(first, "context_ended")) == 1


@SQLITE_ONLY
def test_slack_failing_ends_nothing_is_retried_and_alerted_once(minting_bot: MintingBot) -> None:
    bot = minting_bot
    bot.slack.set_usergroup(ONCALL, [REQUESTER])
    request_id = _auto_approved(bot, "request prod-db read 1h paged for INC-3")
    token = bot.token(request_id)
    bot.slack.set_usergroup(ONCALL, [GROUP_MEMBER])  # left the group, but Slack cannot say so
    bot.slack.fail_until_stopped(USERGROUP_CALL, "internal_error")

    for _ in range(2):
        assert _check(bot) == 1
    assert bot.grant(request_id).status == "active"
    assert bot.posts_to(AUDIT_CHANNEL, "could not list usergroup", accepted=False) == []

    # The third failure in a row is alerted, once, with the security leads mentioned; still nothing ends.
    for _ in range(3):
        _check(bot)
    (alert,) = bot.eventually(lambda: bot.posts_to(AUDIT_CHANNEL, "could not list usergroup"))
    assert f"<!subteam^{ONCALL}>" in alert and "`internal_error`" in alert and "3 times in a row" in alert
    assert alert.endswith(f"cc <@{APPROVER_2}>")
    (unreadable,) = [e for e in bot.audit() if e.event_type == "context_unreadable"]
    assert unreadable.details == {"usergroup": ONCALL, "failures": 3, "error": "internal_error"}
    assert bot.grant(request_id).status == "active" and bot.introspect(token)["active"] is True
    assert bot.events(request_id, "context_ended") == []

    # Slack answers again: the next run ends the grant, and the recovery is audited.
    bot.slack.stop_failing(USERGROUP_CALL)
    _check(bot)
    bot.eventually(lambda: bot.stored(request_id).status == "revoked", timeout=15)
    assert bot.introspect(token) == {"active": False}
    (recovered,) = [e for e in bot.audit() if e.event_type == "context_readable_again"]
    assert recovered.details == {"usergroup": ONCALL, "failures": 5}
    assert len(bot.posts_to(AUDIT_CHANNEL, "could not list usergroup", accepted=False)) == 1


@SQLITE_ONLY
def test_an_odd_answer_from_slack_ends_nothing(minting_bot: MintingBot) -> None:
    """ok:true without its list, a list of something else, or nobody at all (Slack lists nobody for a
    disabled usergroup): none says the requester left, so none ends the grant; each counts as a failure."""
    bot = minting_bot
    bot.slack.set_usergroup(ONCALL, [REQUESTER])
    request_id = _auto_approved(bot, "request prod-db read 1h paged for INC-5")
    token = bot.token(request_id)

    bot.slack.answer_oddly(USERGROUP_CALL, {})
    assert _check(bot) == 1
    bot.slack.answer_oddly(USERGROUP_CALL, {"users": REQUESTER})
    assert _check(bot) == 1
    bot.slack.set_usergroup(ONCALL, [])
    assert _check(bot) == 1
    assert bot.grant(request_id).status == "active" and bot.introspect(token)["active"] is True
    assert bot.events(request_id, "context_ended") == []
    # Three in a row: alerted as any failure to read the usergroup is.
    (alert,) = bot.eventually(lambda: bot.posts_to(AUDIT_CHANNEL, "could not list usergroup"))
    assert "`usergroup_listed_nobody`" in alert

    # Listed again, without the requester: now it ends.
    bot.slack.set_usergroup(ONCALL, [GROUP_MEMBER])
    _check(bot)
    bot.eventually(lambda: bot.stored(request_id).status == "revoked", timeout=15)
    assert bot.introspect(token) == {"active": False}


@SQLITE_ONLY
def test_a_recorded_context_still_ends_its_grant_after_the_policy_drops_the_key(minting_bot: MintingBot) -> None:
    """The README: the recorded usergroups apply for the grant's whole life, even if the policy changes.
    A bot restarted on a policy whose rules no longer say revoke_when_context_ends still checks them."""
    bot = minting_bot
    bot.slack.set_usergroup(ONCALL, [REQUESTER])
    request_id = _auto_approved(bot, "request prod-db read 1h paged for INC-6")
    token = bot.token(request_id)
    edited = make_policy(
        groups={"oncall": [ONCALL]},
        rules=[{k: v for k, v in RULES[0].items() if k != "revoke_when_context_ends"}],
        security_leads=[APPROVER_2],
    )
    restarted = runtime.build_runtime(bot.served.runtime.settings, edited, engine=bot.engine, clock=bot.clock)
    try:
        assert CONTEXT_ENDS_JOB in restarted.jobs.names
        bot.slack.set_usergroup(ONCALL, [GROUP_MEMBER])
        restarted.jobs.run_now(CONTEXT_ENDS_JOB)
    finally:
        restarted.close()
    assert bot.grant(request_id).revoke_requested_by == "context_ended"
    (ended,) = bot.events(request_id, "context_ended")
    assert ended.details["usergroups"] == [ONCALL]
    bot.eventually(lambda: bot.stored(request_id).status == "revoked", timeout=15)
    assert bot.introspect(token) == {"active": False}


def test_the_context_of_an_approval_and_whether_it_ended() -> None:
    policy = make_policy(groups={"oncall": [ONCALL, "S0SECOND"]}, rules=RULES)
    mine = frozenset({ONCALL, "S0OTHER"})
    assert context_usergroups(policy, "oncall-reads", requester="U0X", subject="x", usergroups=mine) == (ONCALL,)
    # Listed by Slack id or by IdP subject: nothing that can end.
    assert (
        context_usergroups(policy, "alice-or-oncall-views-k8s", requester=REQUESTER, subject="a", usergroups=mine) == ()
    )
    # A rule without the key, or no rule.
    assert context_usergroups(make_policy(), None, requester="U0X", subject=None, usergroups=mine) == ()

    members = {ONCALL: frozenset({"U0X"}), "S0SECOND": frozenset()}
    assert context_ended("U0X", (ONCALL, "S0SECOND"), members) is False
    assert context_ended("U0Y", (ONCALL, "S0SECOND"), members) is True
    # In neither group that could be read, and one could not: not ended on a guess.
    assert context_ended("U0Y", (ONCALL, "S0THIRD"), members) is None
    assert context_ended("U0X", (ONCALL, "S0THIRD"), members) is False
    # `jit-bot policy check` says it in the rule's line.
    assert describe(policy.rules[0], policy).endswith(
        "; ended early once the requester is in none of the usergroups it approved for"
    )


WRONG = {
    "on-a-require-rule": (
        {"effect": "require", "approvals": 1},
        "rules[0].revoke_when_context_ends: is only for rules with effect auto_approve; this rule's effect is require",
    ),
    "without-requester-in": (
        {"when": {"resources": ["prod-db"]}},
        "rules[0].revoke_when_context_ends: needs when.requester_in",
    ),
    "only-people-by-id": (
        {"when": {"requester_in": [REQUESTER]}},
        "rules[0].revoke_when_context_ends: when.requester_in names no Slack usergroup",
    ),
    "not-a-boolean": ({"revoke_when_context_ends": "yes"}, "rules[0].revoke_when_context_ends: "),
}


@pytest.mark.parametrize(("change", "line"), WRONG.values(), ids=WRONG)
def test_a_misplaced_revoke_when_context_ends_is_a_start_up_error_naming_the_key(
    tmp_path: Path, change: dict[str, Any], line: str
) -> None:
    rule = {**copy.deepcopy(RULES[0]), **change}
    path = tmp_path / "policy.yml"
    data = policy_data(groups={"oncall": [ONCALL]}, rules=[rule])
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    (said,) = caught.value.lines
    assert said.startswith(f"{path}: {line}"), said


@SQLITE_ONLY
def test_an_extension_the_rule_approved_ends_with_the_usergroup_too(minting_bot: MintingBot) -> None:
    # More time that the same rule auto-approved rests on the same membership: once its new token has
    # replaced the first one, leaving the usergroup must end it as well, not only the grant it extended.
    from sqlmodel import Session, col, select

    from bot.store.models import AccessRequest

    bot = minting_bot
    bot.slack.set_usergroup(ONCALL, [REQUESTER])
    first = _auto_approved(bot, "request prod-db read 30m paged for INC-3")
    response, _key = bot.command(REQUESTER, f"extend {first} 30m")
    assert response.status_code == 200, response.text

    def stored_extension() -> str | None:
        with Session(bot.engine) as session:
            row = session.exec(select(AccessRequest).where(col(AccessRequest.extends) == first)).first()
            return row.id if row is not None else None

    extension = bot.eventually(stored_extension)
    bot.eventually(lambda: bot.stored(extension).status == "active", timeout=15)
    assert bot.stored(extension).context_usergroups == ONCALL
    token = bot.token(extension)  # picked up: the first grant is replaced and revoked
    bot.eventually(lambda: bot.stored(first).status == "revoked", timeout=15)

    bot.slack.set_usergroup(ONCALL, [GROUP_MEMBER])
    assert _check(bot) == 1
    bot.eventually(lambda: bot.stored(extension).status == "revoked", timeout=15)
    assert bot.introspect(token) == {"active": False}
    (ended,) = bot.events(extension, "context_ended")
    assert ended.details["usergroups"] == [ONCALL]
