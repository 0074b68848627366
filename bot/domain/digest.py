"""The security leads' daily digest: which moments it covers, the object it is, and its text.

The day is one local date in ``digest.timezone``, bounded by that zone's midnights, so a day on which
the clocks change is 23 or 25 hours long. Each count is compared with the average of the 7 local days
before it. The figures themselves are read by SQL aggregation (``bot.store.digest``); what is here is
pure: the windows the queries are given, the comparison, the quantiles of an already-grouped
histogram, and the renderings (a terminal's and Slack's) of one object, whose JSON form is the
contract other tools read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from bot.domain.durations import format_duration
from bot.domain.policy import BusinessHours, DigestOptions
from bot.domain.policy_fields import SLACK_USER_ID
from bot.domain.policy_rules import DAYS
from bot.domain.text import mrkdwn_escape, one_line

# The digest's counts, in the order they are shown. The JSON's `counts` and `previous_7_day_average`
# have exactly these keys.
COUNT_KEYS = (
    "requested",
    "approved_by_people",
    "auto_approved",
    "denied",
    "expired",
    "cancelled",
    "failed_mints",
    "revocation_failures",
    "break_glass",
)
_COUNT_LABELS = {
    "requested": "requested",
    "approved_by_people": "approved by people",
    "auto_approved": "auto-approved by a rule",
    "denied": "denied",
    "expired": "expired undecided",
    "cancelled": "cancelled",
    "failed_mints": "failed mints",
    "revocation_failures": "revocation failures",
    "break_glass": "break-glass",
}

# The days a count is compared with, and the window the approver anomalies look back over.
COMPARED_DAYS = 7
LOOKBACK_DAYS = 7
# An approve vote this soon after its card appeared was hardly read.
FAST_APPROVAL_SECONDS = 10
# An approver with at least this many votes in the lookback window, every one of them approve.
APPROVES_EVERYTHING_VOTES = 10
# One approver approving one requester at least this often in the lookback window.
SAME_PAIR_APPROVALS = 3
# The longest lists the digest ranks (top requesters, resources, longest and widest grants).
TOP = 5
# A grant this long past its expiry and not confirmed revoked is access left behind (the
# revocation watchdog alerts at the same age).
UNREVOKED_GRACE = timedelta(seconds=30)
# How many entries of a list the text shows; the JSON has them all.
_SHOWN = 20


@dataclass(frozen=True)
class Span:
    """[start, end) in UTC."""

    start: datetime
    end: datetime

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600


def local_day(day: date, zone: ZoneInfo) -> Span:
    """From the local midnight that starts ``day`` to the next one, in UTC: 23 or 25 hours when the
    clocks change that day. (A midnight that does not exist, in a zone that springs forward at 00:00,
    is read with the offset before the change, i.e. the first moment of the day.)"""
    start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    return Span(start, end)


def business_spans(day: date, hours: BusinessHours, zone: ZoneInfo) -> tuple[Span, ...]:
    """The parts of local ``day`` that are business hours, in UTC, on the wall clock of ``zone``
    (so 08:00 stays 08:00 across a DST change). A window whose ``to`` is before its ``from`` runs past
    midnight and belongs to the day it starts on, as a rule's ``hours`` does: its early-morning part
    on ``day`` counts if the day before is a business day."""
    whole = local_day(day, zone)

    def at(clock: time) -> datetime:
        return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)

    today = DAYS[day.weekday()] in hours.days
    if hours.start < hours.end:
        return (Span(at(hours.start), at(hours.end)),) if today else ()
    spans = []
    if DAYS[(day.weekday() - 1) % 7] in hours.days:
        spans.append(Span(whole.start, at(hours.end)))
    if today:
        spans.append(Span(at(hours.start), whole.end))
    return tuple(spans)


def yesterday(now: datetime, zone: ZoneInfo) -> date:
    """The default day of a digest: the last whole local day before ``now``."""
    return now.astimezone(zone).date() - timedelta(days=1)


@dataclass(frozen=True)
class DigestPlan:
    """The moments one digest covers, for the queries: every bound is UTC."""

    local_date: date
    timezone: str
    # The COMPARED_DAYS local days before the digest's day, oldest first, then the day itself.
    days: tuple[Span, ...]
    business: tuple[Span, ...]
    business_hours: BusinessHours
    now: datetime

    @property
    def day(self) -> Span:
        return self.days[-1]

    @property
    def lookback(self) -> Span:
        """The LOOKBACK_DAYS local days ending with the digest's day (the approver anomalies)."""
        return Span(self.days[-LOOKBACK_DAYS].start, self.day.end)

    @property
    def unrevoked_before(self) -> datetime:
        return self.now - UNREVOKED_GRACE

    def date_of(self, index: int) -> date:
        return self.local_date - timedelta(days=len(self.days) - 1 - index)


def plan_digest(day: date, options: DigestOptions, *, now: datetime) -> DigestPlan:
    zone = options.zone
    days = tuple(local_day(day - timedelta(days=back), zone) for back in range(COMPARED_DAYS, -1, -1))
    return DigestPlan(
        local_date=day,
        timezone=options.timezone,
        days=days,
        business=business_spans(day, options.business_hours, zone),
        business_hours=options.business_hours,
        now=now,
    )


# --- what the store reads ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranked:
    key: str
    count: int


@dataclass(frozen=True)
class GrantLine:
    request_id: str
    requester: str
    resource: str
    # The approved duration.
    seconds: int
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class FastApproval:
    request_id: str
    approver: str
    seconds: float


@dataclass(frozen=True)
class ApproverVotes:
    approver: str
    votes: int


@dataclass(frozen=True)
class RepeatedPair:
    approver: str
    requester: str
    count: int


@dataclass(frozen=True)
class BreakGlassLine:
    """A break-glass use of the day, and whether (by whom, when) it was acknowledged."""

    request_id: str
    requester: str
    resource: str
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None


@dataclass(frozen=True)
class Figures:
    """What ``bot.store.digest.read_figures`` aggregated for a plan."""

    # One mapping of COUNT_KEYS per span of ``DigestPlan.days``, in that order (a key it lacks is 0).
    daily: tuple[Mapping[str, int], ...]
    top_requesters: tuple[Ranked, ...] = ()
    top_resources: tuple[Ranked, ...] = ()
    # Seconds from request to a person's decision (whole seconds), and how many decisions took that long.
    decision_seconds: tuple[tuple[float, int], ...] = ()
    off_hours_grants: tuple[str, ...] = ()
    denied_more_than_once: tuple[str, ...] = ()
    never_picked_up: tuple[str, ...] = ()
    longest_grants: tuple[GrantLine, ...] = ()
    widest_grants: tuple[GrantLine, ...] = ()
    fast_approvals: tuple[FastApproval, ...] = ()
    approves_everything: tuple[ApproverVotes, ...] = ()
    same_pair_repeated: tuple[RepeatedPair, ...] = ()
    unrevoked_past_expiry: tuple[str, ...] = ()
    # The day's break-glass uses, in the order they happened.
    break_glass_grants: tuple[BreakGlassLine, ...] = ()
    # Extensions of active grants asked and approved during the day.
    extensions: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class AuditAnchor:
    """The audit chain's head when the digest was made, and whether the whole chain verified up to it.
    Published daily, it lets ``jit-bot audit verify --expect-head SEQ:HASH`` catch a later cut or rewrite."""

    seq: int
    hash: str
    verified: bool
    problem: str | None = None


def quantile(histogram: Sequence[tuple[float, int]], p: float) -> float | None:
    """The ``p`` quantile (0 to 1) of values given as (value, how many) rows, interpolating linearly
    between the two nearest ranks (as statistics.quantiles' 'inclusive' method and numpy do, so the
    median of an even count is the mean of the middle two). None for no values."""
    rows = sorted((value, count) for value, count in histogram if count > 0)
    total = sum(count for _, count in rows)
    if total == 0:
        return None
    position = p * (total - 1)

    def ranked(index: int) -> float:
        seen = 0
        for value, count in rows:
            seen += count
            if index < seen:
                return value
        return rows[-1][0]

    low, high = ranked(math.floor(position)), ranked(math.ceil(position))
    return low + (high - low) * (position - math.floor(position))


@dataclass(frozen=True)
class Digest:
    plan: DigestPlan
    figures: Figures
    audit_head: AuditAnchor

    def day_counts(self, index: int) -> dict[str, int]:
        got = self.figures.daily[index]
        return {key: int(got.get(key, 0)) for key in COUNT_KEYS}

    @property
    def counts(self) -> dict[str, int]:
        return self.day_counts(len(self.plan.days) - 1)

    @property
    def previous_average(self) -> dict[str, float]:
        before = [self.day_counts(index) for index in range(len(self.plan.days) - 1)]
        return {key: round(sum(day[key] for day in before) / len(before), 2) for key in COUNT_KEYS}

    @property
    def decisions(self) -> int:
        return sum(count for _, count in self.figures.decision_seconds)

    def decision_quantile(self, p: float) -> float | None:
        value = quantile(self.figures.decision_seconds, p)
        return None if value is None else round(value, 1)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _grant_json(line: GrantLine) -> dict[str, object]:
    return {
        "request_id": line.request_id,
        "requester": line.requester,
        "resource": line.resource,
        "seconds": line.seconds,
        "scopes": list(line.scopes),
    }


def digest_json(digest: Digest) -> dict[str, object]:
    """The digest as the JSON object other tools read (the README lists each key and its definition)."""
    plan, figures = digest.plan, digest.figures
    hours = plan.business_hours
    return {
        "date": plan.local_date.isoformat(),
        "timezone": plan.timezone,
        "window": {"from": _iso(plan.day.start), "to": _iso(plan.day.end), "hours": plan.day.hours},
        "business_hours": {"days": list(hours.days), "from": f"{hours.start:%H:%M}", "to": f"{hours.end:%H:%M}"},
        "counts": digest.counts,
        "previous_7_day_average": digest.previous_average,
        "daily": [
            {"date": plan.date_of(index).isoformat(), "counts": digest.day_counts(index)}
            for index in range(len(plan.days))
        ],
        "top_requesters": [{"slack_id": r.key, "count": r.count} for r in figures.top_requesters],
        "top_resources": [{"name": r.key, "count": r.count} for r in figures.top_resources],
        "time_to_decision_seconds": {
            "median": digest.decision_quantile(0.5),
            "p90": digest.decision_quantile(0.9),
            "decisions": digest.decisions,
        },
        "longest_grants": [_grant_json(line) for line in figures.longest_grants],
        "widest_grants": [_grant_json(line) for line in figures.widest_grants],
        "off_hours_grants": list(figures.off_hours_grants),
        "denied_more_than_once": list(figures.denied_more_than_once),
        "never_picked_up": list(figures.never_picked_up),
        "unrevoked_past_expiry": list(figures.unrevoked_past_expiry),
        "break_glass_grants": [
            {
                "request_id": line.request_id,
                "requester": line.requester,
                "resource": line.resource,
                "acknowledged_by": line.acknowledged_by,
                "acknowledged_at": _iso(line.acknowledged_at) if line.acknowledged_at else None,
            }
            for line in figures.break_glass_grants
        ],
        "extensions": {"requested": figures.extensions[0], "approved": figures.extensions[1]},
        "anomalies": {
            "fast_approvals": [
                {"request_id": f.request_id, "approver": f.approver, "seconds": f.seconds}
                for f in figures.fast_approvals
            ],
            "approves_everything": [{"approver": a.approver, "votes": a.votes} for a in figures.approves_everything],
            "same_pair_repeated": [
                {"approver": p.approver, "requester": p.requester, "count": p.count} for p in figures.same_pair_repeated
            ],
        },
        "thresholds": {
            "fast_approval_seconds": FAST_APPROVAL_SECONDS,
            "approves_everything_votes": APPROVES_EVERYTHING_VOTES,
            "same_pair_approvals": SAME_PAIR_APPROVALS,
            "lookback_days": LOOKBACK_DAYS,
        },
        "audit_head": {
            "seq": digest.audit_head.seq,
            "hash": digest.audit_head.hash,
            "verified": digest.audit_head.verified,
            "problem": digest.audit_head.problem,
        },
        "generated_at": _iso(plan.now),
    }


# --- text ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Style:
    """How the text marks things up: plain for a terminal, mrkdwn for Slack. Every piece of text that
    came from the database goes through ``text``, ``code`` or ``person``."""

    text: Callable[[str], str]
    bold: Callable[[str], str]
    code: Callable[[str], str]
    person: Callable[[str], str]
    table: Callable[[list[str]], list[str]]


def _flat(text: str) -> str:
    # A terminal obeys escape sequences: nothing from the database reaches it with a control character.
    return one_line(text, 200)


def _slack_text(text: str) -> str:
    return mrkdwn_escape(one_line(text, 200))


def _slack_code(text: str) -> str:
    return "`" + _slack_text(text).replace("`", "'") + "`"


def _slack_person(slack_id: str) -> str:
    # A mention shows the person's name; anything that is not plainly a user id stays inert text.
    return f"<@{slack_id}>" if SLACK_USER_ID.fullmatch(slack_id) else _slack_code(slack_id)


TERMINAL = _Style(text=_flat, bold=_flat, code=_flat, person=_flat, table=lambda lines: lines)
SLACK = _Style(
    text=_slack_text,
    bold=lambda text: f"*{_slack_text(text)}*",
    code=_slack_code,
    person=_slack_person,
    # A code block keeps the columns aligned; the table holds only labels and numbers.
    table=lambda lines: ["```", *lines, "```"],
)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:g}s"
    return format_duration(timedelta(seconds=round(value)))


def _listed(items: Sequence[str], *, empty: str = "none") -> str:
    if not items:
        return empty
    shown = ", ".join(items[:_SHOWN])
    return shown if len(items) <= _SHOWN else f"{shown} and {len(items) - _SHOWN} more"


def _change(count: int, average: float) -> str:
    if average == 0:
        return "" if count == 0 else "new"
    percent = round((count - average) / average * 100)
    return f"{percent:+d}%" if percent else "same"


def _hours_words(hours: BusinessHours) -> str:
    days = ",".join(hours.days)
    if hours.days == DAYS[:5]:
        days = "mon-fri"
    return f"{days} {hours.start:%H:%M}-{hours.end:%H:%M}"


def _break_glass_line(line: BreakGlassLine, style: _Style) -> str:
    said = (
        f"acknowledged by {style.person(line.acknowledged_by)}"
        if line.acknowledged_by
        else style.bold("NOT acknowledged")
    )
    return f"{style.code(line.request_id)} {style.text(line.resource)} by {style.person(line.requester)}, {said}"


def digest_text(digest: Digest, *, slack: bool = False) -> str:
    """The digest in words, for a terminal or (``slack``) as Slack mrkdwn; it stands on its own and
    ends with the audit trail's head and whether the trail verified."""
    style = SLACK if slack else TERMINAL
    plan, figures = digest.plan, digest.figures
    day = plan.day
    length = "" if day.hours == 24 else f"A {day.hours:g}-hour day: "
    lines = [
        style.bold(f"jit-bot daily digest for {plan.local_date:%A %Y-%m-%d} ({plan.timezone})"),
        f"{length}{day.start:%Y-%m-%d %H:%M} to {day.end:%Y-%m-%d %H:%M} UTC, "
        f"compared with the average of the {COMPARED_DAYS} days before",
        "",
    ]
    counts, averages = digest.counts, digest.previous_average
    width = max(len(label) for label in _COUNT_LABELS.values())
    table = [f"{'':{width}}  {'day':>5}  {'7-day avg':>9}"]
    for key in COUNT_KEYS:
        change = _change(counts[key], averages[key])
        table.append(f"{_COUNT_LABELS[key]:{width}}  {counts[key]:>5}  {averages[key]:>9.1f}  {change}".rstrip())
    lines += style.table(table)
    lines.append("")

    def ranked(items: Sequence[Ranked], show: Callable[[str], str]) -> str:
        return _listed([f"{show(r.key)} ({r.count})" for r in items])

    def grants(items: Sequence[GrantLine], *, wide: bool) -> str:
        shown = []
        for line in items:
            scopes = ", ".join(style.text(scope) for scope in line.scopes)
            what = (
                f"{len(line.scopes)} scope(s): {scopes}" if wide else format_duration(timedelta(seconds=line.seconds))
            )
            shown.append(
                f"{style.code(line.request_id)} {style.text(line.resource)} {what} for {style.person(line.requester)}"
            )
        return _listed(shown)

    lines += [
        f"{style.bold('Top requesters:')} {ranked(figures.top_requesters, style.person)}",
        f"{style.bold('Top resources:')} {ranked(figures.top_resources, style.code)}",
        f"{style.bold('Time to a decision by people:')} median {_seconds(digest.decision_quantile(0.5))}, "
        f"p90 {_seconds(digest.decision_quantile(0.9))} ({digest.decisions} decision(s))",
        f"{style.bold('Longest grants:')} {grants(figures.longest_grants, wide=False)}",
        f"{style.bold('Widest grants:')} {grants(figures.widest_grants, wide=True)}",
        f"{style.bold('Off-hours grants')} (approved or picked up outside {_hours_words(plan.business_hours)}): "
        f"{_listed([style.code(r) for r in figures.off_hours_grants])}",
        f"{style.bold('Denied more than once:')} {_listed([style.person(p) for p in figures.denied_more_than_once])}",
        f"{style.bold('Ended without the token picked up:')} "
        f"{_listed([style.code(r) for r in figures.never_picked_up])}",
        f"{style.bold('Past expiry, not yet confirmed revoked:')} "
        f"{_listed([style.code(r) for r in figures.unrevoked_past_expiry])}",
        f"{style.bold('Break-glass:')} "
        f"{_listed([_break_glass_line(line, style) for line in figures.break_glass_grants])}",
        f"{style.bold('Extensions of active grants:')} {figures.extensions[0]} asked, {figures.extensions[1]} approved",
        "",
    ]
    anomalies = [
        f"- {style.bold('Fast approval')} (within {FAST_APPROVAL_SECONDS} s of the card): {style.code(f.request_id)} "
        f"by {style.person(f.approver)} after {f.seconds:g} s"
        for f in figures.fast_approvals[:_SHOWN]
    ]
    anomalies += [
        f"- {style.bold('Approves everything')} ({APPROVES_EVERYTHING_VOTES}+ votes in {LOOKBACK_DAYS} days, all "
        f"approve): {style.person(a.approver)} ({a.votes} votes)"
        for a in figures.approves_everything[:_SHOWN]
    ]
    anomalies += [
        f"- {style.bold('Same pair')} ({SAME_PAIR_APPROVALS}+ approvals in {LOOKBACK_DAYS} days): "
        f"{style.person(p.approver)} approved {style.person(p.requester)} {p.count} times"
        for p in figures.same_pair_repeated[:_SHOWN]
    ]
    found = len(figures.fast_approvals) + len(figures.approves_everything) + len(figures.same_pair_repeated)
    if found > len(anomalies):
        anomalies.append(f"- and {found - len(anomalies)} more (the JSON has them all)")
    lines.append(f"{style.bold('Anomalies:')} {found or 'none'}")
    lines += anomalies
    lines.append("")
    head = digest.audit_head
    verdict = "verified" if head.verified else f"NOT VERIFIED: {style.text(head.problem or 'unknown')}"
    lines.append(f"{style.bold('Audit trail head:')} {style.code(f'{head.seq}:{head.hash}')}, {verdict}")
    return "\n".join(lines)
