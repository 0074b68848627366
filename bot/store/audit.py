"""The append-only, hash-chained audit trail."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlmodel import Session, col, select

from bot.store.models import AuditEvent, AuditHead

GENESIS = "0" * 64


def event_digest(
    *,
    prev_hash: str,
    seq: int,
    at: datetime,
    event_type: str,
    actor: str,
    request_id: str | None,
    details: dict[str, Any],
) -> str:
    canonical = json.dumps(
        {
            "seq": seq,
            "at": at.isoformat(timespec="microseconds"),
            "event_type": event_type,
            "actor": actor,
            "request_id": request_id,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def append_event(
    *,
    session: Session,
    at: datetime,
    event_type: str,
    actor: str,
    request_id: str | None,
    details: dict[str, Any],
) -> None:
    """Append one event. Plain SQL statements rather than ORM objects: this runs in every
    transaction the bot makes, and the unit-of-work bookkeeping was most of its cost."""
    # FOR UPDATE serialises appenders on PostgreSQL; SQLite's BEGIN IMMEDIATE already did.
    head_seq, head_hash = session.execute(
        select(AuditHead.seq, AuditHead.hash).where(col(AuditHead.id) == 1).with_for_update()
    ).one()
    seq = head_seq + 1
    # Round-trip through JSON now, so the digest is over exactly what the database will give back.
    stored_details = json.loads(json.dumps(details, sort_keys=True))
    digest = event_digest(
        prev_hash=head_hash,
        seq=seq,
        at=at,
        event_type=event_type,
        actor=actor,
        request_id=request_id,
        details=stored_details,
    )
    session.execute(
        insert(AuditEvent).values(
            seq=seq,
            at=at,
            event_type=event_type,
            actor=actor,
            request_id=request_id,
            details=stored_details,
            prev_hash=head_hash,
            hash=digest,
        )
    )
    session.execute(update(AuditHead).where(col(AuditHead.id) == 1).values(seq=seq, hash=digest))


@dataclass(frozen=True)
class ChainReport:
    events: int
    first_bad_seq: int | None
    problem: str | None

    @property
    def intact(self) -> bool:
        return self.problem is None


def iter_events(*, session: Session, request_id: str | None = None, batch: int = 1000) -> Iterator[AuditEvent]:
    last = 0
    while True:
        query = select(AuditEvent).where(col(AuditEvent.seq) > last)
        if request_id is not None:
            query = query.where(AuditEvent.request_id == request_id)
        rows = session.exec(query.order_by(col(AuditEvent.seq)).limit(batch)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def verify_chain(*, session: Session) -> ChainReport:
    """Recompute every link; any edited, removed or reordered event breaks the chain from there on."""
    prev_hash = GENESIS
    expected_seq = 1
    count = 0
    for event in iter_events(session=session):
        if event.seq != expected_seq:
            return ChainReport(count, expected_seq, f"event {expected_seq} is missing")
        if event.prev_hash != prev_hash:
            return ChainReport(count, event.seq, f"event {event.seq} does not link to event {event.seq - 1}")
        digest = event_digest(
            prev_hash=prev_hash,
            seq=event.seq,
            at=event.at,
            event_type=event.event_type,
            actor=event.actor,
            request_id=event.request_id,
            details=event.details,
        )
        if digest != event.hash:
            return ChainReport(count, event.seq, f"event {event.seq} was altered after it was written")
        prev_hash = event.hash
        expected_seq += 1
        count += 1
    head = session.get(AuditHead, 1)
    if head is not None and (head.seq != count or head.hash != prev_hash):
        return ChainReport(count, count + 1, f"the chain ends at event {count} but {head.seq} were written")
    return ChainReport(count, None, None)
