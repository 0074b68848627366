"""Reads and guarded writes on grants."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from bot.store.models import Grant


def add_grant(*, session: Session, grant: Grant) -> None:
    session.add(grant)
    session.flush()


def get_grant(*, session: Session, request_id: str) -> Grant | None:
    return session.get(Grant, request_id)


def claim_pickup(*, session: Session, hashed: str, now: datetime) -> bool:
    """Mark a pickup link used, if it is live. Exactly one caller ever gets True for a link."""
    result = session.execute(
        update(Grant)
        .where(
            col(Grant.pickup_hash) == hashed,
            col(Grant.picked_up_at).is_(None),
            col(Grant.pickup_expires_at) > now,
            col(Grant.status) == "active",
        )
        .values(picked_up_at=now)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def get_grant_by_pickup(*, session: Session, hashed: str) -> Grant | None:
    return session.exec(select(Grant).where(Grant.pickup_hash == hashed)).first()
