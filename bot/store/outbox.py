"""The outbox: messages for Slack, stored with the change they report, claimed and delivered by workers.

Rows of one lane are delivered strictly in id order: a worker may only claim a lane's oldest
undelivered row, so a card update never overtakes the post that created the card. Claims are
exclusive (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite) and leased, so
replicas deliver each message once, and a worker that dies loses its claim when the lease ends.

Statements run on the session's connection, in its transaction, without the ORM: outbox rows never
become objects, and the ORM's work around each statement cost more than the statement.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, text, update
from sqlalchemy.sql.dml import Update
from sqlmodel import Session, col, select

from bot.store.models import OutboxMessage


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"  # Slack refused it for good; the sender acted on that
    SUPERSEDED = "superseded"  # a newer version of the same card was queued behind it
    DROPPED = "dropped"  # nothing left to deliver to (a card that was never posted)


# The kind of a card update (bot.services.notices.CardChanged), which the next one replaces.
CARD_CHANGED = "card_changed"
# The predicate of the partial indexes on open messages (models.OutboxMessage), as they spell it:
# written with parameters instead, a prepared statement's generic plan cannot use those indexes.
_OPEN_ROWS = text("outbox.status IN ('pending', 'sending')")
DONE = (OutboxStatus.SENT.value, OutboxStatus.FAILED.value, OutboxStatus.SUPERSEDED.value, OutboxStatus.DROPPED.value)


@dataclass(frozen=True)
class Claimed:
    id: int
    lane: str
    channel: str
    kind: str
    request_id: str | None
    payload: dict[str, Any]
    secret: bytes | None
    attempts: int


def add_many(*, session: Session, messages: list[dict[str, Any]], now: datetime) -> None:
    """Several messages (lane, channel, kind, request_id, payload, secret, not_before) in one INSERT,
    in order. A card update replaces the updates of the same card still waiting to be sent: each is
    the whole card, so only the newest matters (one being sent now is left to finish)."""
    if not messages:
        return
    card_lanes = sorted({m["lane"] for m in messages if m["kind"] == CARD_CHANGED})
    if card_lanes:
        session.connection().execute(
            update(OutboxMessage)
            .where(
                # Spelled as the partial index's predicate, so this is an index lookup per lane
                # whatever the parameters (the delivered history would be a full scan).
                _OPEN_ROWS,
                text("outbox.status = 'pending'"),
                col(OutboxMessage.lane).in_(card_lanes),
                col(OutboxMessage.kind) == CARD_CHANGED,
            )
            .values(status=OutboxStatus.SUPERSEDED.value, last_error=None)
        )
    rows = [
        {
            **{k: v for k, v in m.items() if k != "not_before"},
            "status": OutboxStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": m.get("not_before") or now,
            "created_at": now,
        }
        for m in messages
    ]
    session.connection().execute(insert(OutboxMessage), rows)


@dataclass(frozen=True)
class Candidate:
    id: int
    channel: str


def _due(now: Any) -> Any:
    row = OutboxMessage
    return or_(
        and_(col(row.status) == OutboxStatus.PENDING.value, col(row.next_attempt_at) <= now),
        and_(col(row.status) == OutboxStatus.SENDING.value, col(row.lease_until) <= now),
    )


@functools.cache
def _candidates_statement(per_channel: int) -> Any:
    """Built once per shape (on first use): the pump runs this query after nearly every commit, and
    building the expression each time cost more than running it.

    The oldest ``per_channel`` due lane heads of each channel, so a backlog in one busy channel never
    hides the messages waiting for the others.
    """
    row = OutboxMessage
    # A lane's head is its oldest open message. Finding the heads by grouping is linear in the open
    # messages; the former "no earlier open message in this lane" anti-join was quadratic in a lane's
    # backlog (24 ms for 1,500 open messages, run after nearly every commit). The predicate is the
    # partial indexes' own text, so the planner can use them with any parameters.
    lane_heads = (
        select(func.min(col(row.id)).label("id")).where(_OPEN_ROWS).group_by(col(row.lane)).subquery("lane_heads")
    )
    heads = (
        select(
            col(row.id).label("id"),
            col(row.channel).label("channel"),
            func.row_number().over(partition_by=col(row.channel), order_by=col(row.id)).label("nth"),
        )
        .join(lane_heads, lane_heads.c.id == col(row.id))
        .where(_OPEN_ROWS, _due(bindparam("now")), col(row.channel).not_in(bindparam("skip", expanding=True)))
        .subquery()
    )
    return (
        select(heads.c.id, heads.c.channel)
        .where(heads.c.nth <= per_channel)
        .order_by(heads.c.id)
        .limit(bindparam("limit"))
    )


def candidates(
    *, session: Session, now: datetime, skip_channels: Collection[str], limit: int, per_channel: int = 1
) -> list[Candidate]:
    """The oldest due lane heads of each channel outside ``skip_channels``, oldest first. A read: it
    takes no lock, so a worker with nothing to send never queues behind the database's writers."""
    rows = (
        session.connection()
        .execute(
            _candidates_statement(per_channel), {"now": now, "skip": sorted(skip_channels) or [""], "limit": limit}
        )
        .all()
    )
    return [Candidate(int(r[0]), str(r[1])) for r in rows]


def claim(
    *, session: Session, ids: Collection[int], now: datetime, claim_id: str, lease_until: datetime
) -> list[Claimed]:
    """Claim these candidates, those still due: another worker may have claimed one since it was read.

    A lane's head stays its head until it is delivered (later messages have higher ids, and an earlier
    one never reopens), so only "still due" needs checking again. On PostgreSQL a candidate that another
    replica is claiming at the same moment is locked; this waits, finds it no longer due, and skips it.
    """
    if not ids:
        return []
    result = session.connection().execute(
        update(OutboxMessage)
        .where(col(OutboxMessage.id).in_(list(ids)), _due(now))
        .values(status=OutboxStatus.SENDING.value, claim_id=claim_id, lease_until=lease_until)
        .returning(
            col(OutboxMessage.id),
            col(OutboxMessage.lane),
            col(OutboxMessage.channel),
            col(OutboxMessage.kind),
            col(OutboxMessage.request_id),
            col(OutboxMessage.payload),
            col(OutboxMessage.secret),
            col(OutboxMessage.attempts),
        )
    )
    claimed = [Claimed(*r) for r in result.all()]
    return sorted(claimed, key=lambda c: c.id)


def _held(message_id: int, claim_id: str) -> Update:
    """An update of one message, only while this claim still holds it (a lapsed lease loses it)."""
    return update(OutboxMessage).where(
        col(OutboxMessage.id) == message_id,
        col(OutboxMessage.claim_id) == claim_id,
        col(OutboxMessage.status) == OutboxStatus.SENDING.value,
    )


def renew(*, session: Session, claim_id: str, ids: Collection[int], lease_until: datetime) -> None:
    if ids:
        session.connection().execute(
            update(OutboxMessage)
            .where(col(OutboxMessage.id).in_(list(ids)), col(OutboxMessage.claim_id) == claim_id)
            .where(col(OutboxMessage.status) == OutboxStatus.SENDING.value)
            .values(lease_until=lease_until)
        )


def finish(
    *,
    session: Session,
    message_id: int,
    claim_id: str,
    status: OutboxStatus,
    now: datetime,
    error: str | None = None,
) -> bool:
    """Close a claimed message (sent, failed, superseded, dropped); the secret is wiped. False if the
    claim was lost meanwhile (the lease ran out and another worker took it)."""
    result = session.connection().execute(
        _held(message_id, claim_id).values(
            status=status.value,
            sent_at=now if status is OutboxStatus.SENT else None,
            lease_until=None,
            secret=None,
            last_error=error[:300] if error else None,
        )
    )
    return bool(result.rowcount == 1)


def retry(
    *, session: Session, message_id: int, claim_id: str, at: datetime, error: str, count_attempt: bool = True
) -> bool:
    """Put a claimed message back, due at ``at``. A pacing hold is not an attempt."""
    result = session.connection().execute(
        _held(message_id, claim_id).values(
            status=OutboxStatus.PENDING.value,
            next_attempt_at=at,
            lease_until=None,
            attempts=col(OutboxMessage.attempts) + (1 if count_attempt else 0),
            last_error=error[:300],
        )
    )
    return bool(result.rowcount == 1)


def newer_in_lane(*, session: Session, lane: str, after_id: int, kind: str) -> bool:
    """Is a later message of the same kind waiting in this lane (so this one is out of date)?"""
    found = session.exec(
        select(OutboxMessage.id)
        .where(
            col(OutboxMessage.lane) == lane,
            col(OutboxMessage.id) > after_id,
            col(OutboxMessage.kind) == kind,
            _OPEN_ROWS,
        )
        .limit(1)
    ).first()
    return found is not None


def purge(*, session: Session, before: datetime, limit: int = 1000) -> int:
    """Forget delivered (or given-up) messages older than ``before``; the audit trail is the record."""
    old = (
        select(OutboxMessage.id)
        .where(col(OutboxMessage.status).in_(DONE), col(OutboxMessage.created_at) < before)
        .limit(limit)
    )
    result = session.connection().execute(delete(OutboxMessage).where(col(OutboxMessage.id).in_(old.scalar_subquery())))
    return int(result.rowcount)
