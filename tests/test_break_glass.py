"""Break-glass: `/jit breakglass` from someone a resource's `break_glass.allowed` lets in mints at once
with no vote, marked break-glass on the card, in the DMs, in the token's jit claim and in the audit
trail; it is alerted loudly in the audit channel (the approvers and security leads mentioned, with an
Acknowledge button only they may press) and alerted again every 15 minutes until acknowledged, by one
replica each time; anyone else is refused, audited; and the digest counts and lists it.

Over HTTP with signed requests, the Slack stand-in and (for minting) the dev IdP; the re-alert job is
run directly, as the scheduler would, with the runtime's clock moved forward.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from bot.config import ConfigError, load_policy
from bot.demo.slack_api import SlackStandIn
from bot.domain.commands import RequestDraft
from bot.domain.digest import digest_json, digest_text
from bot.domain.policy import Policy
from bot.runtime import BREAK_GLASS_REALERT_JOB, Runtime, build_runtime
from bot.services.breakglass import REALERT_INTERVAL, AckOutcome
from bot.services.delivery import DeliveryPolicy
from bot.slack.ids import ActionId
from bot.store.db import read_scope
from bot.store.models import AccessRequest, BreakGlassAlert, Vote
from bot.store.requests import recorded_since
from bot.store.types import utcnow
from tests.harness import free_socket
from tests.testbot import Bot, MintingBot, TestClock, buttons, card_text, serving
from tests.world import (
    APPROVER_1,
    APPROVER_2,
    AUDIT_CHANNEL,
    BOT_TOKEN,
    GROUP_MEMBER,
    OUTSIDER,
    POLICY,
    REQUESTER,
    SLACK_USERS,
    UNMAPPED,
    USERGROUPS,
    build_settings,
    make_policy,
)

ONCALL = "S0ONCALL01"
LEADS = "S0SECLEADS"
# REQUESTER is allowed through the group by id, GROUP_MEMBER through the on-call usergroup; UNMAPPED
# is a security lead through the leads' usergroup (and no approver of anything).
BREAK_GLASS_POLICY: dict[str, Any] = {
    "groups": {"sre": [REQUESTER, ONCALL]},
    "security_leads": [LEADS],
    "resources": [
        {**POLICY["resources"][0], "break_glass": {"max_duration": "1h", "allowed": ["sre"]}},
        *POLICY["resources"][1:],
    ],
}
ALERT_WORDS = "BREAK-GLASS"
STILL_WORDS = "STILL NOT ACKNOWLEDGED"
ACKED_WORDS = ":white_check_mark: Break-glass `"

pinned_to_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def policy() -> Policy:
    return make_policy(**BREAK_GLASS_POLICY)


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    groups = {**USERGROUPS, ONCALL: [GROUP_MEMBER], LEADS: [UNMAPPED]}
    standin = SlackStandIn(BOT_TOKEN, users=SLACK_USERS, usergroups=groups)
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def idp_token_format() -> str:
    return "jwt"


def alerts(slack: SlackStandIn, words: str = ALERT_WORDS) -> list[dict[str, Any]]:
    """The break-glass alerts in the audit channel as they stand now (``words`` in them, or, by default,
    any alert, acknowledged or not), oldest first."""
    return [
        m
        for m in slack.messages(AUDIT_CHANNEL)
        if words in card_text(m) or (words == ALERT_WORDS and str(m["text"]).startswith(ACKED_WORDS))
    ]


def answer(response: Any) -> str:
    """The text of an answer given in the acknowledgement itself."""
    return str(response.json()["text"])


def jwt_payload(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def events(engine: Engine, event_type: str) -> list[Any]:
    from bot.store.models import AuditEvent

    with Session(engine) as session:
        return list(
            session.execute(
                select(AuditEvent).where(AuditEvent.event_type == event_type).order_by(AuditEvent.seq)  # type: ignore[arg-type]
            ).scalars()
        )


# --- the policy and the command ----------------------------------------------------------------------


def _policy_file(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "policy.yml"
    path.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    return path


def test_the_policy_names_the_key_of_each_break_glass_mistake(tmp_path: Path) -> None:
    def problems(**changes: Any) -> list[str]:
        resource = {**POLICY["resources"][0], **changes.pop("resource", {})}
        data = {**POLICY, **BREAK_GLASS_POLICY, "resources": [resource], **changes}
        with pytest.raises(ConfigError) as error:
            load_policy(_policy_file(tmp_path, data))
        return [line.split(": ", 1)[1] for line in error.value.lines]

    typo = {"break_glass": {"max_duration": "1h", "allowed": ["sres"]}}
    assert problems(resource=typo) == [
        "resources[0].break_glass.allowed: 'sres' is neither a group defined under groups: nor a Slack user id "
        "(U…) or usergroup id (S…) (did you mean 'sre'?)"
    ]
    assert problems(resource={"break_glass": {"max_duration": "1h", "allowed": ["sre"]}}, channels={}) == [
        "channels.audit: is required: resource 'prod-db' has break_glass, and its alerts go to the audit channel"
    ]
    assert problems(resource={"break_glass": {"max_duration": "soon", "allowed": []}}) == [
        "resources[0].break_glass.max_duration: 'soon' is not a duration like 90s, 15m, 2h or 1h30m",
        "resources[0].break_glass.allowed: must list at least one entry",
    ]
    assert problems(resource={"break_glass": {"max_duration": "1h", "allowed": ["sre"], "notify": True}}) == [
        "resources[0].break_glass.notify: is not a known key (typo?)"
    ]


@pinned_to_sqlite
def test_break_glass_command_mistakes_get_specific_answers_and_change_nothing(bot: Bot) -> None:
    cases = {
        "breakglass billing read 10m outage": "`billing` has no break-glass. Resources with break-glass: `prod-db`.",
        # Within the resource's 2h, over its break-glass 1h.
        "breakglass prod-db write 90m outage": "`90m` is longer than the break-glass maximum for `prod-db` "
        "(`break_glass.max_duration`): 1h.",
        "breakglass prod-db write 30m": "A reason is required, e.g. `/jit breakglass prod-db write 30m checking",
        "breakglass prod-db": "Use `/jit breakglass &lt;resource&gt; &lt;scopes&gt; &lt;duration&gt; &lt;reason…&gt;`",
        "breakglass nope read 10m x": "Unknown resource `nope`.",
    }
    for text, words in cases.items():
        response, _key = bot.command(REQUESTER, text)
        assert words in answer(response), (text, answer(response))
    assert bot.request_count() == 0
    assert bot.posts_to(AUDIT_CHANNEL) == []


# --- using it ----------------------------------------------------------------------------------------


@pinned_to_sqlite
def test_an_allowed_person_mints_at_once_marked_break_glass_everywhere(minting_bot: MintingBot) -> None:
    bot = minting_bot
    response, key = bot.command(REQUESTER, "breakglass prod-db write 30m INC-9 primary is down")
    assert response.status_code == 200
    reply = bot.reply_text(key)
    assert "Break-glass `R" in reply and "is open, with no approval" in reply and f"<#{AUDIT_CHANNEL}>" in reply
    request_id = reply.split("`")[1]
    bot.eventually(lambda: bot.stored(request_id).status == "active", timeout=15)

    row = bot.stored(request_id)
    assert row.break_glass and row.decided_by == REQUESTER and row.approvals_required == 0
    with Session(bot.engine) as session:
        assert session.execute(select(Vote).where(Vote.request_id == request_id)).first() is None  # type: ignore[arg-type]

    # The token: minted for the requester's subject, with break_glass in its signed jit claim.
    assertion = bot.idp.last_assertion()
    assert assertion["jit"]["break_glass"] is True and assertion["jit"]["request_id"] == request_id
    token = bot.token(request_id)
    claims = bot.idp_client.verify_jwt_access_token(token, audience="https://db.internal.example")
    assert claims is not None and claims["sub"] == "alice" and claims["scope"] == "write"
    assert claims["jit"]["break_glass"] is True
    assert bot.introspect(token)["active"] is True

    # The audit trail says so at each step.
    submitted = bot.events(request_id, "request_submitted")[0].details
    assert submitted["break_glass"] is True and submitted["decision"]["effect"] == "break_glass"
    (used,) = bot.events(request_id, "break_glass_used")
    assert used.actor == REQUESTER and used.details["allowed_as"] == "user" and used.details["scopes"] == ["write"]
    assert bot.events(request_id, "request_approved") == []

    # The card and the pickup DM say break-glass; the card has only Revoke now.
    card = bot.card_showing(request_id, "Active until")
    assert "BREAK-GLASS" in card_text(card) and "none: break-glass" in card_text(card)
    assert [b["action_id"] for b in buttons(card)] == ["jit_revoke"]
    (pickup,) = bot.dms_to(REQUESTER, "/pickup/")
    assert "opened with break-glass, with no approval" in pickup

    # The alert: loud, mentioning the approvers and the security leads, with Acknowledge.
    (alert,) = bot.eventually(lambda: alerts(bot.slack))
    words = card_text(alert)
    assert ":rotating_light:" in words and request_id in words and "primary is down" in words
    assert f"<@{APPROVER_1}>" in words and f"<@{APPROVER_2}>" in words and f"<!subteam^{LEADS}>" in words
    assert [(b["action_id"], b["value"]) for b in buttons(alert)] == [("jit_break_glass_ack", request_id)]
    # Nothing secret went to Slack or the audit trail.
    everything = json.dumps([c.args for c in bot.slack.calls]) + json.dumps([e.details for e in bot.audit()])
    assert token not in everything and "/pickup/" not in json.dumps([e.details for e in bot.audit()])


@pinned_to_sqlite
def test_a_usergroup_member_is_allowed_and_anyone_else_is_refused_audited(bot: Bot) -> None:
    # Through the on-call usergroup (no IdP here, so the approval stands and the requester is told).
    _response, key = bot.command(GROUP_MEMBER, "breakglass prod-db read 15m INC-10 paging storm <!channel> *now*")
    request_id = bot.reply_text(key).split("`")[1]
    assert bot.stored(request_id).status == "approved"
    assert bot.events(request_id, "break_glass_used")[0].details["allowed_as"] == f"usergroup:{ONCALL}"
    bot.eventually(lambda: bot.dms_to(GROUP_MEMBER, "opened with break-glass, with no approval"))
    (alert,) = bot.eventually(lambda: alerts(bot.slack))
    # The reason is shown as typed, in plain text: it pages nobody and formats nothing.
    (reason,) = [b["text"] for b in alert["blocks"] if "Reason:" in b.get("text", {}).get("text", "")]
    assert reason == {
        "type": "plain_text",
        "text": "Reason: INC-10 paging storm &lt;!channel&gt; *now*",
        "emoji": False,
    }
    assert "<!channel>" not in json.dumps([c.args for c in bot.slack.calls])
    # No rule decided it, so a policy replay has nothing to decide again.
    with read_scope(bot.engine) as session:
        assert list(recorded_since(session=session, since=utcnow() - timedelta(hours=1))) == []

    # Someone the policy does not allow: a specific refusal, audited, nothing stored or alerted.
    _response, key = bot.command(OUTSIDER, "breakglass prod-db write 30m INC-11 trust me")
    refusal = bot.reply_text(key)
    assert "You may not use break-glass on `prod-db`" in refusal and "`break_glass.allowed`" in refusal
    (refused,) = events(bot.engine, "break_glass_refused")
    assert refused.actor == OUTSIDER and refused.request_id is None
    assert refused.details["why"] == "not_allowed" and refused.details["resource"] == "prod-db"
    assert bot.request_count() == 1 and len(alerts(bot.slack)) == 1


@pinned_to_sqlite
def test_a_usergroup_slack_cannot_list_fails_closed_with_its_own_refusal(bot: Bot) -> None:
    bot.slack.fail_next("usergroups.users.list", "internal_error", times=3)
    _response, key = bot.command(GROUP_MEMBER, "breakglass prod-db read 15m INC-12 outage")
    refusal = bot.reply_text(key)
    assert f"Slack could not list the usergroup(s) `{ONCALL}`" in refusal and "`internal_error`" in refusal
    (refused,) = events(bot.engine, "break_glass_refused")
    assert refused.details["why"] == "usergroups_unknown" and refused.details["usergroups"] == [ONCALL]
    assert bot.request_count() == 0 and alerts(bot.slack) == []

    # A person allowed by id needs no usergroup: Slack failing does not stop them.
    bot.slack.fail_next("usergroups.users.list", "internal_error", times=3)
    _response, key = bot.command(REQUESTER, "breakglass prod-db read 15m INC-12 outage")
    assert "is open, with no approval" in bot.reply_text(key)


# --- acknowledging ------------------------------------------------------------------------------------


class Clock(TestClock):
    def set_offset(self, offset: timedelta) -> None:
        self.offset = offset


@pytest.fixture
def clocked_bot(
    engine: Engine, database_url: str, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> Iterator[tuple[Bot, Clock]]:
    clock = Clock()
    with serving(engine, database_url, policy, slack, delivery, clock=clock) as served:
        yield served, clock


def _runtime(bot: Bot) -> Runtime:
    runtime: Runtime = bot.served.runtime
    return runtime


@pinned_to_sqlite
def test_only_approvers_and_security_leads_acknowledge_once_and_the_alert_then_stops(
    clocked_bot: tuple[Bot, Clock],
) -> None:
    bot, clock = clocked_bot
    _response, key = bot.command(REQUESTER, "breakglass prod-db write 30m INC-13 disk full")
    request_id = bot.reply_text(key).split("`")[1]
    (alert,) = bot.eventually(lambda: alerts(bot.slack))
    ts = alert["ts"]

    def click(user: str) -> str:
        _ack, reply_key = bot.click(user, ActionId.BREAK_GLASS_ACK, request_id, channel=AUDIT_CHANNEL, ts=ts)
        return bot.reply_text(reply_key)

    assert (
        click(OUTSIDER)
        == "Only the approvers of this resource and the security leads can acknowledge a break-glass alert."
    )
    assert click(REQUESTER).startswith("You cannot acknowledge your own break-glass")
    # A lead known only through a usergroup Slack cannot list now: not taken on trust.
    bot.slack.fail_next("usergroups.users.list", "internal_error")
    assert click(UNMAPPED).startswith(
        "Slack could not list the approver or security lead usergroups (`internal_error`)"
    )
    attempts = events(bot.engine, "unauthorized_attempt")
    assert [(e.actor, e.details["refusal"], e.details["action"]) for e in attempts] == [
        (OUTSIDER, AckOutcome.NOT_ALLOWED.value, "break_glass_acknowledge"),
        (REQUESTER, AckOutcome.OWN.value, "break_glass_acknowledge"),
        (UNMAPPED, AckOutcome.PEOPLE_UNKNOWN.value, "break_glass_acknowledge"),
    ]
    assert buttons(bot.slack.message(AUDIT_CHANNEL, ts)), "a refused click changes nothing"

    # A security lead through the leads' usergroup acknowledges; an approver after them is told who did.
    assert click(UNMAPPED) == f"You acknowledged break-glass `{request_id}`; it will not be alerted again."
    assert click(APPROVER_1).startswith(f"Break-glass `{request_id}` was already acknowledged by <@{UNMAPPED}>")
    # Anyone else is still refused and audited, and not told who acknowledged it.
    assert click(OUTSIDER).startswith("Only the approvers of this resource and the security leads")
    assert len(events(bot.engine, "unauthorized_attempt")) == len(attempts) + 1
    (acked,) = bot.events(request_id, "break_glass_acknowledged")
    assert acked.actor == UNMAPPED and acked.details["alerts"] == 1
    redrawn = bot.eventually(lambda: (m := bot.slack.message(AUDIT_CHANNEL, ts)) and not buttons(m) and m)
    assert f"was acknowledged by <@{UNMAPPED}>" in card_text(redrawn)

    # Acknowledged: the re-alert job, well past the interval, posts nothing more.
    clock.set_offset(REALERT_INTERVAL * 3)
    _runtime(bot).jobs.run_now(BREAK_GLASS_REALERT_JOB)
    with Session(bot.engine) as session:
        row = session.get(BreakGlassAlert, request_id)
        assert row is not None and row.alerts == 1 and row.acknowledged_by == UNMAPPED

    # The digest counts the day's break-glass and lists it with who acknowledged it.
    day = utcnow().date()
    digest = _runtime(bot).digests.compute(day, now=utcnow() + timedelta(days=1))
    data = digest_json(digest)
    assert data["counts"]["break_glass"] == 1  # type: ignore[index]
    assert data["counts"]["approved_by_people"] == 0 and data["counts"]["auto_approved"] == 0  # type: ignore[index]
    (listed,) = data["break_glass_grants"]  # type: ignore[misc]
    assert listed["request_id"] == request_id and listed["requester"] == REQUESTER
    assert listed["resource"] == "prod-db" and listed["acknowledged_by"] == UNMAPPED
    assert f"{request_id} prod-db by {REQUESTER}, acknowledged by {UNMAPPED}" in digest_text(digest)
    assert len(alerts(bot.slack, STILL_WORDS)) == 0


# --- re-alerting, across replicas -------------------------------------------------------------------


@contextmanager
def replica(
    database_url: str, engine: Engine, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy, clock: Clock
) -> Iterator[Runtime]:
    """A replica with its outbox delivering and its jobs not started: the test runs them."""
    sock = free_socket()
    settings = build_settings(slack, database_url, sock.getsockname()[1])
    sock.close()
    runtime = build_runtime(settings, policy, engine=engine, delivery=delivery, clock=clock)
    runtime.dispatcher.start()
    try:
        yield runtime
    finally:
        runtime.dispatcher.stop()
        runtime.executor.shutdown(wait=True)


def test_an_unacknowledged_break_glass_is_re_alerted_every_15_minutes_by_one_replica(
    database_url: str, engine: Engine, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> None:
    clock = Clock()
    with ExitStack() as stack:
        replicas = [stack.enter_context(replica(database_url, engine, policy, slack, delivery, clock)) for _ in "ab"]
        assert all(BREAK_GLASS_REALERT_JOB in r.jobs.names for r in replicas)
        breakglass = replicas[0].breakglass
        assert breakglass is not None
        opened = breakglass.use(
            RequestDraft("prod-db", ("write",), timedelta(minutes=10), "INC-14 out of disk"), requester=REQUESTER
        )
        slack.wait_for(lambda: alerts(slack))

        def race() -> int:
            start = threading.Barrier(2)
            queued: list[int] = []

            def run(runtime: Runtime) -> None:
                start.wait()
                assert runtime.breakglass is not None
                queued.append(runtime.breakglass.realert())

            threads = [threading.Thread(target=run, args=(r,)) for r in replicas]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            return sum(queued)

        clock.set_offset(REALERT_INTERVAL - timedelta(seconds=30))
        assert race() == 0, "not due yet"
        clock.set_offset(REALERT_INTERVAL)
        assert race() == 1, "exactly one replica re-alerts"
        assert race() == 0, "and only once per interval"
        (second,) = slack.wait_for(lambda: alerts(slack, STILL_WORDS))
        assert "alert 2, used 15m ago" in card_text(second) and f"<!subteam^{LEADS}>" in card_text(second)
        assert [b["action_id"] for b in buttons(second)] == ["jit_break_glass_ack"]

        # Well after the grant's own 10 minutes it still needs a human's eyes: alerted again.
        clock.set_offset(REALERT_INTERVAL * 2)
        assert race() == 1
        slack.wait_for(lambda: len(alerts(slack, STILL_WORDS)) == 2)
        assert "alert 3, used 30m ago" in card_text(alerts(slack, STILL_WORDS)[-1])

        # Acknowledged on the other replica: the first alert and the latest one are redrawn, and it stops.
        other = replicas[1].breakglass
        assert other is not None
        assert other.acknowledge(opened.id, actor=APPROVER_2).outcome is AckOutcome.ACKNOWLEDGED
        clock.set_offset(REALERT_INTERVAL * 4)
        assert race() == 0
        slack.wait_for(lambda: len([m for m in alerts(slack) if not buttons(m)]) == 2)
    assert len(alerts(slack)) == 3, "one alert and two re-alerts in all, none twice"
    first, middle, last = alerts(slack)
    assert not buttons(first) and buttons(middle) and not buttons(last)
    assert f"acknowledged by <@{APPROVER_2}>" in card_text(first) and "after 3 alert(s)" in card_text(last)
    with Session(engine) as session:
        stored = session.get(AccessRequest, opened.id)
        assert stored is not None and stored.break_glass


@pinned_to_sqlite
def test_someone_just_removed_from_an_allowed_usergroup_is_refused_at_once(bot: Bot) -> None:
    # Allowed through the on-call usergroup, which the bot has just listed...
    _response, key = bot.command(GROUP_MEMBER, "breakglass prod-db read 15m INC-13 outage")
    assert "is open, with no approval" in bot.reply_text(key)
    # ...then taken off it: no approval stands between them and the access, so no cached list may.
    bot.slack.set_usergroup(ONCALL, [])
    _response, key = bot.command(GROUP_MEMBER, "breakglass prod-db read 15m INC-13 outage")
    assert "You may not use break-glass on `prod-db`" in bot.reply_text(key)
    assert bot.request_count() == 1
    (refused,) = events(bot.engine, "break_glass_refused")
    assert refused.actor == GROUP_MEMBER and refused.details["why"] == "not_allowed"
