"""The security leads' daily digest: a story of requests, votes, grants and audit events whose every
figure is known, read back by SQL on SQLite and PostgreSQL; the day's bounds in the digest's time zone
(DST days included); the JSON contract, the text, the chart, and `jit-bot digest` end to end."""

from __future__ import annotations

import base64
import json
import statistics
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect, text
from sqlmodel import Session

from bot.domain.audit import AuditEventType as E
from bot.domain.digest import (
    COUNT_KEYS,
    AuditAnchor,
    Digest,
    Figures,
    GrantLine,
    Ranked,
    business_spans,
    digest_json,
    digest_text,
    local_day,
    plan_digest,
    quantile,
    yesterday,
)
from bot.domain.digest_chart import DPI, HEIGHT_IN, WIDTH_IN, chart_png
from bot.domain.policy import BusinessHours, DigestOptions
from bot.slack.text import escape
from bot.store.audit import append_event, bind_audit_key
from bot.store.db import MIGRATIONS, make_engine, migrate, read_scope, session_scope
from bot.store.digest import audit_anchor, read_figures
from bot.store.models import AccessRequest, Grant, Vote
from bot.store.transitions import BOT_ACTOR
from tests.processes import assert_no_traceback, run_cli, write_policy
from tests.test_cli import messages
from tests.world import (
    APPROVER_1,
    APPROVER_2,
    AUDIT_KEY,
    GROUP_MEMBER,
    OUTSIDER,
    POLICY,
    REQUESTER,
    make_policy,
    policy_data,
)

KEY = base64.urlsafe_b64decode(AUDIT_KEY)
BERLIN = ZoneInfo("Europe/Berlin")
OPTIONS = DigestOptions(timezone="Europe/Berlin")
# The story's day: a Wednesday, CET (UTC+1). Its week before holds the end of summer time (25 October).
DAY = date(2026, 10, 28)
# When the digest is made: the next morning.
NOW = datetime(2026, 10, 29, 9, 0, tzinfo=BERLIN).astimezone(UTC)
# Voters that are not in the policy: the digest judges what was recorded.
HASTY, NINE = "U0HASTY", "U0NINEYES"


def rid(n: int) -> str:
    return f"R{n:09d}"


def local(clock: str, days: int = 0) -> datetime:
    """``clock`` (HH:MM or HH:MM:SS) on DAY + ``days`` in Berlin, as UTC."""
    parts = [int(part) for part in clock.split(":")]
    moment = datetime.combine(DAY + timedelta(days=days), time(*parts), tzinfo=BERLIN)
    return moment.astimezone(UTC)


class Story:
    """Writes what the bot would have recorded: request rows, votes and grants, and their audit events,
    linked into the keyed chain (so the trail verifies)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def event(self, kind: E, request_id: str | None, at: datetime, actor: str = BOT_ACTOR, **details: Any) -> None:
        append_event(
            session=self.session, at=at, event_type=kind.value, actor=actor, request_id=request_id, details=details
        )

    def request(
        self,
        n: int,
        at: datetime,
        *,
        requester: str,
        resource: str = "prod-db",
        scopes: str = "read",
        minutes: int = 60,
        card_after: float | None = 1,
    ) -> str:
        request_id = rid(n)
        self.session.add(
            AccessRequest(
                id=request_id,
                requester_slack_id=requester,
                requester_subject="someone",
                resource=resource,
                audience=f"https://{resource}.internal.example",
                scopes=scopes,
                duration_seconds=minutes * 60,
                reason="checking INC-1",
                approvals_required=1,
                approver_channel="C0APPROVERS",
                status="pending",
                created_at=at,
                updated_at=at,
            )
        )
        self.session.flush()
        self.event(E.REQUEST_SUBMITTED, request_id, at, requester, resource=resource)
        if card_after is not None:
            self.event(E.CARD_POSTED, request_id, at + timedelta(seconds=card_after), channel="C0APPROVERS")
        return request_id

    def vote(self, request_id: str, voter: str, at: datetime, choice: str = "approve") -> None:
        self.session.add(Vote(request_id=request_id, voter_slack_id=voter, choice=choice, created_at=at))
        self.session.flush()
        self.event(E.VOTE_CAST, request_id, at, voter, choice=choice)

    def approved(self, request_id: str, at: datetime, by: str) -> None:
        """By ``by``'s vote (cast at the same moment), or by a rule when ``by`` is the bot."""
        if by != BOT_ACTOR:
            self.vote(request_id, by, at)
        self.event(E.REQUEST_APPROVED, request_id, at, by)

    def denied(self, request_id: str, at: datetime, by: str) -> None:
        if by != BOT_ACTOR:
            self.vote(request_id, by, at, "deny")
        self.event(E.REQUEST_DENIED, request_id, at, by)

    def grant(
        self,
        request_id: str,
        at: datetime,
        *,
        scopes: str,
        minutes: int,
        picked_up: datetime | None = None,
        revoked: datetime | None = None,
        refusal: str | None = None,
    ) -> None:
        self.session.add(
            Grant(
                request_id=request_id,
                status="revoked" if revoked else "active",
                audience="https://x.internal.example",
                granted_scopes=scopes,
                token_type="Bearer",
                token_fingerprint="sha256:00",
                issued_at=at,
                expires_at=at + timedelta(minutes=minutes),
                picked_up_at=picked_up,
                revoked_at=revoked,
                refusal=refusal,
            )
        )
        self.session.flush()
        if refusal is None:
            self.event(E.GRANT_ACTIVE, request_id, at)
        if picked_up is not None:
            self.event(E.TOKEN_PICKED_UP, request_id, picked_up)
        if revoked is not None:
            self.event(E.GRANT_REVOKED, request_id, revoked)


def tell_the_story(session: Session) -> None:
    """The day (DAY) and the week before it, with the answers the tests below expect."""
    story = Story(session)
    # --- the day -------------------------------------------------------------------------------
    # 1: approved 3 s after its card (fast), picked up in hours.
    r1 = story.request(1, local("10:00"), requester=REQUESTER, card_after=2)
    story.approved(r1, local("10:00:05"), APPROVER_1)
    story.vote(r1, HASTY, local("10:30"))
    story.grant(r1, local("10:00:07"), scopes="read", minutes=60, picked_up=local("10:01"), revoked=local("11:00:07"))
    # 2: its card took Slack almost 5 minutes; the first approval came 3 s after it (fast, though 301 s
    # after the request), the second 5 minutes later. Never picked up; two failed revocation attempts.
    r2 = story.request(2, local("11:00"), requester=REQUESTER, resource="billing", scopes="read refund", card_after=298)
    story.vote(r2, APPROVER_1, local("11:05:01"))
    story.approved(r2, local("11:10"), APPROVER_2)
    story.grant(r2, local("11:10:02"), scopes="read refund", minutes=60)
    story.event(E.REVOCATION_FAILED, r2, local("12:10:03"), attempt=1)
    story.event(E.REVOCATION_FAILED, r2, local("12:10:05"), attempt=2)
    story.event(E.GRANT_REVOKED, r2, local("12:10:10"))
    session.execute(text("UPDATE \"grant\" SET status = 'revoked' WHERE request_id = :r"), {"r": r2})
    # 3: an approver's request, approved exactly 10 s after its card at 20:30 (off-hours), picked up at
    # 21:00 (off-hours), and never revoked: its expiry passed, the watchdog alerted.
    r3 = story.request(3, local("20:30"), requester=APPROVER_2, scopes="read write", minutes=120)
    story.approved(r3, local("20:30:11"), APPROVER_1)
    story.grant(r3, local("20:30:12"), scopes="read write", minutes=120, picked_up=local("21:00"))
    story.event(E.REVOCATION_OVERDUE, r3, local("22:31"))
    # 4: auto-approved by a rule at 07:30 (off-hours), picked up, revoked.
    r4 = story.request(4, local("07:30"), requester=GROUP_MEMBER, resource="k8s", scopes="view edit", minutes=30)
    story.approved(r4, local("07:30"), BOT_ACTOR)
    story.grant(
        r4, local("07:30:02"), scopes="view edit", minutes=30, picked_up=local("07:31"), revoked=local("08:00:02")
    )
    # 5: denied by a person 6 s after its card (a deny is never a fast approval); 6: denied by a rule.
    r5 = story.request(5, local("12:00"), requester=REQUESTER, scopes="write", card_after=115)
    story.denied(r5, local("12:02:01"), APPROVER_1)
    r6 = story.request(6, local("13:00"), requester=REQUESTER, card_after=None)
    story.denied(r6, local("13:00"), BOT_ACTOR)
    # 7: expired undecided (a late approve vote from HASTY); 8: cancelled by its requester.
    r7 = story.request(7, local("14:00"), requester=OUTSIDER)
    story.vote(r7, HASTY, local("14:10"))
    story.event(E.REQUEST_EXPIRED, r7, local("14:30"))
    r8 = story.request(8, local("15:00"), requester=GROUP_MEMBER)
    story.event(E.REQUEST_CANCELLED, r8, local("15:05"), GROUP_MEMBER)
    # 9: no card was recorded; approved 8 s after the request itself (fast), then the mint failed.
    r9 = story.request(9, local("16:00"), requester=REQUESTER, minutes=30, card_after=None)
    story.approved(r9, local("16:00:08"), APPROVER_2)
    story.event(E.MINT_FAILED, r9, local("16:00:25"))
    # 13: 00:30 the next morning, which is after the day.
    story.request(13, local("00:30", days=1), requester=OUTSIDER)
    # --- the day before ----------------------------------------------------------------------------
    # 10: approved at 23:45 the evening before, picked up at 00:10 on the day (off-hours by its pickup).
    r10 = story.request(10, local("23:40", days=-1), requester=REQUESTER)
    story.approved(r10, local("23:45:01", days=-1), APPROVER_1)
    story.grant(
        r10, local("23:45:03", days=-1), scopes="read", minutes=60, picked_up=local("00:10"), revoked=local("00:45:03")
    )
    # 11: its token was refused at its checks and revoked on the day: never offered, so not "never picked up".
    r11 = story.request(11, local("10:00", days=-1), requester=REQUESTER)
    story.approved(r11, local("10:01", days=-1), APPROVER_1)
    story.event(E.MINT_FAILED, r11, local("10:01:10", days=-1))
    story.grant(r11, local("10:01:09", days=-1), scopes="read", minutes=60, revoked=local("00:20"), refusal="too_wide")
    # One request a day from OUTSIDER approved by APPROVER_2, for 7 days; HASTY and NINE vote on the
    # six inside the 7-day lookback too, NINE also on the seventh (outside it: it must not count).
    for back in range(1, 8):
        b = story.request(100 + back, local("09:00", days=-back), requester=OUTSIDER)
        story.approved(b, local("09:05", days=-back), APPROVER_2)
        if back <= 6:
            story.vote(b, HASTY, local("09:30", days=-back), "deny" if back == 4 else "approve")
        story.vote(b, NINE, local("09:40", days=-back))
    # Three more approved by APPROVER_2 (two of GROUP_MEMBER's, one of REQUESTER's), voted on by HASTY and NINE.
    for n, back, requester in ((201, 1, GROUP_MEMBER), (202, 2, GROUP_MEMBER), (203, 3, REQUESTER)):
        c = story.request(n, local("14:00", days=-back), requester=requester)
        story.approved(c, local("14:05", days=-back), APPROVER_2)
        story.vote(c, HASTY, local("14:30", days=-back))
        story.vote(c, NINE, local("14:40", days=-back))


@pytest.fixture
def story_engine(database_url: str) -> Iterator[Engine]:
    engine = bind_audit_key(make_engine(database_url), KEY)
    migrate(engine)
    with session_scope(engine) as session:
        tell_the_story(session)
    yield engine
    engine.dispose()


def _read(engine: Engine, day: date = DAY, options: DigestOptions = OPTIONS) -> Digest:
    plan = plan_digest(day, options, now=NOW)
    with read_scope(engine) as session:
        figures = read_figures(session=session, plan=plan)
        anchor = audit_anchor(session=session, key=KEY)
    return Digest(plan, figures, anchor)


def _head(engine: Engine) -> tuple[int, str]:
    with engine.connect() as connection:
        seq, link = connection.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
    return int(seq), str(link)


# --- the figures, on SQLite and PostgreSQL ------------------------------------------------------------


def test_every_count_of_the_day_and_the_average_of_the_week_before(story_engine: Engine) -> None:
    found = digest_json(_read(story_engine))

    assert found["counts"] == {
        "requested": 9,  # 1-9; 13 is the next day's
        "approved_by_people": 4,  # 1, 2, 3, 9
        "auto_approved": 1,  # 4
        "denied": 2,  # 5 by a person, 6 by a rule
        "expired": 1,
        "cancelled": 1,
        "failed_mints": 1,  # 9
        "revocation_failures": 3,  # 2's two failed attempts, 3's overdue alert
        "break_glass": 0,
    }
    # The 7 days before: 12 requests, all approved by people (10, 11 and the 10 background ones), one failed mint.
    assert found["previous_7_day_average"] == {
        key: {"requested": 1.71, "approved_by_people": 1.71, "failed_mints": 0.14}.get(key, 0.0) for key in COUNT_KEYS
    }
    assert [(day["date"], day["counts"]["requested"]) for day in found["daily"]] == [
        ("2026-10-21", 1),
        ("2026-10-22", 1),
        ("2026-10-23", 1),
        ("2026-10-24", 1),
        ("2026-10-25", 2),
        ("2026-10-26", 2),
        ("2026-10-27", 4),
        ("2026-10-28", 9),
    ]


def test_top_lists_decision_times_and_grants_of_the_day(story_engine: Engine) -> None:
    found = digest_json(_read(story_engine))

    assert found["top_requesters"] == [
        {"slack_id": REQUESTER, "count": 5},
        {"slack_id": GROUP_MEMBER, "count": 2},
        {"slack_id": APPROVER_2, "count": 1},
        {"slack_id": OUTSIDER, "count": 1},
    ]
    assert found["top_resources"] == [
        {"name": "prod-db", "count": 7},
        {"name": "billing", "count": 1},
        {"name": "k8s", "count": 1},
    ]
    # People decided 1, 2, 3, 5 and 9 after 5, 600, 11, 121 and 8 s (the rules' decisions are not theirs).
    assert found["time_to_decision_seconds"] == {"median": 11.0, "p90": 408.4, "decisions": 5}
    assert [(g["request_id"], g["seconds"], g["scopes"]) for g in found["longest_grants"]] == [
        (rid(3), 7200, ["read", "write"]),
        (rid(2), 3600, ["read", "refund"]),
        (rid(1), 3600, ["read"]),
        (rid(4), 1800, ["view", "edit"]),
    ]
    assert [g["request_id"] for g in found["widest_grants"]] == [rid(3), rid(2), rid(4), rid(1)]
    assert found["longest_grants"][0] == {
        "request_id": rid(3),
        "requester": APPROVER_2,
        "resource": "prod-db",
        "seconds": 7200,
        "scopes": ["read", "write"],
    }


def test_off_hours_denials_pickups_and_revocations(story_engine: Engine) -> None:
    found = digest_json(_read(story_engine))

    # 3 approved and picked up in the evening, 4 auto-approved at 07:30, 10 picked up at 00:10.
    assert found["off_hours_grants"] == [rid(3), rid(4), rid(10)]
    assert found["denied_more_than_once"] == [REQUESTER]
    # 2 ended unused; 11's refused token was never offered; 1, 4 and 10 were picked up.
    assert found["never_picked_up"] == [rid(2)]
    assert found["unrevoked_past_expiry"] == [rid(3)]


def test_the_off_hours_follow_the_policy_s_business_hours(story_engine: Engine) -> None:
    late = DigestOptions(
        timezone="Europe/Berlin", business_hours=BusinessHours.model_validate({"from": "07:00", "to": "22:00"})
    )
    assert digest_json(_read(story_engine, options=late))["off_hours_grants"] == [rid(10)]
    weekend = DigestOptions(timezone="Europe/Berlin", business_hours=BusinessHours(days=("sat", "sun")))
    assert digest_json(_read(story_engine, options=weekend))["off_hours_grants"] == [rid(1), rid(2), rid(3), rid(4)] + [
        rid(9),
        rid(10),
    ]


def test_each_anomaly(story_engine: Engine) -> None:
    anomalies = digest_json(_read(story_engine))["anomalies"]

    # By the card's time where one was recorded (1 and 2), else the request's (9); 10 s is still fast.
    assert anomalies["fast_approvals"] == [
        {"request_id": rid(1), "approver": APPROVER_1, "seconds": 3.0},
        {"request_id": rid(2), "approver": APPROVER_1, "seconds": 3.0},
        {"request_id": rid(9), "approver": APPROVER_2, "seconds": 8.0},
        {"request_id": rid(3), "approver": APPROVER_1, "seconds": 10.0},
    ]
    # APPROVER_2: 11 votes in the 7 days, all approve. HASTY voted 10 times with one deny; NINE's tenth
    # vote is 7 days back, outside the window.
    assert anomalies["approves_everything"] == [{"approver": APPROVER_2, "votes": 11}]
    assert anomalies["same_pair_repeated"] == [
        {"approver": APPROVER_2, "requester": OUTSIDER, "count": 6},
        {"approver": HASTY, "requester": OUTSIDER, "count": 6},
        {"approver": NINE, "requester": OUTSIDER, "count": 6},
        {"approver": APPROVER_1, "requester": REQUESTER, "count": 4},
        {"approver": APPROVER_2, "requester": REQUESTER, "count": 3},
    ]


def test_the_audit_head_is_the_verified_chain_s_end(story_engine: Engine) -> None:
    seq, link = _head(story_engine)
    assert seq > 100

    assert digest_json(_read(story_engine))["audit_head"] == {
        "seq": seq,
        "hash": link,
        "verified": True,
        "problem": None,
    }


def test_an_altered_event_is_reported_and_the_head_row_shown(story_engine: Engine) -> None:
    seq, link = _head(story_engine)
    with story_engine.begin() as connection:
        connection.execute(text("UPDATE audit_event SET actor = 'U0SOMEONE' WHERE seq = 5"))

    head = _read(story_engine).audit_head

    assert head == AuditAnchor(
        seq,
        link,
        verified=False,
        problem="broken at event 5: event 5 was altered after it was written (or the key is wrong)",
    )


def test_an_empty_database_has_a_digest_of_nothing(database_url: str) -> None:
    engine = bind_audit_key(make_engine(database_url), KEY)
    migrate(engine)
    try:
        found = digest_json(_read(engine))
    finally:
        engine.dispose()
    assert found["counts"] == dict.fromkeys(COUNT_KEYS, 0)
    assert found["time_to_decision_seconds"] == {"median": None, "p90": None, "decisions": 0}
    assert found["audit_head"] == {"seq": 0, "hash": "0" * 64, "verified": True, "problem": None}


# --- the day's bounds in its time zone --------------------------------------------------------------


def test_a_dst_day_is_bounded_by_its_local_midnights(database_url: str) -> None:
    """25 October 2026 in Berlin has 25 hours (02:00-03:00 twice); 23:30 on the 24th and 00:30 on the 26th
    are not in it, whatever the UTC dates say."""
    engine = bind_audit_key(make_engine(database_url), KEY)
    migrate(engine)
    moments = {
        1: datetime(2026, 10, 24, 23, 30, tzinfo=BERLIN),  # 21:30 UTC on the 24th: the 24th
        2: datetime(2026, 10, 25, 0, 10, tzinfo=BERLIN),  # 22:10 UTC on the 24th: the 25th
        3: datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN),  # 00:30 UTC, summer time
        4: datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=BERLIN),  # 01:30 UTC, the same clock an hour later
        5: datetime(2026, 10, 25, 23, 50, tzinfo=BERLIN),  # 22:50 UTC
        6: datetime(2026, 10, 26, 0, 30, tzinfo=BERLIN),  # 23:30 UTC on the 25th: the 26th
    }
    try:
        with session_scope(engine) as session:
            story = Story(session)
            for n, moment in moments.items():
                story.request(n, moment.astimezone(UTC), requester=REQUESTER)
        digest = _read(engine, day=date(2026, 10, 25))
    finally:
        engine.dispose()
    found = digest_json(digest)

    assert found["window"] == {"from": "2026-10-24T22:00:00Z", "to": "2026-10-25T23:00:00Z", "hours": 25.0}
    assert found["counts"]["requested"] == 4
    assert [(day["date"], day["counts"]["requested"]) for day in found["daily"][-2:]] == [
        ("2026-10-24", 1),
        ("2026-10-25", 4),
    ]
    assert found["previous_7_day_average"]["requested"] == 0.14
    assert digest_text(digest).splitlines()[:2] == [
        "jit-bot daily digest for Sunday 2026-10-25 (Europe/Berlin)",
        "A 25-hour day: 2026-10-24 22:00 to 2026-10-25 23:00 UTC, compared with the average of the 7 days before",
    ]


def test_local_days_are_23_or_25_hours_when_the_clocks_change() -> None:
    assert local_day(date(2026, 3, 29), BERLIN).hours == 23
    assert local_day(date(2026, 10, 25), BERLIN).hours == 25
    assert local_day(date(2026, 10, 28), BERLIN).hours == 24
    assert local_day(date(2026, 10, 25), ZoneInfo("UTC")).hours == 24
    plan = plan_digest(date(2026, 10, 28), OPTIONS, now=NOW)
    assert [round(span.hours) for span in plan.days] == [24, 24, 24, 24, 25, 24, 24, 24]
    assert plan.lookback.start == datetime(2026, 10, 22, 0, 0, tzinfo=BERLIN)
    assert plan.lookback.end == datetime(2026, 10, 29, 0, 0, tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("hours", "day"),
    [
        pytest.param({}, date(2026, 10, 26), id="a-monday"),
        pytest.param({}, date(2026, 10, 25), id="a-sunday"),
        pytest.param({"days": ["sun"], "from": "01:00", "to": "04:00"}, date(2026, 10, 25), id="through-the-fall-back"),
        pytest.param({"days": ["sun"], "from": "01:00", "to": "04:00"}, date(2026, 3, 29), id="through-the-gap"),
        pytest.param({"days": ["fri"], "from": "22:00", "to": "06:00"}, date(2026, 10, 24), id="overnight-morning"),
        pytest.param({"days": ["fri"], "from": "22:00", "to": "06:00"}, date(2026, 10, 23), id="overnight-evening"),
    ],
)
def test_business_spans_hold_exactly_the_business_minutes(hours: dict[str, Any], day: date) -> None:
    """Every minute of the local day is in a span exactly when the wall clock says it is business time
    (a window past midnight belongs to the day it starts on)."""
    business = BusinessHours.model_validate(hours)
    spans = business_spans(day, business, BERLIN)
    whole = local_day(day, BERLIN)
    moment = whole.start
    while moment < whole.end:
        wall = moment.astimezone(BERLIN)
        clock = wall.time()
        if business.start < business.end:
            expected = business.start <= clock < business.end and f"{wall:%a}".lower() in business.days
        else:
            started = wall.date() if clock >= business.start else wall.date() - timedelta(days=1)
            expected = (clock >= business.start or clock < business.end) and f"{started:%a}".lower() in business.days
        assert any(span.start <= moment < span.end for span in spans) == expected, wall
        moment += timedelta(minutes=15)


def test_the_default_day_is_yesterday_in_the_digest_s_zone() -> None:
    # 00:30 in Berlin on the 28th is still the 27th in UTC: Berlin's yesterday is the 27th, UTC's the 26th.
    now = datetime(2026, 10, 27, 23, 30, tzinfo=UTC)
    assert yesterday(now, BERLIN) == date(2026, 10, 27)
    assert yesterday(now, ZoneInfo("UTC")) == date(2026, 10, 26)


# --- the pure part: quantiles, the JSON, the text, the chart -----------------------------------------


@pytest.mark.parametrize(
    "values",
    [[5], [5, 8], [5, 8, 11, 121, 600], [1, 1, 1, 2, 9, 9, 30], list(range(1, 101)), [3.5, 3.5, 7.25, 100.0]],
)
def test_quantiles_from_a_histogram_match_the_statistics_module(values: list[float]) -> None:
    histogram = [(value, values.count(value)) for value in sorted(set(values))]
    assert quantile(histogram, 0.5) == pytest.approx(statistics.median(values))
    if len(values) > 1:
        deciles = statistics.quantiles(values, n=10, method="inclusive")
        assert quantile(histogram, 0.9) == pytest.approx(deciles[8])
    assert quantile([], 0.5) is None


CONTRACT = {
    "date",
    "timezone",
    "counts",
    "previous_7_day_average",
    "top_requesters",
    "top_resources",
    "time_to_decision_seconds",
    "off_hours_grants",
    "denied_more_than_once",
    "never_picked_up",
    "anomalies",
    "audit_head",
    "longest_grants",
    "widest_grants",
}


def test_the_json_keeps_the_contract(story_engine: Engine) -> None:
    found = json.loads(json.dumps(digest_json(_read(story_engine))))

    assert CONTRACT <= set(found)
    assert set(found) - CONTRACT == {
        "window",
        "business_hours",
        "daily",
        "unrevoked_past_expiry",
        "break_glass_grants",
        "thresholds",
        "generated_at",
        "extensions",
    }
    assert (found["date"], found["timezone"]) == ("2026-10-28", "Europe/Berlin")
    assert list(found["counts"]) == list(COUNT_KEYS)
    assert list(found["previous_7_day_average"]) == list(COUNT_KEYS)
    assert set(found["anomalies"]) == {"fast_approvals", "approves_everything", "same_pair_repeated"}
    assert set(found["time_to_decision_seconds"]) == {"median", "p90", "decisions"}
    assert set(found["audit_head"]) == {"seq", "hash", "verified", "problem"}
    assert found["thresholds"] == {
        "fast_approval_seconds": 10,
        "approves_everything_votes": 10,
        "same_pair_approvals": 3,
        "lookback_days": 7,
    }
    assert found["business_hours"] == {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "19:00"}
    assert found["generated_at"] == "2026-10-29T08:00:00Z"


def _text_of_the_story(head: str) -> str:
    return f"""\
jit-bot daily digest for Wednesday 2026-10-28 (Europe/Berlin)
2026-10-27 23:00 to 2026-10-28 23:00 UTC, compared with the average of the 7 days before

                           day  7-day avg
requested                    9        1.7  +426%
approved by people           4        1.7  +134%
auto-approved by a rule      1        0.0  new
denied                       2        0.0  new
expired undecided            1        0.0  new
cancelled                    1        0.0  new
failed mints                 1        0.1  +614%
revocation failures          3        0.0  new
break-glass                  0        0.0

Top requesters: {REQUESTER} (5), {GROUP_MEMBER} (2), {APPROVER_2} (1), {OUTSIDER} (1)
Top resources: prod-db (7), billing (1), k8s (1)
Time to a decision by people: median 11s, p90 6m48s (5 decision(s))
Longest grants: {rid(3)} prod-db 2h for {APPROVER_2}, {rid(2)} billing 1h for {REQUESTER}, \
{rid(1)} prod-db 1h for {REQUESTER}, {rid(4)} k8s 30m for {GROUP_MEMBER}
Widest grants: {rid(3)} prod-db 2 scope(s): read, write for {APPROVER_2}, \
{rid(2)} billing 2 scope(s): read, refund for {REQUESTER}, {rid(4)} k8s 2 scope(s): view, edit for {GROUP_MEMBER}, \
{rid(1)} prod-db 1 scope(s): read for {REQUESTER}
Off-hours grants (approved or picked up outside mon-fri 08:00-19:00): {rid(3)}, {rid(4)}, {rid(10)}
Denied more than once: {REQUESTER}
Ended without the token picked up: {rid(2)}
Past expiry, not yet confirmed revoked: {rid(3)}
Break-glass: none
Extensions of active grants: 0 asked, 0 approved

Anomalies: 10
- Fast approval (within 10 s of the card): {rid(1)} by {APPROVER_1} after 3 s
- Fast approval (within 10 s of the card): {rid(2)} by {APPROVER_1} after 3 s
- Fast approval (within 10 s of the card): {rid(9)} by {APPROVER_2} after 8 s
- Fast approval (within 10 s of the card): {rid(3)} by {APPROVER_1} after 10 s
- Approves everything (10+ votes in 7 days, all approve): {APPROVER_2} (11 votes)
- Same pair (3+ approvals in 7 days): {APPROVER_2} approved {OUTSIDER} 6 times
- Same pair (3+ approvals in 7 days): {HASTY} approved {OUTSIDER} 6 times
- Same pair (3+ approvals in 7 days): {NINE} approved {OUTSIDER} 6 times
- Same pair (3+ approvals in 7 days): {APPROVER_1} approved {REQUESTER} 4 times
- Same pair (3+ approvals in 7 days): {APPROVER_2} approved {REQUESTER} 3 times

Audit trail head: {head}, verified"""


def test_the_terminal_text_stands_on_its_own_and_ends_with_the_verified_head(story_engine: Engine) -> None:
    seq, link = _head(story_engine)

    said = digest_text(_read(story_engine))

    assert said == _text_of_the_story(f"{seq}:{link}")


def _hostile_digest() -> Digest:
    """A digest whose database text tries to mention everyone, link, and move a terminal's cursor."""
    plan = plan_digest(DAY, OPTIONS, now=NOW)
    daily = tuple({"requested": 1} for _ in plan.days)
    figures = Figures(
        daily=daily,
        top_requesters=(Ranked(REQUESTER, 2), Ranked("<!channel>", 1)),
        top_resources=(Ranked("db <https://evil.example|click>", 1),),
        longest_grants=(GrantLine(rid(1), REQUESTER, "a&b", 60, ("read`x", "\x1b[2Jwipe")),),
    )
    return Digest(plan, figures, AuditAnchor(7, "ab" * 32, verified=False, problem="event 3 <is> missing"))


def test_the_slack_text_escapes_database_text_and_mentions_only_user_ids() -> None:
    said = digest_text(_hostile_digest(), slack=True)

    assert "<!channel>" not in said and "<https://" not in said
    assert f"<@{REQUESTER}> (2), `&lt;!channel&gt;` (1)" in said
    assert "`db &lt;https://evil.example|click&gt;` (1)" in said
    assert f"`{rid(1)}` a&amp;b 1m for <@{REQUESTER}>" in said
    assert "\x1b" not in said
    assert said.startswith("*jit-bot daily digest for Wednesday 2026-10-28 (Europe/Berlin)*\n")
    # The counts table is a code block, so its columns stay aligned.
    assert "\n```\n" in said and said.count("```") == 2
    assert said.endswith(f"*Audit trail head:* `7:{'ab' * 32}`, NOT VERIFIED: event 3 &lt;is&gt; missing")
    # The same escaping as every other message the bot sends.
    assert escape("a<b>&c") == "a&lt;b&gt;&amp;c"


def test_the_terminal_text_has_no_control_characters() -> None:
    said = digest_text(_hostile_digest())

    assert "\x1b" not in said
    assert said.endswith(f"Audit trail head: 7:{'ab' * 32}, NOT VERIFIED: event 3 <is> missing")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "the PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR"), "IHDR is the first chunk"
    width, height = struct.unpack(">II", data[16:24])
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(data[12:29]), "IHDR's checksum"
    assert data.endswith(b"IEND\xaeB`\x82")
    return width, height


def test_the_chart_is_a_png_of_the_size_chosen(story_engine: Engine) -> None:
    data = chart_png(_read(story_engine))

    assert _png_size(data) == (int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI)) == (1000, 450)


def test_a_chart_of_a_day_without_requests_is_drawn_too() -> None:
    plan = plan_digest(DAY, OPTIONS, now=NOW)
    empty = Digest(plan, Figures(daily=tuple({} for _ in plan.days)), AuditAnchor(0, "0" * 64, verified=True))

    assert _png_size(chart_png(empty)) == (1000, 450)


# --- jit-bot digest ----------------------------------------------------------------------------------

BERLIN_POLICY = policy_data(digest={"timezone": "Europe/Berlin"})


def _env(tmp_path: Path, database_url: str) -> dict[str, str]:
    write_policy(tmp_path, BERLIN_POLICY)
    return {"JIT_AUDIT_KEY": AUDIT_KEY, "JIT_DATABASE_URL": database_url}


def test_jit_bot_digest_json_end_to_end(tmp_path: Path, story_engine: Engine, database_url: str) -> None:
    seq, link = _head(story_engine)

    result = run_cli(tmp_path, "digest", "--date", "2026-10-28", "--format", "json", env=_env(tmp_path, database_url))

    assert result.returncode == 0, result.stderr
    assert messages(result.stderr) == []
    found = json.loads(result.stdout)
    expected = digest_json(_read(story_engine))
    # Made now rather than the next morning: only what depends on the moment differs.
    for moment_bound in ("generated_at",):
        found.pop(moment_bound), expected.pop(moment_bound)
    assert found == json.loads(json.dumps(expected))
    assert found["audit_head"] == {"seq": seq, "hash": link, "verified": True, "problem": None}


def test_jit_bot_digest_text_and_chart(tmp_path: Path, story_engine: Engine, database_url: str) -> None:
    seq, link = _head(story_engine)

    result = run_cli(
        tmp_path, "digest", "--date", "2026-10-28", "--chart", "week.png", env=_env(tmp_path, database_url)
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == _text_of_the_story(f"{seq}:{link}") + "\n"
    assert _png_size((tmp_path / "week.png").read_bytes()) == (1000, 450)
    # Only that, and no guesses of matplotlib's about what the labels are.
    assert [line.split(" INFO ", 1)[-1] for line in result.stderr.splitlines()] == [
        "jit-bot: chart written to week.png"
    ]


def test_a_trail_that_does_not_verify_is_said_last_and_exits_1(
    tmp_path: Path, story_engine: Engine, database_url: str
) -> None:
    seq, link = _head(story_engine)
    with story_engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_event WHERE seq = 7"))

    result = run_cli(tmp_path, "digest", "--date", "2026-10-28", env=_env(tmp_path, database_url))

    assert result.returncode == 1
    assert messages(result.stderr) == []
    assert result.stdout.startswith("jit-bot daily digest for Wednesday 2026-10-28 (Europe/Berlin)\n")
    assert result.stdout.endswith(
        f"Audit trail head: {seq}:{link}, NOT VERIFIED: broken at event 7: event 7 is missing\n"
    )


def test_the_default_date_is_yesterday(tmp_path: Path) -> None:
    """Yesterday in UTC here (the world's policy has no digest: settings): an empty database's digest of it."""
    url = f"sqlite:///{tmp_path / 'jit.db'}"
    engine = bind_audit_key(make_engine(url), KEY)
    migrate(engine)
    engine.dispose()
    write_policy(tmp_path, POLICY)

    result = run_cli(tmp_path, "digest", "--format", "json", env={"JIT_AUDIT_KEY": AUDIT_KEY, "JIT_DATABASE_URL": url})

    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    generated = datetime.fromisoformat(found["generated_at"].replace("Z", "+00:00"))
    assert found["date"] == yesterday(generated, ZoneInfo("UTC")).isoformat()
    assert found["timezone"] == "UTC"


def _bad_database(tmp_path: Path, kind: str) -> str:
    path = tmp_path / "jit.db"
    if kind == "not-a-database":
        path.write_bytes(b"this is not SQLite at all, but it is long enough to look like a header" * 20)
    else:
        path.touch()  # a database without the schema
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    ("args", "database", "said"),
    [
        pytest.param(
            ["--date", "yesterday"], None, "--date: 'yesterday' is not a date like 2026-10-25", id="not-a-date"
        ),
        pytest.param(["--date", "2026-02-30"], None, "--date: '2026-02-30' is not a date like 2026-10-25", id="no-day"),
        pytest.param(
            ["--date", "2999-01-01"], None, "--date: 2999-01-01 has not begun yet in Europe/Berlin", id="future"
        ),
        pytest.param(
            ["--chart", "no/such/folder/week.png"],
            None,
            "--chart: cannot write no/such/folder/week.png: there is no folder no/such/folder",
            id="chart-folder-missing",
        ),
        pytest.param(
            ["--chart", "."], None, "--chart: . is a folder; give a file name like digest.png", id="chart-is-a-folder"
        ),
        pytest.param(
            [],
            "not-a-database",
            "JIT_DATABASE_URL: cannot read the requests and the audit trail (DatabaseError); "
            "is it the right database, migrated?",
            id="not-a-database",
        ),
        pytest.param(
            [],
            "unmigrated",
            "JIT_DATABASE_URL: cannot read the requests and the audit trail (OperationalError); "
            "is it the right database, migrated?",
            id="unmigrated",
        ),
    ],
)
def test_bad_input_is_one_line_and_prints_nothing(
    tmp_path: Path, args: list[str], database: str | None, said: str
) -> None:
    url = _bad_database(tmp_path, database) if database else f"sqlite:///{tmp_path / 'jit.db'}"
    if database is None:
        engine = bind_audit_key(make_engine(url), KEY)
        migrate(engine)
        engine.dispose()

    result = run_cli(tmp_path, "digest", *args, env=_env(tmp_path, url))

    assert result.returncode == 2
    assert result.stdout == ""
    assert_no_traceback(result.stderr)
    assert messages(result.stderr) == [f"jit-bot: {said}"]
    assert not (tmp_path / "week.png").exists()


def test_a_missing_database_is_one_line_and_creates_none(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "digest", env=_env(tmp_path, f"sqlite:///{tmp_path / 'jit.db'}"))

    assert result.returncode == 2
    assert messages(result.stderr)[0].startswith("jit-bot: JIT_DATABASE_URL: there is no database at ")
    assert not (tmp_path / "jit.db").exists()


def test_a_bad_digest_policy_is_one_line_naming_the_key(tmp_path: Path) -> None:
    write_policy(tmp_path, policy_data(digest={"timezone": "Mars/Olympus"}))

    result = run_cli(tmp_path, "digest", env={"JIT_DATABASE_URL": f"sqlite:///{tmp_path / 'jit.db'}"})

    assert result.returncode == 2
    assert messages(result.stderr) == [
        "jit-bot: policy.yml: digest.timezone: 'Mars/Olympus' is not a time zone (an IANA name like Europe/Berlin, "
        "or UTC)"
    ]


# --- the policy keys ---------------------------------------------------------------------------------


def test_the_digest_keys_of_the_readme_parse() -> None:
    policy = make_policy(
        channels={"audit": "C0AUDIT", "digest": "C0SECURITY"},
        security_leads=["U0LEAD", "S0SECLEADS", "W0ENTERPRISE"],
        digest={
            "time": "09:00",
            "timezone": "Europe/Berlin",
            "business_hours": {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "19:00"},
        },
    )
    assert policy.channels.digest == "C0SECURITY"
    assert policy.security_leads == ("U0LEAD", "S0SECLEADS", "W0ENTERPRISE")
    assert (policy.digest.time, policy.digest.zone) == (time(9), BERLIN)
    # Keys left out keep their own defaults.
    partial = make_policy(digest={"business_hours": {"from": "07:00"}}).digest.business_hours
    assert (partial.days, partial.start, partial.end) == (("mon", "tue", "wed", "thu", "fri"), time(7), time(19))


def test_0007_downgrades_and_upgrades_again_keeping_the_trail(database_url: str) -> None:
    """The digest's indexes come off (the old index on event_type alone goes back) and on again; the
    events stay, and still verify."""
    engine = bind_audit_key(make_engine(database_url), KEY)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        migrate(engine)
        with session_scope(engine) as session:
            Story(session).request(1, local("10:00"), requester=REQUESTER)

        def indexes() -> set[str]:
            inspector = inspect(engine)
            return {i["name"] for table in ("audit_event", "vote") for i in inspector.get_indexes(table)}

        assert {"ix_audit_event_type_at", "ix_vote_created_at"} <= indexes()
        assert "ix_audit_event_event_type" not in indexes()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0006")
        assert "ix_audit_event_event_type" in indexes()
        assert not {"ix_audit_event_type_at", "ix_vote_created_at"} & indexes()
        migrate(engine)
        assert {"ix_audit_event_type_at", "ix_vote_created_at"} <= indexes()
        found = digest_json(_read(engine))
    finally:
        engine.dispose()
    assert found["counts"]["requested"] == 1
    assert found["audit_head"]["verified"] is True
