"""Reminders and escalation of requests nobody decides: in the card's thread, at the policy's moments,
never after the decision, once per interval across replicas; escalation lets its approvers vote.

The bot runs on a TestClock; each test moves it and runs the reminder job itself (the job also runs on
its own every few seconds, on the same clock, so every assertion counts what Slack and the audit trail
hold, whoever sent it).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.config import ConfigError, load_policy
from bot.demo.slack_api import SlackStandIn
from bot.domain.policy import Policy
from bot.domain.policy_lint import lint
from bot.domain.reminders import Reminders, plan
from bot.services.delivery import DeliveryPolicy
from bot.services.reminders import REMINDERS_JOB
from bot.slack.ids import ActionId
from bot.store.db import make_engine
from bot.store.models import OutboxMessage
from tests.testbot import Bot, Card, TestClock, card_text, serving
from tests.world import (
    APPROVER_1,
    APPROVER_2,
    AUDIT_CHANNEL,
    GROUP_MEMBER,
    OUTSIDER,
    POLICY,
    REQUESTER,
    make_policy,
    minutes,
)

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
MANAGERS = "S0MANAGERS"
# Reminders at 10m and 30m (10m × backoff 2 later); the third would be at 70m, past the 1h timeout.
# The escalation at 25m, to the managers' usergroup; k8s has its own reminders, and no escalation.
REMINDERS = {"after": "10m", "backoff": 2, "escalate_after": "25m", "escalate_to": [MANAGERS]}


def _policy_data() -> dict[str, Any]:
    data = copy.deepcopy({**POLICY, "request_timeout": "1h", "reminders": REMINDERS})
    data["resources"][2]["reminders"] = {"after": "5m"}
    return data


@pytest.fixture
def policy() -> Policy:
    return Policy.model_validate(_policy_data())


@pytest.fixture
def clock() -> TestClock:
    return TestClock()


@pytest.fixture
def bot(
    engine: Engine, database_url: str, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy, clock: TestClock
) -> Iterator[Bot]:
    slack.set_usergroup(MANAGERS, [OUTSIDER])
    with serving(engine, database_url, policy, slack, delivery, clock=clock) as served:
        yield served


def at(bot: Bot, clock: TestClock, card: Card, offset: timedelta) -> None:
    """Move the clock to ``offset`` after the request was made, and run the reminder job there."""
    created = bot.stored(card.request_id).created_at
    clock.advance(created + offset - clock())
    bot.served.runtime.jobs.run_now(REMINDERS_JOB)


def thread(bot: Bot, card: Card) -> list[str]:
    """What the bot posted in the card's thread, as Slack accepted it."""
    return [
        str(c.args["text"])
        for c in bot.slack.calls_to("chat.postMessage")
        if c.ok and c.args.get("thread_ts") == card.ts and c.args.get("channel") == card.channel
    ]


def settled(bot: Bot, card: Card, count: int) -> list[str]:
    """The thread once it holds ``count`` messages, and once the outbox has nothing more for this card."""
    bot.eventually(lambda: len(thread(bot, card)) >= count)
    lane = f"card:{card.request_id}"

    def idle() -> bool:
        with Session(bot.engine) as session:
            rows = session.exec(select(OutboxMessage).where(OutboxMessage.lane == lane)).all()
        return all(m.status not in ("pending", "sending") for m in rows)

    bot.eventually(idle)
    return thread(bot, card)


def details(bot: Bot, request_id: str, event_type: str) -> list[dict[str, Any]]:
    return [e.details for e in bot.events(request_id, event_type)]


# --- the schedule ------------------------------------------------------------------------------------


@SQLITE
def test_reminders_back_off_and_the_request_is_escalated_once(bot: Bot, clock: TestClock) -> None:
    card = bot.request(REQUESTER, "request prod-db read 30m who is around")
    at(bot, clock, card, minutes(10) - timedelta(seconds=1))
    assert settled(bot, card, 0) == [], "nothing before `after`"

    at(bot, clock, card, minutes(10))
    [first] = settled(bot, card, 1)
    assert first.startswith(":bell: Reminder 1:") and card.request_id in first
    assert f"<@{APPROVER_1}>, <@{APPROVER_2}>" in first and "waited 10m" in first and "expires" in first
    assert f"<@{REQUESTER}>" in first and "still needs a decision from" in first
    at(bot, clock, card, minutes(24))
    assert len(settled(bot, card, 1)) == 1, "the next is after × backoff later, at 30m"

    at(bot, clock, card, minutes(25))
    escalation = settled(bot, card, 2)[1]
    assert escalation.startswith(f":arrow_double_up: Escalated to <!subteam^{MANAGERS}>:")
    shown = bot.card_showing(card.request_id, "Escalated to")
    assert f"Escalated to <!subteam^{MANAGERS}>" in card_text(shown)
    assert [b for b in shown["blocks"] if b["type"] == "actions"], "still pending: the buttons stay"
    assert bot.stored(card.request_id).escalated_to == MANAGERS

    at(bot, clock, card, minutes(30))
    second = settled(bot, card, 3)[2]
    assert second.startswith(":bell: Reminder 2:") and "waited 30m" in second
    assert f"<@{APPROVER_1}>, <@{APPROVER_2}>, <!subteam^{MANAGERS}>" in second, "escalated: they are asked too"

    at(bot, clock, card, minutes(59))
    assert len(settled(bot, card, 3)) == 3, "70m would be past the 1h timeout: no third reminder"
    sent = details(bot, card.request_id, "reminder_sent")
    assert [(d["number"], d["waited_seconds"]) for d in sent] == [(1, 600), (2, 1800)]
    assert sent[0]["mentioned"] == [APPROVER_1, APPROVER_2]
    [escalated] = details(bot, card.request_id, "request_escalated")
    assert escalated["escalated_to"] == [MANAGERS] and escalated["waited_seconds"] == 1500
    assert bot.slack.rejected() == []


@SQLITE
def test_a_bot_down_for_long_sends_one_catch_up_not_a_burst(bot: Bot, clock: TestClock) -> None:
    card = bot.request(REQUESTER, "request billing read 30m nobody looked")
    # Both approvals of billing are still needed; one approver votes, so only the other is asked.
    bot.click(APPROVER_1, ActionId.APPROVE, card.request_id)
    bot.eventually(lambda: details(bot, card.request_id, "vote_cast"))
    at(bot, clock, card, minutes(55))  # past both reminders' moments and the escalation's
    [catch_up] = settled(bot, card, 1)
    assert catch_up.startswith(f":arrow_double_up: Escalated to <!subteam^{MANAGERS}>:")
    assert f"Still waiting on <@{APPROVER_2}> too." in catch_up and f"<@{APPROVER_1}>" not in catch_up
    assert "1 of 2 approval(s) so far" in catch_up
    at(bot, clock, card, minutes(59))
    assert len(settled(bot, card, 1)) == 1
    assert [d["number"] for d in details(bot, card.request_id, "reminder_sent")] == [1]
    assert len(details(bot, card.request_id, "request_escalated")) == 1


@SQLITE
def test_a_resource_s_own_reminders_replace_the_policy_s(bot: Bot, clock: TestClock) -> None:
    card = bot.request(REQUESTER, "request k8s view 30m pods are crashing")
    at(bot, clock, card, minutes(5))
    [reminder] = settled(bot, card, 1)
    # k8s's approvers are a usergroup: it is asked as one.
    assert reminder.startswith(":bell: Reminder 1:") and "<!subteam^S0PLATFORM>" in reminder
    at(bot, clock, card, minutes(14))
    assert len(settled(bot, card, 1)) == 1, "k8s: 5m, then 15m (backoff 2 by default)"
    at(bot, clock, card, minutes(26))
    texts = settled(bot, card, 2)
    assert len(texts) == 2 and texts[1].startswith(":bell: Reminder 2:")
    assert details(bot, card.request_id, "request_escalated") == [], "k8s's reminders escalate to nobody"
    assert "Escalated" not in card_text(bot.card(card.request_id))


# --- no reminder once decided ---------------------------------------------------------------------------


@SQLITE
def test_no_reminder_after_the_decision(bot: Bot, clock: TestClock) -> None:
    approved = bot.request(REQUESTER, "request prod-db read 30m approved quickly")
    denied = bot.request(REQUESTER, "request prod-db write 30m denied quickly")
    bot.click(APPROVER_1, ActionId.APPROVE, approved.request_id)
    bot.deny(APPROVER_2, denied.request_id, "not today")
    bot.eventually(lambda: bot.stored(approved.request_id).status == "approved")
    bot.eventually(lambda: bot.stored(denied.request_id).status == "denied")
    for offset in (10, 25, 30):
        at(bot, clock, approved, minutes(offset))
    for card in (approved, denied):
        assert settled(bot, card, 0) == []
        assert details(bot, card.request_id, "reminder_sent") == []
        assert details(bot, card.request_id, "request_escalated") == []
        assert "Escalated" not in card_text(bot.card(card.request_id))


@SQLITE
def test_a_reminder_queued_before_the_decision_and_not_yet_sent_is_dropped(bot: Bot, clock: TestClock) -> None:
    card = bot.request(REQUESTER, "request prod-db read 30m slack is slow today")
    bot.eventually(lambda: bot.posts_to(AUDIT_CHANNEL, card.request_id))  # the next post is the reminder
    # Slack holds the thread's channel back for 2 s; meanwhile the request is approved.
    bot.slack.fail_next("chat.postMessage", "ratelimited", retry_after=2)
    at(bot, clock, card, minutes(10))
    assert len(details(bot, card.request_id, "reminder_sent")) == 1, "queued and audited"
    bot.eventually(lambda: [c for c in bot.slack.calls_to("chat.postMessage") if not c.ok])
    bot.click(APPROVER_1, ActionId.APPROVE, card.request_id)
    bot.card_showing(card.request_id, "Approved")
    assert settled(bot, card, 0) == [], "nobody is asked to decide what is decided"
    with Session(bot.engine) as session:
        [row] = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "approval_reminder")).all()
    assert (row.status, row.last_error) == ("dropped", "the request was decided before the reminder was sent")


# --- escalation --------------------------------------------------------------------------------------


@SQLITE
def test_escalation_approvers_may_vote_only_once_escalated(bot: Bot, clock: TestClock) -> None:
    card = bot.request(REQUESTER, "request prod-db read 30m prod is down")
    _, key = bot.click(OUTSIDER, ActionId.APPROVE, card.request_id)
    assert bot.reply_text(key) == "You are not an approver for this resource."
    [refused] = details(bot, card.request_id, "unauthorized_attempt")
    assert refused["refusal"] == "not_approver"
    at(bot, clock, card, minutes(24))
    assert bot.stored(card.request_id).escalated_at is None

    at(bot, clock, card, minutes(25))
    bot.card_showing(card.request_id, "Escalated to")
    bot.click(OUTSIDER, ActionId.APPROVE, card.request_id)
    bot.eventually(lambda: bot.stored(card.request_id).status == "approved")
    [approval] = bot.events(card.request_id, "request_approved")
    assert approval.actor == OUTSIDER and approval.details["approvers"] == [OUTSIDER]
    shown = bot.card_showing(card.request_id, "Approved")
    assert "Escalated" not in card_text(shown), "decided: the card says who decided"
    # Leaving the managers' group takes effect at the next click, as for any usergroup of approvers.
    other = bot.request(REQUESTER, "request prod-db write 30m second try")
    at(bot, clock, other, minutes(25))
    bot.card_showing(other.request_id, "Escalated to")
    bot.slack.set_usergroup(MANAGERS, [GROUP_MEMBER])
    _, key = bot.click(OUTSIDER, ActionId.APPROVE, other.request_id)
    assert bot.reply_text(key) == "You are not an approver for this resource."
    assert bot.stored(other.request_id).status == "pending"


@SQLITE
def test_an_unreadable_escalation_group_takes_nothing_from_the_resource_s_own_approvers(
    bot: Bot, clock: TestClock
) -> None:
    """Escalation adds approvers. prod-db's own approvers are listed by id, known without Slack: while
    Slack cannot list the managers' usergroup they still decide; only a manager's click waits for Slack."""
    card = bot.request(REQUESTER, "request prod-db read 30m prod is down")
    at(bot, clock, card, minutes(25))
    bot.card_showing(card.request_id, "Escalated to")
    bot.slack.fail_until_stopped("usergroups.users.list")
    try:
        _, key = bot.click(OUTSIDER, ActionId.APPROVE, card.request_id)
        assert "Slack" in bot.reply_text(key), "a manager's click cannot be judged without the group"
        assert bot.stored(card.request_id).status == "pending"
        bot.click(APPROVER_1, ActionId.APPROVE, card.request_id)
        bot.eventually(lambda: bot.stored(card.request_id).status == "approved")
    finally:
        bot.slack.stop_failing("usergroups.users.list")
    [approval] = bot.events(card.request_id, "request_approved")
    assert approval.actor == APPROVER_1


@SQLITE
def test_no_reminder_for_a_request_whose_resource_left_the_policy(
    engine: Engine, database_url: str, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy, clock: TestClock
) -> None:
    """Nobody can decide it any more (votes are refused: the resource was removed), so nobody is asked to."""
    slack.set_usergroup(MANAGERS, [OUTSIDER])
    with serving(engine, database_url, policy, slack, delivery, clock=clock) as before:
        card = before.request(REQUESTER, "request billing read 30m before the edit")
    data = _policy_data()
    data["resources"] = [r for r in data["resources"] if r["name"] != "billing"]
    with serving(engine, database_url, Policy.model_validate(data), slack, delivery, clock=clock) as after:
        at(after, clock, card, minutes(30))
        assert details(after, card.request_id, "reminder_sent") == []
        assert details(after, card.request_id, "request_escalated") == []
        assert after.stored(card.request_id).next_reminder_at is not None, "looked at, and nothing was due"


@SQLITE
def test_the_escalation_does_not_ask_the_requester_to_decide(
    engine: Engine, database_url: str, slack: SlackStandIn, delivery: DeliveryPolicy, clock: TestClock
) -> None:
    """The requester may be on the escalation list (the CTO asks for access): they cannot approve their
    own request, so the thread does not tell them they may."""
    data = _policy_data()
    data["reminders"] = {**REMINDERS, "escalate_to": [MANAGERS, REQUESTER]}
    slack.set_usergroup(MANAGERS, [OUTSIDER])
    with serving(engine, database_url, Policy.model_validate(data), slack, delivery, clock=clock) as bot:
        card = bot.request(REQUESTER, "request prod-db read 30m the cto asks")
        at(bot, clock, card, minutes(25))
        [escalation] = settled(bot, card, 1)
        assert escalation.startswith(f":arrow_double_up: Escalated to <!subteam^{MANAGERS}>: access request")


# --- replicas ----------------------------------------------------------------------------------------


def test_two_replicas_send_one_reminder_per_interval(
    bot: Bot, clock: TestClock, database_url: str, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> None:
    card = bot.request(REQUESTER, "request prod-db read 30m two replicas")
    with serving(make_engine(database_url), database_url, policy, slack, delivery, clock=clock) as replica:
        runtimes = [bot.served.runtime, replica.served.runtime]
        created = bot.stored(card.request_id).created_at
        for count, offset in enumerate((10, 25, 30), start=1):
            clock.advance(created + minutes(offset) - clock())
            start = threading.Barrier(len(runtimes))

            def run(runtime: Any, start: threading.Barrier = start) -> None:
                start.wait()
                runtime.jobs.run_now(REMINDERS_JOB)

            jobs = [threading.Thread(target=run, args=(runtime,)) for runtime in runtimes]
            for job in jobs:
                job.start()
            for job in jobs:
                job.join(timeout=30)
            assert len(settled(bot, card, count)) == count, f"one message for the interval at {offset}m"
    assert [d["number"] for d in details(bot, card.request_id, "reminder_sent")] == [1, 2]
    assert len(details(bot, card.request_id, "request_escalated")) == 1
    assert bot.stored(card.request_id).reminders_sent == 2


# --- the policy ----------------------------------------------------------------------------------------


def test_the_schedule_is_after_times_powers_of_backoff() -> None:
    created = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    reminders = Reminders.model_validate(
        {"after": "10m", "backoff": 1.5, "escalate_after": "20m", "escalate_to": ["U0X1"]}
    )
    expires = created + timedelta(hours=2)
    moments = []
    scheduled, escalated, now = None, False, created
    while now < expires:
        nudge = plan(
            created=created, expires=expires, reminders=reminders, scheduled=scheduled, escalated=escalated, now=now
        )
        if nudge.says_something:
            moments.append((int((now - created).total_seconds() // 60), nudge.remind, nudge.escalate))
        scheduled, escalated = nudge.next_at, escalated or nudge.escalate
        now += timedelta(minutes=1)
    # 10, 10 + 15 = 25, 25 + 22.5 = 47.5 (seen the minute after), 47.5 + 33.75 = 81.25; 131.9 is past 2h.
    assert moments == [(10, True, False), (20, False, True), (25, True, False), (48, True, False), (82, True, False)]


def _with(path: str, value: Any) -> dict[str, Any]:
    data = _policy_data()
    target: Any = data
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        (_with("reminders.escalate_to", ["manegers"]), "reminders.escalate_to", "'manegers' is neither a group"),
        (_with("reminders.escalate_after", "1h"), "reminders.escalate_after", "the request would expire first"),
        (_with("reminders.after", "1h"), "reminders.after", "not shorter than request_timeout 1h"),
        (_with("reminders.backoff", "2"), "reminders.backoff", "must be a number"),
        (_with("reminders.backoff", 0.5), "reminders.backoff", "must be a number from 1"),
        (_with("reminders.after", "30s"), "reminders.after", "must be at least 1m"),
        (_with("reminders", {"after": "10m", "escalate_after": "20m"}), "reminders.escalate_to", "is required"),
        (_with("reminders", {"after": "10m", "escalate_to": [MANAGERS]}), "reminders.escalate_after", "is required"),
        (
            _with("resources.0.reminders", {"after": "10m", "every": "5m"}),
            "resources[0].reminders.every",
            "not a known",
        ),
        (_with("resources.2.reminders", {"escalate_to": [MANAGERS]}), "resources[2].reminders.after", "required"),
    ],
    ids=[
        "unknown-group",
        "escalation-after-timeout",
        "reminder-after-timeout",
        "backoff-text",
        "backoff-below-1",
        "too-often",
        "escalation-to-nobody",
        "escalation-never",
        "typo",
        "resource-without-after",
    ],
)
def test_bad_reminders_name_the_key(tmp_path: Path, data: dict[str, Any], key: str, problem: str) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert any(line.startswith(f"{path}: {key}: ") and problem in line for line in caught.value.lines), (
        caught.value.lines
    )


def test_groups_may_be_escalated_to_and_count_as_used() -> None:
    policy = make_policy(
        request_timeout="1h",
        groups={"managers": [OUTSIDER, MANAGERS]},
        reminders={"after": "15m", "escalate_after": "45m", "escalate_to": ["managers", APPROVER_2]},
    )
    assert policy.reminders_for("prod-db") == policy.reminders
    assert not [w for w in lint(policy).warnings if "managers" in w]
    with pytest.raises(ValueError, match="only people in Slack can approve"):
        make_policy(request_timeout="1h", groups={"managers": ["alice@example.com"]}, reminders=_escalating("managers"))


def _escalating(to: str) -> dict[str, Any]:
    return {"after": "15m", "escalate_after": "45m", "escalate_to": [to]}
