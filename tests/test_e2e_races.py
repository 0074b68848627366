"""Concurrent clicks: whatever the interleaving, state changes exactly once and one DM goes out."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlmodel import Session, select

from bot.domain.policy import Policy
from bot.slack.ids import ActionId
from bot.store.models import Vote
from tests.harness import TEAM_ID
from tests.testbot import Bot, deny_form
from tests.world import APPROVER_1, APPROVER_2, REQUESTER, lifted_quota, make_policy

ROUNDS = 50


@pytest.fixture
def policy() -> Policy:
    # Some rounds leave their request pending; the default quota of 5 would refuse the sixth.
    return make_policy(**lifted_quota(100))


def _click_together(bot: Bot, clicks: list[tuple[str, ActionId]], request_id: str, channel: str, ts: str) -> None:
    _post_together(bot, [bot.click_body(user, action, request_id, channel=channel, ts=ts) for user, action in clicks])


def _post_together(bot: Bot, bodies: list[str]) -> None:
    """Release all requests at once from separate threads, so they reach the app concurrently."""
    barrier = threading.Barrier(len(bodies))
    statuses: list[int] = []

    def fire(body: str) -> None:
        barrier.wait()
        statuses.append(bot.send.post_signed(body).status_code)

    threads = [threading.Thread(target=fire, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * len(bodies)


def _outcome_dms(bot: Bot, request_id: str) -> int:
    return len(bot.dms_to(REQUESTER, request_id))


def _settled(bot: Bot, request_id: str, expected_events: int) -> list[str]:
    """Wait until both clicks are fully processed (each leaves exactly one audit event)."""
    bot.slack.wait_for(lambda: len(bot.audit(request_id)) >= expected_events)
    return [e.event_type for e in bot.audit(request_id)]


def test_two_approvers_racing_change_state_once(bot: Bot) -> None:
    for round_no in range(ROUNDS):
        request_id, channel, ts = bot.request(REQUESTER, f"request prod-db read 30m race {round_no}")
        _click_together(bot, [(APPROVER_1, ActionId.APPROVE), (APPROVER_2, ActionId.APPROVE)], request_id, channel, ts)

        # submitted + card_posted, then the winner's vote_cast + request_approved, the loser's refusal.
        events = _settled(bot, request_id, 5)
        counts = Counter(events)
        assert counts["request_approved"] == 1, events
        assert counts["vote_cast"] == 1, events
        assert counts["unauthorized_attempt"] == 1, events
        assert bot.stored(request_id).status == "approved"
        bot.slack.wait_for(lambda rid=request_id: _outcome_dms(bot, rid) >= 1)
        with Session(bot.engine) as session:
            votes = session.exec(select(Vote).where(Vote.request_id == request_id)).all()
        assert len(votes) == 1
        assert bot.stored(request_id).decided_by == votes[0].voter_slack_id
    # Every round's late work is done by now; each request got exactly one outcome DM.
    assert len(bot.dms_to(REQUESTER)) == ROUNDS


def test_approve_and_deny_racing_decide_once(bot: Bot) -> None:
    outcomes: Counter[str] = Counter()
    for round_no in range(20):
        request_id, channel, ts = bot.request(REQUESTER, f"request prod-db read 30m race {round_no}")
        # Deny needs a reason first: open the modal, then race its submission against an Approve click.
        view = bot.open_deny_modal(APPROVER_2, request_id)
        deny_body = bot.send.payload_body(
            {
                "type": "view_submission",
                "user": {"id": APPROVER_2},
                "team": {"id": TEAM_ID},
                "view": {**view, "state": {"values": deny_form("no")}},
            }
        )
        approve_body = bot.click_body(APPROVER_1, ActionId.APPROVE, request_id, channel=channel, ts=ts)
        _post_together(bot, [deny_body, approve_body])
        events = _settled(bot, request_id, 5)
        decided = [e for e in events if e in ("request_approved", "request_denied")]
        assert len(decided) == 1, events
        assert Counter(events)["unauthorized_attempt"] == 1, events
        outcomes[decided[0]] += 1
        bot.slack.wait_for(lambda rid=request_id: _outcome_dms(bot, rid) >= 1)
        assert _outcome_dms(bot, request_id) == 1
    assert sum(outcomes.values()) == 20


def test_double_click_by_one_approver_counts_once(bot: Bot) -> None:
    for round_no in range(20):
        request_id, channel, ts = bot.request(REQUESTER, f"request billing read 15m race {round_no}")
        _click_together(bot, [(APPROVER_1, ActionId.APPROVE), (APPROVER_1, ActionId.APPROVE)], request_id, channel, ts)
        events = _settled(bot, request_id, 4)
        assert Counter(events)["vote_cast"] == 1, events
        assert Counter(events)["unauthorized_attempt"] == 1, events
        assert bot.stored(request_id).status == "pending", "2 approvals needed; one approver counts once"
