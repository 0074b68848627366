"""Reads and guarded writes for access that ends when its reason does (``bot.services.context``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from bot.domain.status import GrantStatus
from bot.store.models import AccessRequest, Grant, UsergroupCheck


@dataclass(frozen=True)
class ContextGrant:
    """A live grant whose auto-approval rested on the requester's usergroups."""

    request_id: str
    requester: str
    rule: str | None
    usergroups: tuple[str, ...]


def live_context_grants(*, session: Session, now: datetime) -> list[ContextGrant]:
    """Active, handed-out grants not being ended, whose request recorded context usergroups."""
    rows = session.exec(
        select(AccessRequest.id, AccessRequest.requester_slack_id, AccessRequest.rule, AccessRequest.context_usergroups)
        .join(Grant, col(Grant.request_id) == col(AccessRequest.id))
        .where(
            col(AccessRequest.context_usergroups).is_not(None),
            col(Grant.status) == GrantStatus.ACTIVE.value,
            col(Grant.refusal).is_(None),
            col(Grant.revoke_requested_by).is_(None),
            col(Grant.expires_at) > now,
        )
        .order_by(col(AccessRequest.id))
    ).all()
    return [
        ContextGrant(str(rid), str(requester), rule, tuple(str(groups or "").split()))
        for rid, requester, rule, groups in rows
        if groups
    ]


def note_failure(*, session: Session, usergroup: str, now: datetime, error: str) -> int:
    """Count one more failed read of ``usergroup`` in a row; returns the count. The row is made if
    missing (ON CONFLICT DO NOTHING: replicas may both try), then counted by one guarded UPDATE."""
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    made = insert(UsergroupCheck).values(usergroup=usergroup, failures=0)
    session.execute(made.on_conflict_do_nothing(index_elements=["usergroup"]))
    counted = session.execute(
        update(UsergroupCheck)
        .where(col(UsergroupCheck.usergroup) == usergroup)
        .values(
            failures=col(UsergroupCheck.failures) + 1,
            failing_since=func.coalesce(col(UsergroupCheck.failing_since), now),
            last_error=error[:80],
        )
        .returning(col(UsergroupCheck.failures))
    ).one()
    return int(counted[0])


def claim_alert(*, session: Session, usergroup: str, now: datetime, after: int) -> bool:
    """Whether this transaction is the one to alert the failures of ``usergroup`` (at least
    ``after`` in a row, none alerted yet in this run of them): at most one ever gets True per run."""
    result = session.execute(
        update(UsergroupCheck)
        .where(
            col(UsergroupCheck.usergroup) == usergroup,
            col(UsergroupCheck.failures) >= after,
            col(UsergroupCheck.alerted_at).is_(None),
        )
        .values(alerted_at=now)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def failing(*, session: Session) -> set[str]:
    """The usergroups whose last read failed (a cheap read, so a healthy run writes nothing)."""
    rows = session.exec(select(UsergroupCheck.usergroup).where(col(UsergroupCheck.failures) > 0)).all()
    return {str(row) for row in rows}


def note_success(*, session: Session, usergroup: str) -> tuple[int, bool] | None:
    """The usergroup was read: its run of failures is over. Returns that run (how many failures, and
    whether it was alerted), or None when another replica ended it first, so one says it recovered."""
    seen = session.exec(
        select(UsergroupCheck.failures, UsergroupCheck.alerted_at).where(
            col(UsergroupCheck.usergroup) == usergroup, col(UsergroupCheck.failures) > 0
        )
    ).first()
    if seen is None:
        return None
    failures, alerted_at = seen
    # Guarded on the count read: of replicas ending one run, one wins (RETURNING would show the reset row).
    result = session.execute(
        update(UsergroupCheck)
        .where(col(UsergroupCheck.usergroup) == usergroup, col(UsergroupCheck.failures) == failures)
        .values(failures=0, failing_since=None, last_error=None, alerted_at=None)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return int(failures), alerted_at is not None
