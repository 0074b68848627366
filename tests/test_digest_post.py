"""The daily digest in Slack: posted once a day at digest.time in digest.timezone, by one replica,
through the outbox (text, then the chart uploaded in its thread); and `/jit digest` for security
leads and approvers.

Time is the runtime's injected clock, moved to chosen moments of Asia/Tokyo (UTC+9, no DST): with the
digest at 08:30 there, 08:30 on 5 November is 23:30 UTC on the 4th, so a bot that read the day on
the UTC clock would post the digest of the 3rd, and one that ignored the time zone would post late.
The job is run directly, as the scheduler would.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from bot.demo.slack_api import SlackStandIn
from bot.domain.digest_chart import DPI, HEIGHT_IN, WIDTH_IN
from bot.domain.policy import Policy
from bot.runtime import DIGEST_AT_START_JOB, DIGEST_JOB, Runtime, build_runtime
from bot.services.delivery import DeliveryPolicy
from bot.store.models import AuditEvent, DigestDay
from bot.store.types import utcnow
from tests.harness import free_socket
from tests.testbot import Bot, TestClock, serving
from tests.world import (
    APPROVER_2,
    AUDIT_CHANNEL,
    BOT_TOKEN,
    GROUP_MEMBER,
    OUTSIDER,
    REQUESTER,
    SLACK_USERS,
    UNMAPPED,
    USERGROUPS,
    build_settings,
    make_policy,
)

TOKYO = ZoneInfo("Asia/Tokyo")
DIGEST_CHANNEL = "C0SECURITY1"
LEADS_GROUP = "S0SECLEADS"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tokyo(day: int, clock: str, month: int = 11) -> datetime:
    hours, minutes = (int(part) for part in clock.split(":"))
    return datetime(2026, month, day, hours, minutes, tzinfo=TOKYO)


@pytest.fixture
def policy() -> Policy:
    # REQUESTER is a lead by id and UNMAPPED through the leads' usergroup; neither approves anything.
    return make_policy(
        channels={"audit": AUDIT_CHANNEL, "digest": DIGEST_CHANNEL},
        security_leads=[REQUESTER, LEADS_GROUP],
        digest={"time": "08:30", "timezone": "Asia/Tokyo"},
    )


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    standin = SlackStandIn(BOT_TOKEN, users=SLACK_USERS, usergroups={**USERGROUPS, LEADS_GROUP: [UNMAPPED]})
    standin.start()
    yield standin
    standin.stop()


class Clock(TestClock):
    """The bot's clock, set to a moment; time flows from there (the outbox's retries wait on it)."""

    def set(self, moment: datetime) -> None:
        self.offset = moment - utcnow()


@contextmanager
def runtime_at(
    database_url: str, engine: Engine, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy, clock: Clock
) -> Iterator[Runtime]:
    """A replica with its outbox delivering and its jobs not started: the test runs them."""
    sock = free_socket()
    settings = build_settings(slack, database_url, sock.getsockname()[1])
    sock.close()
    runtime = build_runtime(settings, policy, engine=engine, delivery=delivery, clock=clock)
    runtime.dispatcher.start()
    try:
        yield runtime
    finally:
        runtime.dispatcher.stop()
        runtime.executor.shutdown(wait=True)
        if runtime.rego is not None:
            runtime.rego.close()


def digest_posts(slack: SlackStandIn) -> list[dict[str, Any]]:
    return [m for m in slack.messages(DIGEST_CHANNEL) if "daily digest for" in (m["text"] or "")]


def days_leased(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.execute(select(DigestDay.day).order_by(DigestDay.day)).scalars())


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_digest_is_posted_at_digest_time_in_its_time_zone_with_its_chart(
    database_url: str, engine: Engine, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> None:
    clock = Clock()
    with runtime_at(database_url, engine, policy, slack, delivery, clock) as runtime:
        # 08:29 in Tokyo: the 4th's digest is not due yet, but the 3rd's is (it fell due yesterday at
        # 08:30), so a bot starting now owes that one.
        clock.set(tokyo(5, "08:29"))
        runtime.jobs.run_now(DIGEST_JOB)
        assert days_leased(engine) == ["2026-11-03"]
        runtime.jobs.run_now(DIGEST_JOB)
        assert days_leased(engine) == ["2026-11-03"], "a minute later, nothing more"

        clock.set(tokyo(5, "08:30"))
        runtime.jobs.run_now(DIGEST_JOB)
        assert days_leased(engine) == ["2026-11-03", "2026-11-04"]

        posts = slack.wait_for(lambda: len(digest_posts(slack)) == 2 and digest_posts(slack))
        assert "daily digest for Wednesday 2026-11-04 (Asia/Tokyo)" in posts[1]["text"]
        assert "Audit trail head:" in posts[1]["text"], "the text stands on its own"
        files = slack.wait_for(lambda: len(slack.files(DIGEST_CHANNEL)) == 2 and slack.files(DIGEST_CHANNEL))

    # Each chart went through the three steps and landed in its own digest's thread.
    assert [c.method for c in slack.calls if c.method.startswith("files.") or c.method == "upload"][:3] == [
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]
    by_day = {f["name"]: f for f in files}
    chart = by_day["jit-digest-2026-11-04.png"]
    assert chart["thread_ts"] == posts[1]["ts"]
    assert by_day["jit-digest-2026-11-03.png"]["thread_ts"] == posts[0]["ts"]
    assert png_size(chart["data"]) == (int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI))
    assert chart["size"] == len(chart["data"])


def test_two_replicas_post_one_digest(
    database_url: str, engine: Engine, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> None:
    clock = Clock()
    clock.set(tokyo(5, "09:00"))
    with ExitStack() as stack:
        replicas = [stack.enter_context(runtime_at(database_url, engine, policy, slack, delivery, clock)) for _ in "ab"]
        start = threading.Barrier(2)
        queued: list[bool] = []

        def run(runtime: Runtime) -> None:
            start.wait()
            queued.append(runtime.digests.post_due())

        threads = [threading.Thread(target=run, args=(replica,)) for replica in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(queued) == [False, True], "exactly one replica queued it"
        slack.wait_for(lambda: digest_posts(slack) and slack.files(DIGEST_CHANNEL))
        for replica in replicas:
            replica.jobs.run_now(DIGEST_JOB)
        # Both replicas' outboxes ran meanwhile: give a duplicate the time to show.
        slack.wait_for(lambda: slack.calls_to("files.completeUploadExternal"))
    assert len(digest_posts(slack)) == 1
    assert len(slack.files(DIGEST_CHANNEL)) == 1
    assert days_leased(engine) == ["2026-11-04"]


def test_a_bot_down_at_digest_time_posts_it_when_it_starts_and_once(
    database_url: str, engine: Engine, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> None:
    clock = Clock()
    clock.set(tokyo(5, "09:15"))
    with runtime_at(database_url, engine, policy, slack, delivery, clock) as first:
        first.jobs.run_now(DIGEST_AT_START_JOB)
        slack.wait_for(lambda: digest_posts(slack))
    # Restarted the same day, past digest time: the day is leased, nothing more is posted.
    with runtime_at(database_url, engine, policy, slack, delivery, clock) as second:
        second.jobs.run_now(DIGEST_AT_START_JOB, DIGEST_JOB)
    assert len(digest_posts(slack)) == 1

    # Down from before the 6th's digest time until after the 7th's: on starting, the bot posts the
    # digest due most recently (of the 6th), not the one it missed entirely (of the 5th).
    clock.set(tokyo(7, "10:00"))
    with runtime_at(database_url, engine, policy, slack, delivery, clock) as third:
        third.jobs.run_now(DIGEST_AT_START_JOB)
        slack.wait_for(lambda: len(digest_posts(slack)) == 2)
    assert days_leased(engine) == ["2026-11-04", "2026-11-06"]
    assert "2026-11-06 (Asia/Tokyo)" in digest_posts(slack)[1]["text"]


@pytest.mark.parametrize("status", [429, 503])
def test_slack_failing_while_posting_posts_once_later(
    database_url: str,
    engine: Engine,
    policy: Policy,
    slack: SlackStandIn,
    delivery: DeliveryPolicy,
    status: int,
) -> None:
    error = "ratelimited" if status == 429 else "service_unavailable"
    slack.fail_next("chat.postMessage", error, times=2, status=status, retry_after=1)
    slack.fail_next("files.completeUploadExternal", "internal_error", status=500)
    clock = Clock()
    clock.set(tokyo(5, "08:31"))
    with runtime_at(database_url, engine, policy, slack, delivery, clock) as runtime:
        runtime.jobs.run_now(DIGEST_JOB)
        slack.wait_for(lambda: slack.files(DIGEST_CHANNEL), timeout=20)
        runtime.jobs.run_now(DIGEST_JOB)
    refused = [c for c in slack.calls_to("chat.postMessage") if c.kind == "injected"]
    assert len(refused) == 2, "Slack refused the first two attempts"
    assert len(digest_posts(slack)) == 1
    files = slack.files(DIGEST_CHANNEL)
    assert len(files) == 1 and files[0]["thread_ts"] == digest_posts(slack)[0]["ts"]


def test_the_text_is_posted_when_the_chart_cannot_be(
    database_url: str, engine: Engine, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> None:
    # The upload is refused for good (a workspace that restricts uploads): the text still arrives, once.
    slack.fail_next("files.getUploadURLExternal", "file_upload_size_restricted", times=1)
    clock = Clock()
    clock.set(tokyo(5, "08:31"))
    with runtime_at(database_url, engine, policy, slack, delivery, clock) as runtime:
        runtime.jobs.run_now(DIGEST_JOB)
        slack.wait_for(lambda: digest_posts(slack))
        slack.wait_for(lambda: slack.calls_to("files.getUploadURLExternal"))
    assert len(digest_posts(slack)) == 1
    assert slack.files(DIGEST_CHANNEL) == []


# --- the stand-in's upload flow --------------------------------------------------------------------


def _api(slack: SlackStandIn, method: str, **args: Any) -> dict[str, Any]:
    answer = httpx.post(f"{slack.api_url}{method}", data=args, headers={"Authorization": f"Bearer {BOT_TOKEN}"})
    body: dict[str, Any] = answer.json()
    return body


def test_the_stand_in_refuses_what_slack_refuses_in_an_upload(slack: SlackStandIn) -> None:
    assert _api(slack, "files.getUploadURLExternal", filename="x.png", length="0")["error"] == "missing_argument"
    assert _api(slack, "files.getUploadURLExternal", length="5")["error"] == "invalid_arguments"
    started = _api(slack, "files.getUploadURLExternal", filename="x.png", length="5")
    assert started["ok"] and started["file_id"].startswith("F")

    # The bytes must be as many as announced, for a file id Slack handed out.
    assert httpx.post(started["upload_url"], content=b"1234").status_code == 400
    assert httpx.post(started["upload_url"].replace(started["file_id"], "F999"), content=b"12345").status_code == 404
    # Not completed before its bytes arrived.
    complete = json.dumps([{"id": started["file_id"], "title": "x"}])
    assert _api(slack, "files.completeUploadExternal", files=complete, channel_id=DIGEST_CHANNEL)["error"] == (
        "file_not_found"
    )
    uploaded = httpx.post(started["upload_url"], content=b"12345")
    assert uploaded.status_code == 200 and uploaded.text == "OK - 5"
    assert httpx.post(started["upload_url"], content=b"12345").status_code == 400, "uploaded once"

    def complete_with(**args: Any) -> str | None:
        answer = _api(slack, "files.completeUploadExternal", **args)
        return None if answer["ok"] else str(answer["error"])

    assert complete_with(files='[{"id": "F404", "title": "x"}]', channel_id=DIGEST_CHANNEL) == "file_not_found"
    assert complete_with(files="[]", channel_id=DIGEST_CHANNEL) == "invalid_arguments"
    assert complete_with(files=complete, channel_id="nope") == "channel_not_found"
    assert complete_with(files=complete, thread_ts="1.000001") == "invalid_arguments", "a thread needs a channel"
    assert complete_with(files=complete, channel_id=DIGEST_CHANNEL, thread_ts="1.000001") == "invalid_thread_ts"
    slack.remove_bot_from(DIGEST_CHANNEL)
    assert complete_with(files=complete, channel_id=DIGEST_CHANNEL) == "not_in_channel"
    slack.add_bot_to(DIGEST_CHANNEL)
    assert slack.files() == []
    assert complete_with(files=complete, channel_id=DIGEST_CHANNEL) is None
    shared = [(f["id"], f["data"], f["title"]) for f in slack.files(DIGEST_CHANNEL)]
    assert shared == [(started["file_id"], b"12345", "x")]
    assert complete_with(files=complete, channel_id=DIGEST_CHANNEL) == "file_not_found", "shared once"


# --- /jit digest -------------------------------------------------------------------------------------


@pytest.fixture
def digest_bot(
    engine: Engine, database_url: str, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> Iterator[Bot]:
    clock = Clock()
    clock.set(tokyo(5, "08:00"))
    with serving(engine, database_url, policy, slack, delivery, clock=clock) as served:
        yield served


def _answer(bot: Bot, user: str, text: str) -> str:
    response, key = bot.command(user, text)
    assert response.status_code == 200, response.text
    if response.content and response.json().get("text"):
        return str(response.json()["text"])
    return bot.eventually(lambda: bot.replies(key) and bot.reply_text(key))


def _refusals(engine: Engine) -> list[AuditEvent]:
    with Session(engine) as session:
        rows = session.execute(select(AuditEvent).where(AuditEvent.event_type == "unauthorized_attempt"))
        return [e for e in rows.scalars() if e.details.get("action") == "digest"]


@pytest.mark.parametrize("user", [REQUESTER, UNMAPPED, APPROVER_2, GROUP_MEMBER])
def test_leads_and_approvers_read_the_digest(digest_bot: Bot, user: str) -> None:
    """A lead by id, a lead through the usergroup, an approver by id, an approver through a usergroup."""
    text = _answer(digest_bot, user, "/jit digest")
    assert "daily digest for Wednesday 2026-11-04 (Asia/Tokyo)" in text
    text = _answer(digest_bot, user, "/jit digest 2026-11-01")
    assert "daily digest for Sunday 2026-11-01 (Asia/Tokyo)" in text
    replies = [r for r in digest_bot.slack.responses if "daily digest" in str(r.payload)]
    assert replies and all(r.payload.get("response_type") == "ephemeral" for r in replies)
    assert _refusals(digest_bot.engine) == []


def test_anyone_else_is_refused_and_the_attempt_audited(digest_bot: Bot) -> None:
    text = _answer(digest_bot, OUTSIDER, "/jit digest 2026-11-01")
    assert text == "Only security leads and approvers can read the digest."
    [refusal] = _refusals(digest_bot.engine)
    assert refusal.actor == OUTSIDER and refusal.details["refusal"] == "not_security_lead_or_approver"
    assert refusal.details["day"] == "2026-11-01"


@pytest.mark.parametrize("typed", ["yesterday", "2026-13-01", "2026-11-1", "2026-11-01 2026-11-02"])
def test_a_bad_date_gets_a_specific_answer(digest_bot: Bot, typed: str) -> None:
    text = _answer(digest_bot, REQUESTER, f"/jit digest {typed}")
    assert "is not a date like `2026-10-28`" in text


def test_a_day_not_begun_in_the_digest_s_zone_is_refused(digest_bot: Bot) -> None:
    # 08:00 on the 5th in Tokyo: the 5th has begun there (it is still the 4th in UTC), the 6th has not.
    assert "daily digest for Thursday 2026-11-05" in _answer(digest_bot, REQUESTER, "/jit digest 2026-11-05")
    assert _answer(digest_bot, REQUESTER, "/jit digest 2026-11-06") == "2026-11-06 has not begun yet in Asia/Tokyo."


def test_the_due_day_follows_the_digest_s_clock() -> None:
    """Given UTC moments, as the bot's clock gives them: the day and the time are read in the digest's zone."""
    from bot.services.digests import due_day

    policy = make_policy(digest={"time": "08:30", "timezone": "Asia/Tokyo"})

    def at(day: int, clock: str) -> datetime:
        return tokyo(day, clock).astimezone(UTC)

    assert due_day(at(5, "08:29"), policy) == date(2026, 11, 3)
    assert due_day(at(5, "08:30"), policy) == date(2026, 11, 4)
    assert due_day(at(6, "00:00"), policy) == date(2026, 11, 4)
    assert due_day(at(6, "08:30"), policy) == date(2026, 11, 5)


def test_a_digest_slack_refuses_for_good_is_an_alert(
    database_url: str, engine: Engine, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> None:
    slack.remove_bot_from(DIGEST_CHANNEL)
    clock = Clock()
    clock.set(tokyo(5, "08:31"))
    with runtime_at(database_url, engine, policy, slack, delivery, clock) as runtime:
        runtime.jobs.run_now(DIGEST_JOB)
        alerts = slack.wait_for(
            lambda: [m["text"] for m in slack.messages(AUDIT_CHANNEL) if "daily digest" in (m["text"] or "")]
        )
    assert len(alerts) == 1
    assert "`2026-11-04`" in alerts[0] and "`not_in_channel`" in alerts[0] and "/jit digest 2026-11-04" in alerts[0]
    assert digest_posts(slack) == []
    assert days_leased(engine) == ["2026-11-04"], "not retried as a new day: the day was queued"


def test_a_failed_upload_step_is_retried_and_the_chart_shared_once(
    database_url: str, engine: Engine, policy: Policy, slack: SlackStandIn, delivery: DeliveryPolicy
) -> None:
    slack.fail_next("upload", "service_unavailable", status=503)
    clock = Clock()
    clock.set(tokyo(5, "08:31"))
    with runtime_at(database_url, engine, policy, slack, delivery, clock) as runtime:
        runtime.jobs.run_now(DIGEST_JOB)
        slack.wait_for(lambda: slack.files(DIGEST_CHANNEL), timeout=20)
    uploads = slack.calls_to("upload")
    assert [c.kind for c in uploads] == ["injected", "ok"], "the bytes were sent again after the 503"
    # The retry starts over with a new file id; the first, never completed, is never shown.
    assert uploads[0].args["file_id"] != uploads[1].args["file_id"]
    assert [f["id"] for f in slack.files()] == [uploads[1].args["file_id"]]
    assert len(digest_posts(slack)) == 1


def test_0009_downgrades_and_upgrades_again(database_url: str) -> None:
    """The lease table comes off alone and goes back on empty."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from bot.store.db import MIGRATIONS, make_engine, migrate

    engine = make_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        migrate(engine)
        assert "digest_day" in inspect(engine).get_table_names()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0008")
        assert "digest_day" not in inspect(engine).get_table_names()
        assert "audit_forward" in inspect(engine).get_table_names(), "only its own table came off"
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        assert days_leased(engine) == []
    finally:
        engine.dispose()
