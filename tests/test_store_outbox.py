"""The outbox table: a card update replaces the queued older versions of the same card."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.services.notices import ApprovalCard, CardChanged
from bot.store import outbox as outbox_store
from bot.store.db import session_scope
from bot.store.models import OutboxMessage

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _message(kind: str, lane: str = "card:R1") -> dict[str, Any]:
    return {"lane": lane, "channel": "C0APPROVERS", "kind": kind, "request_id": "R1", "payload": {}, "secret": None}


def _statuses(engine: Engine) -> list[tuple[str, str, str]]:
    with Session(engine) as session:
        rows = session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()
        return [(r.lane, r.kind, r.status) for r in rows]


def test_a_card_update_replaces_the_older_updates_of_that_card_still_waiting(engine: Engine) -> None:
    assert outbox_store.CARD_CHANGED == CardChanged.kind == "card_changed"
    with session_scope(engine) as session:
        outbox_store.add_many(
            session=session,
            messages=[
                _message(ApprovalCard.kind),
                _message(CardChanged.kind),
                _message(CardChanged.kind, lane="card:R2"),
                _message("requester_told", lane="dm:U1"),
            ],
            now=NOW,
        )
    # The first update of card R1 is being sent right now: it is left to finish.
    with session_scope(engine) as session:
        claimed = outbox_store.claim(
            session=session, ids=[2], now=NOW, claim_id="worker", lease_until=NOW + timedelta(minutes=1)
        )
    assert [c.id for c in claimed] == [2]
    with session_scope(engine) as session:
        outbox_store.add_many(session=session, messages=[_message(CardChanged.kind)], now=NOW)
        outbox_store.add_many(session=session, messages=[_message(CardChanged.kind)], now=NOW)
    assert _statuses(engine) == [
        ("card:R1", "approval_card", "pending"),  # a card is never replaced by its updates
        ("card:R1", "card_changed", "sending"),
        ("card:R2", "card_changed", "pending"),  # another card's update stays
        ("dm:U1", "requester_told", "pending"),
        ("card:R1", "card_changed", "superseded"),  # replaced by the next one, unsent
        ("card:R1", "card_changed", "pending"),
    ]


def test_a_held_message_is_not_due_before_its_moment(engine: Engine) -> None:
    later = NOW + timedelta(seconds=1)
    with session_scope(engine) as session:
        outbox_store.add_many(session=session, messages=[{**_message(CardChanged.kind), "not_before": later}], now=NOW)
    with Session(engine) as session:
        assert outbox_store.candidates(session=session, now=NOW, skip_channels=[], limit=10) == []
        (due,) = outbox_store.candidates(session=session, now=later, skip_channels=[], limit=10)
    assert due.channel == "C0APPROVERS"
