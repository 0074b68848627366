"""What happens on time: revocation by the timer, request timeouts, retry backoff, mints left behind.

Each test here fails when one line of the code that keeps the promise is broken (scripts/mutants
breaks them on purpose). Times are read from the bot's own records (audit events, grant rows)
against its clock; the only wall-clock bound is the timer's sub-second lag, which is its promise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import pytest

from bot.demo.slack_api import SlackStandIn
from bot.domain.policy import Policy
from bot.jobs.expiry import SWEEP_INTERVAL_SECONDS
from bot.services.delivery import DeliveryPolicy
from bot.services.timeouts import APPROVED_UNMINTED_AFTER
from bot.slack.ids import ActionId
from bot.store.models import AuditEvent
from tests.testbot import Bot, MintingBot, serving
from tests.testbot import TestClock as MovableClock  # not named Test*, so pytest does not collect it here
from tests.world import APPROVER_1, REQUESTER, SQLITE_ONLY

# How young the replica's approvals look, by the minting bot's clock, once they are made.
REPLICA_HEAD_START = timedelta(seconds=5)
# Slack for a lag the timer promises to keep under a second: scheduling on a loaded test machine.
TIMER_LAG = timedelta(seconds=1)


def _naive(moment: datetime) -> datetime:
    """SQLite hands datetimes back without a zone, PostgreSQL with one; both are UTC."""
    return moment.replace(tzinfo=None)


def _events(bot: Bot, request_id: str, event_type: str) -> list[AuditEvent]:
    return [e for e in bot.audit(request_id) if e.event_type == event_type]


@pytest.mark.parametrize("sweep_interval", [300.0])
def test_the_timer_revokes_with_sub_second_lag_without_the_sweep(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # With the periodic sweep five minutes apart, only the timer armed for the expiry can be on time.
    request_id = bot.approve("request prod-db read 5s timer only")
    assert bot.stored(request_id).status == "active"
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "revoked", timeout=15)
    grant = bot.grant(request_id)
    assert grant.revoked_at is not None
    assert timedelta(0) <= grant.revoked_at - grant.expires_at < TIMER_LAG
    (revoked,) = _events(bot, request_id, "grant_revoked")
    assert 0 <= revoked.details["lag_ms"] < TIMER_LAG.total_seconds() * 1000


def test_a_pending_request_expires_at_its_timeout_not_before(minting_bot: MintingBot, policy: Policy) -> None:
    bot = minting_bot
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read 30m anyone")
    housekeeping = bot.served.runtime.run_housekeeping

    bot.clock.advance(policy.request_timeout - timedelta(seconds=10))
    housekeeping()
    assert bot.stored(request_id).status == "pending", "expired before its timeout"
    assert not _events(bot, request_id, "request_expired")

    bot.clock.advance(timedelta(seconds=20))
    housekeeping()
    assert bot.stored(request_id).status == "expired"
    (expired,) = _events(bot, request_id, "request_expired")
    assert expired.details["timeout_seconds"] == int(policy.request_timeout.total_seconds())
    _, key = bot.click(APPROVER_1, ActionId.APPROVE, request_id, channel=channel, ts=ts)
    refusal = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "no longer pending" in refusal[0].payload["text"]


@SQLITE_ONLY
def test_revocation_retries_back_off(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 3s outage")
    bot.idp.stop()
    failures = bot.slack.wait_for(
        lambda: f if len(f := _events(bot, request_id, "revocation_failed")) >= 3 else None, timeout=20
    )
    waits = [_naive(datetime.fromisoformat(e.details["retry_at"])) - _naive(e.at) for e in failures[:3]]
    assert [e.details["attempt"] for e in failures[:3]] == [1, 2, 3]
    assert waits == [timedelta(seconds=1), timedelta(seconds=2), timedelta(seconds=4)], waits
    # Each retry ran when it was due, not a sweep later and not before.
    for earlier, later in zip(failures, failures[1:3], strict=False):
        due = _naive(datetime.fromisoformat(earlier.details["retry_at"]))
        assert timedelta(0) <= _naive(later.at) - due < TIMER_LAG + timedelta(seconds=SWEEP_INTERVAL_SECONDS)

    bot.idp.start()
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "revoked", timeout=30)
    last = _events(bot, request_id, "revocation_failed")[-1]
    grant = bot.grant(request_id)
    assert grant.revoked_at is not None
    due = _naive(datetime.fromisoformat(last.details["retry_at"]))
    assert timedelta(0) <= _naive(grant.revoked_at) - due < TIMER_LAG + timedelta(seconds=SWEEP_INTERVAL_SECONDS)


@pytest.fixture
def replica_without_idp(
    minting_bot: MintingBot, database_url: str, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> Iterator[Bot]:
    """A second bot on the same database with no IdP configured: it records approvals and mints nothing,
    like a replica that died between committing an approval and starting its mint. Its clock is behind,
    so its approvals are nearly old enough to be resumed (the minting bot's clock must stay true: the
    IdP checks the assertion's times)."""
    clock = MovableClock()
    clock.advance(-(APPROVED_UNMINTED_AFTER - REPLICA_HEAD_START))
    with serving(minting_bot.engine, database_url, policy, slack, delivery, clock=clock) as replica:
        yield replica


def test_an_approval_whose_mint_never_started_is_minted_later(
    minting_bot: MintingBot, replica_without_idp: Bot
) -> None:
    bot, replica = minting_bot, replica_without_idp
    request_id, channel, ts = replica.request(REQUESTER, "request prod-db read 30m left behind")
    replica.click(APPROVER_1, ActionId.APPROVE, request_id, channel=channel, ts=ts)
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "approved")
    # Housekeeping leaves a young approval alone: its own mint may still be on the way.
    time.sleep(SWEEP_INTERVAL_SECONDS + 0.5)
    assert bot.stored(request_id).status == "approved"
    assert bot.idp.stats()["exchanges"] == 0

    # Once it is APPROVED_UNMINTED_AFTER old, the next housekeeping round mints it.
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "active", timeout=15)
    assert bot.idp.stats()["exchanges"] == 1
    assert len(_events(bot, request_id, "mint_started")) == 1
    token = httpx.get(bot.pickup_url(request_id), headers={"Accept": "application/json"}).json()["access_token"]
    assert bot.idp.introspect(token)["active"] is True
