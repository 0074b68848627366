"""Reads and guarded writes on access requests and votes.

Status changes go through ``bot.store.transitions.move_request`` (or, for the timeout sweep, the
bulk move here): an ``UPDATE … WHERE status = <expected>`` whose winner alone may act on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from bot.domain.replay import Recorded
from bot.domain.status import OPEN_REQUEST_STATUSES, REQUEST_TRANSITIONS, RequestStatus, check_transition
from bot.store.models import AccessRequest, Vote
from bot.store.transitions import BOT_ACTOR


def add_request(*, session: Session, request: AccessRequest) -> None:
    session.add(request)
    session.flush()


def get_request(*, session: Session, request_id: str, fresh: bool = False) -> AccessRequest | None:
    """``fresh``: read the row again even if this session holds it (guarded UPDATEs bypass the session)."""
    return session.get(AccessRequest, request_id, populate_existing=fresh)


def lock_if_status(*, session: Session, request_id: str, status: RequestStatus, now: datetime) -> bool:
    """Take the row lock on a request only if it is still in ``status``.

    On PostgreSQL a concurrent transaction blocks here until ours ends and then re-checks the status;
    on SQLite the whole database is already ours (BEGIN IMMEDIATE). Either way the caller holds the
    request exclusively for the rest of the transaction when this returns True.
    """
    result = session.execute(
        update(AccessRequest)
        .where(col(AccessRequest.id) == request_id, col(AccessRequest.status) == status.value)
        .values(updated_at=now)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def set_card(*, session: Session, request_id: str, channel: str, ts: str) -> None:
    session.execute(
        update(AccessRequest).where(col(AccessRequest.id) == request_id).values(card_channel=channel, card_ts=ts)
    )


def votes_for(*, session: Session, request_id: str) -> Sequence[Vote]:
    return session.exec(select(Vote).where(Vote.request_id == request_id).order_by(col(Vote.id))).all()


def add_vote(*, session: Session, vote: Vote) -> None:
    session.add(vote)
    session.flush()


def expire_stale_pending(*, session: Session, created_before: datetime, now: datetime, limit: int) -> list[str]:
    """pending -> expired for requests older than the timeout; returns the ids this call moved.

    A concurrent replica's identical UPDATE waits on the row locks and then finds the rows no longer
    pending, so each request is expired (and announced) once.
    """
    check_transition(REQUEST_TRANSITIONS, RequestStatus.PENDING, RequestStatus.EXPIRED)
    stale = (
        select(AccessRequest.id)
        .where(
            col(AccessRequest.status) == RequestStatus.PENDING.value, col(AccessRequest.created_at) <= created_before
        )
        .order_by(col(AccessRequest.created_at))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(
        update(AccessRequest)
        .where(
            col(AccessRequest.id).in_(stale.scalar_subquery()),
            col(AccessRequest.status) == RequestStatus.PENDING.value,
        )
        .values(status=RequestStatus.EXPIRED.value, decided_at=now, updated_at=now)
        .returning(col(AccessRequest.id))
    )
    return [row[0] for row in result.all()]


def ids_in_status(*, session: Session, status: RequestStatus, updated_before: datetime, limit: int) -> list[str]:
    return list(
        session.exec(
            select(AccessRequest.id)
            .where(col(AccessRequest.status) == status.value, col(AccessRequest.updated_at) <= updated_before)
            .order_by(col(AccessRequest.updated_at))
            .limit(limit)
        ).all()
    )


def open_requests_of(*, session: Session, requester: str) -> Sequence[AccessRequest]:
    return session.exec(
        select(AccessRequest)
        .where(
            AccessRequest.requester_slack_id == requester,
            col(AccessRequest.status).in_([s.value for s in OPEN_REQUEST_STATUSES]),
        )
        .order_by(col(AccessRequest.created_at))
    ).all()


def count_in_status(*, session: Session, requester: str, statuses: frozenset[RequestStatus]) -> int:
    return int(
        session.exec(
            select(func.count())
            .select_from(AccessRequest)
            .where(
                AccessRequest.requester_slack_id == requester,
                col(AccessRequest.status).in_([s.value for s in statuses]),
            )
        ).one()
    )


def count_by_rule_since(*, session: Session, requester: str, rule: str, since: datetime) -> int:
    """Requests of ``requester`` that ``rule`` auto-approved since ``since`` (ix_access_request_requester_rule).

    An auto-approved request is stored needing no approvals; a Rego rule that required people or
    denied also names itself on the request, and is not counted."""
    return int(
        session.exec(
            select(func.count())
            .select_from(AccessRequest)
            .where(
                AccessRequest.requester_slack_id == requester,
                AccessRequest.rule == rule,
                AccessRequest.approvals_required == 0,
                col(AccessRequest.created_at) >= since,
            )
        ).one()
    )


def request_by_origin(*, session: Session, origin: str) -> AccessRequest | None:
    return session.exec(select(AccessRequest).where(AccessRequest.origin == origin)).first()


def requests_since(*, session: Session, since: datetime, batch: int = 1000) -> Iterator[AccessRequest]:
    """Every request created at or after ``since``, oldest first, fetched ``batch`` rows at a time so a
    replay of months of requests holds only one batch in memory (created_at is indexed)."""
    query = (
        select(AccessRequest)
        .where(col(AccessRequest.created_at) >= since)
        .order_by(col(AccessRequest.created_at), col(AccessRequest.id))
        .execution_options(yield_per=batch)
    )
    yield from session.exec(query)


def recorded_since(*, session: Session, since: datetime) -> Iterator[Recorded]:
    """The requests created since ``since``, as ``jit-bot policy replay`` decides them again."""
    glass: dict[str, bool] = {}  # request id: its chain began with /jit breakglass
    for row in requests_since(session=session, since=since):
        glass[row.id] = row.break_glass or (
            row.extends is not None and _began_with_break_glass(session, row.extends, glass)
        )
        if row.break_glass:
            # Opened with /jit breakglass, which no rule decides: deciding it again would report a
            # change that no policy could have made.
            continue
        yield Recorded(
            id=row.id,
            created_at=row.created_at,
            requester=row.requester_slack_id,
            subject=row.requester_subject,
            resource=row.resource,
            scopes=row.scope_list,
            duration=timedelta(seconds=row.duration_seconds),
            reason=row.reason,
            status=row.status,
            approvals_required=row.approvals_required,
            rule=row.rule,
            # A rule's own decision (no vote) is recorded as decided by the bot, with the rule named.
            decided_by_rule=row.rule is not None and row.decided_by == BOT_ACTOR,
            extension=row.extends is not None,
            break_glass_chain=glass[row.id],
        )


def _began_with_break_glass(session: Session, request_id: str, known: dict[str, bool]) -> bool:
    """Whether the chain ``request_id`` is a link of began with /jit breakglass (``known``: links
    already looked at; a link made before the replay's window is read from the store)."""
    if request_id not in known:
        row = session.get(AccessRequest, request_id)
        known[request_id] = row is not None and (
            row.break_glass or (row.extends is not None and _began_with_break_glass(session, row.extends, known))
        )
    return known[request_id]


def latest_extension(*, session: Session, request_id: str) -> tuple[str, str] | None:
    """The newest extension asked of this request's grant, as (id, status), or None (ix_access_request_extends)."""
    row = session.exec(
        select(AccessRequest.id, AccessRequest.status)
        .where(col(AccessRequest.extends) == request_id)
        .order_by(col(AccessRequest.created_at).desc(), col(AccessRequest.id).desc())
        .limit(1)
    ).first()
    return (str(row[0]), str(row[1])) if row is not None else None
