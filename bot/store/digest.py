"""The daily digest's figures, each one SQL aggregation over indexed columns: nothing here loads a table.

Every query is bounded by the plan's moments (``bot.domain.digest.DigestPlan``) on an indexed column:
audit events by ``(event_type, at)`` (migration 0007), requests by ``created_at``, votes by
``created_at`` (0007), grants by their primary key or ``(status, expires_at)``. What comes back is
counts, short ranked lists and a histogram, whatever the size of the trail.

The audit trail is the record of what happened and when: a request's row says only where it is now
(an approved request that failed to mint is ``failed``), so the day's counts are counted from events.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Numeric, and_, case, cast, desc, false, func, not_, or_, select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from bot.domain.audit import AuditEventType
from bot.domain.digest import (
    APPROVES_EVERYTHING_VOTES,
    FAST_APPROVAL_SECONDS,
    SAME_PAIR_APPROVALS,
    TOP,
    ApproverVotes,
    AuditAnchor,
    BreakGlassLine,
    DigestPlan,
    FastApproval,
    Figures,
    GrantLine,
    Ranked,
    RepeatedPair,
    Span,
)
from bot.domain.status import GrantStatus, VoteChoice
from bot.store.audit import verify_chain
from bot.store.models import AccessRequest, AuditEvent, AuditHead, BreakGlassAlert, DigestDay, Grant, Vote
from bot.store.transitions import BOT_ACTOR

E = AuditEventType
# Event type -> the count it adds to. A request approved by the bot is a rule's auto-approval; one
# approved by anyone else was approved by the vote that completed it.
_COUNTED = {
    E.REQUEST_SUBMITTED: "requested",
    E.REQUEST_DENIED: "denied",
    E.REQUEST_EXPIRED: "expired",
    E.REQUEST_CANCELLED: "cancelled",
    E.MINT_FAILED: "failed_mints",
    # Each failed revocation attempt (the alerts for three failures and for a token still active
    # come from these), and each watchdog alert for a grant not revoked long after its expiry.
    E.REVOCATION_FAILED: "revocation_failures",
    E.REVOCATION_OVERDUE: "revocation_failures",
    # A break-glass use is its own count: it is neither a person's approval nor a rule's.
    E.BREAK_GLASS_USED: "break_glass",
}
_DECISIONS = (E.REQUEST_APPROVED.value, E.REQUEST_DENIED.value)


def _within(column: Any, span: Span) -> ColumnElement[bool]:
    return and_(column >= span.start, column < span.end)


def _seconds_between(dialect: str, later: Any, earlier: Any) -> ColumnElement[Any]:
    """``later - earlier`` in seconds, rounded to the millisecond (SQLite's julianday carries about
    0.05 ms of floating-point noise, which must not push exactly 10 s past a threshold)."""
    if dialect == "postgresql":
        difference: ColumnElement[Any] = func.date_part("epoch", later - earlier)
    else:
        difference = (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.round(cast(difference, Numeric), 3)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _one_snapshot(session: Session) -> None:
    """Make every read of the session's transaction see the database as of its first read, so the
    figures agree with each other and a verify is not confused by events appended while it runs
    (the head row read after the last event would be ahead of it). SQLite's read transaction already
    is one snapshot; PostgreSQL's default isolation takes a new one per statement."""
    if _dialect(session) == "postgresql" and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def read_figures(*, session: Session, plan: DigestPlan) -> Figures:
    """Call it first in a read-only session (``read_scope``), before ``audit_anchor``: both then read one snapshot."""
    _one_snapshot(session)
    dialect = _dialect(session)
    return Figures(
        daily=_daily_counts(session, plan),
        top_requesters=_top(session, plan, col(AccessRequest.requester_slack_id)),
        top_resources=_top(session, plan, col(AccessRequest.resource)),
        decision_seconds=_decision_histogram(session, plan, dialect),
        off_hours_grants=_off_hours(session, plan),
        denied_more_than_once=_denied_more_than_once(session, plan),
        never_picked_up=_never_picked_up(session, plan),
        longest_grants=_grants_of_the_day(session, plan, widest=False),
        widest_grants=_grants_of_the_day(session, plan, widest=True),
        fast_approvals=_fast_approvals(session, plan, dialect),
        approves_everything=_approves_everything(session, plan),
        same_pair_repeated=_same_pair_repeated(session, plan),
        unrevoked_past_expiry=_unrevoked(session, plan.unrevoked_before),
        break_glass_grants=_break_glass(session, plan),
        extensions=_extensions(session, plan),
    )


def _daily_counts(session: Session, plan: DigestPlan) -> tuple[dict[str, int], ...]:
    """The counts of every day of the plan in one range scan of (event_type, at)."""
    at = col(AuditEvent.at)
    day = case(*((at < span.end, index) for index, span in enumerate(plan.days[:-1])), else_=len(plan.days) - 1)
    types = [t.value for t in _COUNTED] + [E.REQUEST_APPROVED.value]
    # Grouped outside a subquery: PostgreSQL would not see the CASE in GROUP BY, whose bound
    # parameters are new ones, as the same expression as the one selected.
    events = (
        select(
            day.label("day"),
            col(AuditEvent.event_type).label("event_type"),
            case((col(AuditEvent.actor) == BOT_ACTOR, 1), else_=0).label("by_bot"),
        )
        .where(col(AuditEvent.event_type).in_(types), at >= plan.days[0].start, at < plan.day.end)
        .subquery()
    )
    rows = session.execute(
        select(events.c.day, events.c.event_type, events.c.by_bot, func.count()).group_by(
            events.c.day, events.c.event_type, events.c.by_bot
        )
    ).all()
    daily: list[dict[str, int]] = [defaultdict(int) for _ in plan.days]
    for index, event_type, by_bot, count in rows:
        if event_type == E.REQUEST_APPROVED.value:
            key = "auto_approved" if by_bot else "approved_by_people"
        else:
            key = _COUNTED[E(event_type)]
        daily[index][key] += count
    return tuple(dict(counts) for counts in daily)


def _top(session: Session, plan: DigestPlan, column: Any) -> tuple[Ranked, ...]:
    count = func.count()
    rows = session.execute(
        select(column, count)
        .where(_within(col(AccessRequest.created_at), plan.day))
        .group_by(column)
        .order_by(desc(count), column)
        .limit(TOP)
    ).all()
    return tuple(Ranked(key, n) for key, n in rows)


def _decision_histogram(session: Session, plan: DigestPlan, dialect: str) -> tuple[tuple[float, int], ...]:
    """Seconds from request to a person's decision, grouped by the whole second: the quantiles are
    computed from these (value, count) rows, so a day of thousands of decisions returns at most as
    many rows as distinct durations."""
    seconds = func.round(_seconds_between(dialect, col(AuditEvent.at), col(AccessRequest.created_at)))
    decided = (
        select(seconds.label("seconds"))
        .select_from(AuditEvent)
        .join(AccessRequest, col(AccessRequest.id) == col(AuditEvent.request_id))
        .where(
            col(AuditEvent.event_type).in_(_DECISIONS),
            _within(col(AuditEvent.at), plan.day),
            col(AuditEvent.actor) != BOT_ACTOR,
        )
        .subquery()
    )
    rows = session.execute(select(decided.c.seconds, func.count()).group_by(decided.c.seconds)).all()
    return tuple((float(value), int(count)) for value, count in rows)


def _off_hours(session: Session, plan: DigestPlan) -> tuple[str, ...]:
    """Requests approved (by people or a rule) or whose token was picked up outside business hours."""
    at = col(AuditEvent.at)
    inside = or_(*(_within(at, span) for span in plan.business)) if plan.business else false()
    rows = session.execute(
        select(col(AuditEvent.request_id))
        .distinct()
        .where(
            col(AuditEvent.event_type).in_([E.REQUEST_APPROVED.value, E.TOKEN_PICKED_UP.value]),
            _within(at, plan.day),
            not_(inside),
            col(AuditEvent.request_id).is_not(None),
        )
        .order_by(col(AuditEvent.request_id))
    ).scalars()
    return tuple(rows)


def _denied_more_than_once(session: Session, plan: DigestPlan) -> tuple[str, ...]:
    requester = col(AccessRequest.requester_slack_id)
    rows = session.execute(
        select(requester)
        .select_from(AuditEvent)
        .join(AccessRequest, col(AccessRequest.id) == col(AuditEvent.request_id))
        .where(col(AuditEvent.event_type) == E.REQUEST_DENIED.value, _within(col(AuditEvent.at), plan.day))
        .group_by(requester)
        .having(func.count() >= 2)
        .order_by(requester)
    ).scalars()
    return tuple(rows)


def _never_picked_up(session: Session, plan: DigestPlan) -> tuple[str, ...]:
    """Grants revoked during the day whose token nobody picked up (refused tokens were never offered)."""
    rows = session.execute(
        select(col(Grant.request_id))
        .distinct()
        .select_from(AuditEvent)
        .join(Grant, col(Grant.request_id) == col(AuditEvent.request_id))
        .where(
            col(AuditEvent.event_type) == E.GRANT_REVOKED.value,
            _within(col(AuditEvent.at), plan.day),
            col(Grant.picked_up_at).is_(None),
            col(Grant.refusal).is_(None),
        )
        .order_by(col(Grant.request_id))
    ).scalars()
    return tuple(rows)


def _grants_of_the_day(session: Session, plan: DigestPlan, *, widest: bool) -> tuple[GrantLine, ...]:
    """Grants that became active during the day, longest (approved duration) or widest (most scopes) first."""
    scopes = col(Grant.granted_scopes)
    scope_count = case(
        (func.trim(scopes) == "", 0),
        else_=func.length(func.trim(scopes)) - func.length(func.replace(func.trim(scopes), " ", "")) + 1,
    )
    duration = col(AccessRequest.duration_seconds)
    order = (desc(scope_count), desc(duration)) if widest else (desc(duration), desc(scope_count))
    rows = session.execute(
        select(
            col(AccessRequest.id), col(AccessRequest.requester_slack_id), col(AccessRequest.resource), duration, scopes
        )
        .select_from(AuditEvent)
        .join(AccessRequest, col(AccessRequest.id) == col(AuditEvent.request_id))
        .join(Grant, col(Grant.request_id) == col(AuditEvent.request_id))
        .where(col(AuditEvent.event_type) == E.GRANT_ACTIVE.value, _within(col(AuditEvent.at), plan.day))
        .order_by(*order, col(AccessRequest.id))
        .limit(TOP)
    ).all()
    return tuple(
        GrantLine(request_id, requester, resource, int(seconds), tuple(granted.split()))
        for request_id, requester, resource, seconds, granted in rows
    )


def _fast_approvals(session: Session, plan: DigestPlan, dialect: str) -> tuple[FastApproval, ...]:
    """Approve votes of the day cast within FAST_APPROVAL_SECONDS of the card appearing: the moment
    the bot recorded the card as posted (its card_posted event), or the request's creation if no card
    was recorded (the vote could then only have come later)."""
    card = aliased(AuditEvent)
    card_posted = (
        select(func.min(col(card.at)))
        .where(col(card.request_id) == col(Vote.request_id), col(card.event_type) == E.CARD_POSTED.value)
        .scalar_subquery()
    )
    seconds = _seconds_between(dialect, col(Vote.created_at), func.coalesce(card_posted, col(AccessRequest.created_at)))
    votes = (
        select(col(Vote.request_id).label("request_id"), col(Vote.voter_slack_id).label("voter"), seconds.label("s"))
        .join(AccessRequest, col(AccessRequest.id) == col(Vote.request_id))
        .where(col(Vote.choice) == VoteChoice.APPROVE.value, _within(col(Vote.created_at), plan.day))
        .subquery()
    )
    rows = session.execute(
        select(votes.c.request_id, votes.c.voter, votes.c.s)
        .where(votes.c.s <= FAST_APPROVAL_SECONDS)
        .order_by(votes.c.s, votes.c.request_id, votes.c.voter)
    ).all()
    return tuple(FastApproval(request_id, voter, float(s)) for request_id, voter, s in rows)


def _approves_everything(session: Session, plan: DigestPlan) -> tuple[ApproverVotes, ...]:
    voter, count = col(Vote.voter_slack_id), func.count()
    approvals = func.sum(case((col(Vote.choice) == VoteChoice.APPROVE.value, 1), else_=0))
    rows = session.execute(
        select(voter, count)
        .where(_within(col(Vote.created_at), plan.lookback))
        .group_by(voter)
        .having(count >= APPROVES_EVERYTHING_VOTES, approvals == count)
        .order_by(desc(count), voter)
    ).all()
    return tuple(ApproverVotes(approver, n) for approver, n in rows)


def _same_pair_repeated(session: Session, plan: DigestPlan) -> tuple[RepeatedPair, ...]:
    voter, requester, count = col(Vote.voter_slack_id), col(AccessRequest.requester_slack_id), func.count()
    rows = session.execute(
        select(voter, requester, count)
        .join(AccessRequest, col(AccessRequest.id) == col(Vote.request_id))
        .where(col(Vote.choice) == VoteChoice.APPROVE.value, _within(col(Vote.created_at), plan.lookback))
        .group_by(voter, requester)
        .having(count >= SAME_PAIR_APPROVALS)
        .order_by(desc(count), voter, requester)
    ).all()
    return tuple(RepeatedPair(approver, asker, n) for approver, asker, n in rows)


def _unrevoked(session: Session, before: datetime) -> tuple[str, ...]:
    """Tokens the bot holds that expired before ``before``, not confirmed revoked (ix_grant_status_expires_at)."""
    rows = session.execute(
        select(col(Grant.request_id))
        .where(
            col(Grant.status).in_([GrantStatus.ACTIVE.value, GrantStatus.REVOKING.value]),
            col(Grant.expires_at) < before,
        )
        .order_by(col(Grant.expires_at), col(Grant.request_id))
    ).scalars()
    return tuple(rows)


def _break_glass(session: Session, plan: DigestPlan) -> tuple[BreakGlassLine, ...]:
    """The day's break-glass uses (their break_glass_used events, by (event_type, at)), with their
    acknowledgement as it stands when the digest is made."""
    rows = session.execute(
        select(
            col(AccessRequest.id),
            col(AccessRequest.requester_slack_id),
            col(AccessRequest.resource),
            col(BreakGlassAlert.acknowledged_by),
            col(BreakGlassAlert.acknowledged_at),
        )
        .select_from(AuditEvent)
        .join(AccessRequest, col(AccessRequest.id) == col(AuditEvent.request_id))
        .outerjoin(BreakGlassAlert, col(BreakGlassAlert.request_id) == col(AccessRequest.id))
        .where(col(AuditEvent.event_type) == E.BREAK_GLASS_USED.value, _within(col(AuditEvent.at), plan.day))
        .order_by(col(AuditEvent.seq))
    ).all()
    return tuple(BreakGlassLine(rid, requester, resource, by, at) for rid, requester, resource, by, at in rows)


def _extensions(session: Session, plan: DigestPlan) -> tuple[int, int]:
    """Extensions asked (their ``extension_requested`` events) and approved (``request_approved`` of a
    request that extends another) during the day: (event_type, at), then each approval's request by key."""
    asked = session.execute(
        select(func.count())
        .select_from(AuditEvent)
        .where(col(AuditEvent.event_type) == E.EXTENSION_REQUESTED.value, _within(col(AuditEvent.at), plan.day))
    ).scalar_one()
    approved = session.execute(
        select(func.count())
        .select_from(AuditEvent)
        .join(AccessRequest, col(AccessRequest.id) == col(AuditEvent.request_id))
        .where(
            col(AuditEvent.event_type) == E.REQUEST_APPROVED.value,
            _within(col(AuditEvent.at), plan.day),
            col(AccessRequest.extends).is_not(None),
        )
    ).scalar_one()
    return int(asked), int(approved)


def audit_anchor(*, session: Session, key: bytes) -> AuditAnchor:
    """The chain's head and whether the whole trail verifies with ``key`` (``verify_chain``, every link
    recomputed). An intact chain's head is the last link verify computed, which it checked against the
    head row; a broken one reports the head row as it stands."""
    _one_snapshot(session)
    report = verify_chain(session=session, key=key)
    if report.intact and not report.unkeyed:
        return AuditAnchor(report.events, report.tip, verified=True)
    if not report.intact:
        problem = f"broken at event {report.first_bad_seq}: {report.problem}"
    else:
        problem = f"events 1 to {report.unkeyed} are not linked with the audit key (run jit-bot audit rekey)"
    head = session.execute(select(col(AuditHead.seq), col(AuditHead.hash)).where(col(AuditHead.id) == 1)).first()
    seq, link = (head[0], head[1]) if head is not None else (report.events, report.tip)
    return AuditAnchor(seq, link, verified=False, problem=problem)


# --- the daily post's lease -------------------------------------------------------------------------


def day_taken(*, session: Session, day: str) -> bool:
    """Whether the digest of local ``day`` was queued already (by this replica or another)."""
    return session.get(DigestDay, day) is not None


def take_day(*, session: Session, day: str, now: datetime) -> None:
    """Claim ``day``'s digest for this transaction. The row is flushed at once, so a second replica's
    insert fails (SQLite: behind the first's write lock, then on the key; PostgreSQL: on the primary
    key, once the first commits) with ``IntegrityError``, and its whole transaction, with whatever it
    queued, rolls back."""
    session.add(DigestDay(day=day, queued_at=now))
    session.flush()


def set_posted(*, session: Session, day: str, channel: str, ts: str) -> None:
    row = session.get(DigestDay, day)
    if row is not None:
        row.channel, row.ts = channel, ts
        session.add(row)


def posted_at(*, session: Session, day: str) -> tuple[str, str] | None:
    """The text's (channel, ts), once delivered."""
    row = session.get(DigestDay, day)
    return (row.channel, row.ts) if row is not None and row.channel and row.ts else None
