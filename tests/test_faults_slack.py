"""A rate-limiting, failing, vanishing Slack: everything the bot tells people still arrives, once, in
order per card, and only a permanent refusal changes a request's fate."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlmodel import Session, col, select

from bot.demo.slack_api import SlackStandIn
from bot.domain.policy import Policy
from bot.services.delivery import DeliveryPolicy
from bot.slack.ids import ActionId
from bot.store.db import make_engine
from bot.store.models import AccessRequest, OutboxMessage
from tests import testbot
from tests.testbot import Bot, accepted_posts, serving
from tests.world import APPROVER_1, APPROVERS_CHANNEL, AUDIT_CHANNEL, REQUESTER, SQLITE_ONLY, make_policy


@pytest.fixture
def policy() -> Policy:
    return make_policy(limits={"pending_per_requester": 100})


def cards_posted(slack: SlackStandIn) -> Counter[str]:
    """Approval cards Slack accepted, by request id."""
    return Counter(card.request_id for card in testbot.cards_posted(slack))


def submit(bot: Bot, text_: str) -> str:
    """Type a request and return its id, without waiting for the card."""
    before = bot.request_count()
    response, _, _ = bot.send.slash(REQUESTER, text_)
    assert response.status_code == 200
    bot.slack.wait_for(lambda: bot.request_count() > before)
    with Session(bot.engine) as session:
        newest = session.exec(select(AccessRequest).order_by(col(AccessRequest.created_at).desc())).first()
    assert newest is not None
    return newest.id


def no_duplicates(slack: SlackStandIn) -> None:
    """No message was delivered twice: every accepted post and update is distinct."""
    seen = Counter(
        (c.method, c.args.get("channel"), c.args.get("ts"), json.dumps(c.args.get("blocks")), c.args.get("text"))
        for c in accepted_posts(slack)
    )
    assert [k for k, n in seen.items() if n > 1] == []


def assert_card_order(slack: SlackStandIn, request_id: str) -> None:
    """The card was posted before any update of it."""
    methods = [
        c.method
        for c in accepted_posts(slack)
        if request_id in str(c.args.get("text", "")) and c.args.get("channel") == APPROVERS_CHANNEL
    ]
    assert methods and methods[0] == "chat.postMessage", methods
    assert methods.count("chat.postMessage") == 1, methods


# --- rate limits ----------------------------------------------------------------------------------


@pytest.fixture
def delivery() -> DeliveryPolicy:
    # Faster than the stand-in allows below, so Slack's 429s really happen and must be honoured.
    return DeliveryPolicy(channel_burst=10, channel_per_second=10.0, first_retry=0.2, poll_interval=0.3)


@SQLITE_ONLY
def test_thirty_requests_to_one_approver_channel_under_rate_limiting_all_get_their_cards(bot: Bot) -> None:
    bot.slack.rate_limit("chat.postMessage", burst=3, per_second=3, retry_after=1)
    ids = [submit(bot, f"request prod-db read 30m burst {n}") for n in range(30)]

    bot.slack.wait_for(lambda: len(cards_posted(bot.slack)) == 30, timeout=60, description="30 cards")
    assert bot.slack.ratelimited_calls(), "Slack did rate-limit the burst"
    assert bot.slack.retry_after_violations() == [], "no call came back before Retry-After"
    assert cards_posted(bot.slack) == Counter(dict.fromkeys(ids, 1)), "each card once"
    assert {bot.stored(r).status for r in ids} == {"pending"}, "a rate limit cancels nothing"
    assert not [c for c in bot.slack.calls_to("chat.postMessage") if c.args.get("channel") == REQUESTER]
    audit_posted = Counter(e.request_id for e in bot.audit() if e.event_type == "card_posted")
    assert audit_posted == Counter(dict.fromkeys(ids, 1))
    bot.slack.wait_for(
        lambda: len([c for c in accepted_posts(bot.slack) if c.args.get("channel") == AUDIT_CHANNEL]) == 30
    )
    no_duplicates(bot.slack)
    assert bot.slack.rejected() == []


def test_slack_5xx_and_ratelimited_answers_are_retried_not_fatal(bot: Bot) -> None:
    bot.slack.fail_next("chat.postMessage", "internal_error", times=2, status=503)
    bot.slack.fail_next("chat.update", "ratelimited", times=1, retry_after=1)
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read 30m flaky slack")
    bot.send.click(APPROVER_1, ActionId.APPROVE, request_id, channel=channel, ts=ts)
    bot.slack.wait_for(lambda: "Approved" in json.dumps(bot.slack.message(channel, ts)["blocks"]), timeout=20)
    bot.slack.wait_for(lambda: [c for c in accepted_posts(bot.slack) if c.args.get("channel") == REQUESTER], timeout=20)
    assert bot.stored(request_id).status == "approved"
    assert bot.slack.retry_after_violations() == []
    assert_card_order(bot.slack, request_id)
    no_duplicates(bot.slack)


# --- outages --------------------------------------------------------------------------------------


@SQLITE_ONLY
def test_slack_down_for_20s_then_back_gets_every_message_once_and_in_order(bot: Bot) -> None:
    first, channel, ts = bot.request(REQUESTER, "request prod-db read 30m before the outage")
    with bot.slack.outage():
        # People keep working while Slack is away: a click and two new requests reach the bot.
        bot.send.click(APPROVER_1, ActionId.APPROVE, first, channel=channel, ts=ts)
        bot.slack.wait_for(lambda: bot.stored(first).status == "approved")
        later = [submit(bot, f"request prod-db read 15m during the outage {n}") for n in range(2)]
        with Session(bot.engine) as session:
            waiting = session.exec(select(OutboxMessage).where(OutboxMessage.status != "sent")).all()
        assert len(waiting) >= 6, "card update, DM, summaries and two cards wait in the outbox"
        time.sleep(20)
    bot.slack.wait_for(lambda: set(later) <= set(cards_posted(bot.slack)), timeout=60, description="the new cards")
    bot.slack.wait_for(lambda: "Approved" in json.dumps(bot.slack.message(channel, ts)["blocks"]), timeout=60)
    bot.slack.wait_for(lambda: [c for c in accepted_posts(bot.slack) if c.args.get("channel") == REQUESTER], timeout=60)
    bot.slack.wait_for(lambda: not bot.outbox_state() or "pending" not in bot.outbox_state(), timeout=60)
    time.sleep(1)  # a duplicate would show up now

    for request_id in [first, *later]:
        assert_card_order(bot.slack, request_id)
        assert bot.stored(request_id).status in ("approved", "pending")
    dms = [c for c in accepted_posts(bot.slack) if c.args.get("channel") == REQUESTER]
    assert len(dms) == 1 and first in dms[0].args["text"]
    summaries = Counter(
        c.args["text"].split("`")[1] for c in accepted_posts(bot.slack) if c.args.get("channel") == AUDIT_CHANNEL
    )
    assert summaries == Counter({first: 2, later[0]: 1, later[1]: 1}), "submitted + approved, once each"
    no_duplicates(bot.slack)
    assert bot.slack.rejected() == []


# --- replicas -------------------------------------------------------------------------------------


@pytest.fixture
def second_replica(database_url: str, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy) -> Iterator[Bot]:
    """A second bot process's worth of everything, on the same database and the same Slack."""
    with serving(make_engine(database_url), database_url, policy, slack, delivery) as replica:
        yield replica


def test_two_replicas_deliver_each_message_once(bot: Bot, second_replica: Bot) -> None:
    replicas = [bot, second_replica]
    ids = []
    for n in range(16):
        replica = replicas[n % 2]
        request_id, channel, ts = replica.request(REQUESTER, f"request prod-db read 30m replica {n}")
        # The approval lands on the other replica: whichever delivers, each message goes out once.
        replicas[(n + 1) % 2].send.click(APPROVER_1, ActionId.APPROVE, request_id, channel=channel, ts=ts)
        ids.append(request_id)
    for request_id in ids:
        bot.slack.wait_for(lambda rid=request_id: bot.stored(rid).status == "approved")
    bot.slack.wait_for(
        lambda: len([c for c in accepted_posts(bot.slack) if c.args.get("channel") == REQUESTER]) == 16, timeout=30
    )
    time.sleep(1.5)  # a duplicate would show up now
    assert cards_posted(bot.slack) == Counter(dict.fromkeys(ids, 1))
    dms = Counter(c.args["text"].split("`")[1] for c in accepted_posts(bot.slack) if c.args.get("channel") == REQUESTER)
    assert dms == Counter(dict.fromkeys(ids, 1))
    for request_id in ids:
        assert_card_order(bot.slack, request_id)
    no_duplicates(bot.slack)
    assert bot.slack.rejected() == []


# --- a Slack that answers a byte a second -----------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize("slack_call_deadline", [2.0])
def test_a_trickling_answer_ends_the_call_by_its_deadline_and_the_message_arrives_once_slack_recovers(
    bot: Bot,
) -> None:
    request_id = submit(bot, "request prod-db read 30m slack is slow to answer")
    bot.slack.wait_for(lambda: cards_posted(bot.slack)[request_id] == 1)
    # From now on every chat.update answer (status line and headers too) comes at 2 bytes a second:
    # a ~1 KB answer would hold the call for minutes, and each read still sees a byte in time.
    bot.slack.trickle("chat.update", 2)
    _, key, _ = bot.send.slash(REQUESTER, f"revoke {request_id}")
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "cancelled")

    def card_update() -> OutboxMessage | None:
        with Session(bot.engine) as session:
            return session.exec(
                select(OutboxMessage).where(
                    OutboxMessage.request_id == request_id, OutboxMessage.kind == "card_changed"
                )
            ).first()

    # Each try ends at the 2 s deadline, recorded as a timeout, and is retried.
    timed_out = bot.slack.wait_for(
        lambda: m if (m := card_update()) is not None and m.attempts >= 2 else None, timeout=30
    )
    assert timed_out.status != "sent" and "TimeoutError" in str(timed_out.last_error)
    # Meanwhile the audit channel's summary of the cancellation, in another lane, went out.
    bot.slack.wait_for(
        lambda: [
            c
            for c in bot.slack.calls_to("chat.postMessage")
            if c.ok and c.args.get("channel") == AUDIT_CHANNEL and request_id in str(c.args.get("text"))
        ]
    )
    bot.slack.trickle("chat.update", 0)

    def delivered() -> OutboxMessage | None:
        with Session(bot.engine) as session:
            message = session.get(OutboxMessage, timed_out.id)
            return message if message is not None and message.status == "sent" else None

    # Once Slack answers in time again, the same message goes out (the stand-in applied each try
    # at once, as Slack may have; the card says cancelled).
    assert bot.slack.wait_for(delivered, timeout=30).attempts >= timed_out.attempts
    row = bot.stored(request_id)
    assert "cancel" in json.dumps(bot.slack.message(str(row.card_channel), str(row.card_ts))["blocks"]).lower()


def test_while_revocations_wait_for_a_worker_the_outbox_sends_one_message_at_a_time(bot: Bot) -> None:
    """Ending access comes before telling people: with the revocation engine behind, the outbox has
    one call to Slack in flight instead of several, and nothing is lost; once it has caught up, the
    outbox works in parallel again."""
    backlog = bot.served.runtime.backlog
    bot.slack.set_delay("chat.postMessage", 0.3)  # every call overlaps the next unless sent one by one
    backlog.report(behind=True)
    first = [submit(bot, f"request prod-db read 30m while behind {n}") for n in range(4)]
    bot.slack.wait_for(lambda: set(cards_posted(bot.slack)) >= set(first), timeout=30, description="4 cards")
    assert bot.slack.most_delayed_at_once(reset=True) == 1

    backlog.report(behind=False)
    second = [submit(bot, f"request prod-db read 30m caught up {n}") for n in range(4)]
    bot.slack.wait_for(lambda: set(cards_posted(bot.slack)) >= set(second), timeout=30, description="4 more")
    # Cards to the approvers' channel and summaries to the audit channel go out side by side again.
    assert bot.slack.most_delayed_at_once() >= 2
    assert cards_posted(bot.slack) == Counter(dict.fromkeys(first + second, 1))
    no_duplicates(bot.slack)
