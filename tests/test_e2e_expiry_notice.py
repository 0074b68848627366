"""The expiry notice end to end: the requester is DMed ``expiry_notice`` before their grant ends, once,
with Extend and Revoke now; Revoke now from that DM ends the grant as the card's button does."""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from typing import Any

import pytest

from bot.config import ConfigError, load_policy
from bot.domain.policy import Policy
from bot.runtime import EXPIRY_NOTICES_JOB, build_runtime
from bot.slack.ids import ActionId
from tests.testbot import MintingBot, buttons
from tests.world import APPROVER_1, APPROVER_2, OUTSIDER, POLICY, REQUESTER, SQLITE_ONLY, make_policy, minutes
from tests.world import policy_data as world_policy

NOTICE_WORDS = "Extend it if you still need it"


@pytest.fixture
def policy() -> Policy:
    # prod-db's notice is the policy's (10m); billing's own 15m wins over it.
    resources = [dict(r) for r in POLICY["resources"]]
    resources[1]["expiry_notice"] = "15m"
    return make_policy(expiry_notice="10m", resources=resources, limits={"pending_per_requester": 5})


def _notices(bot: MintingBot, request_id: str) -> list[Any]:
    """The expiry notices Slack accepted for this request (the calls, with their blocks)."""
    return [
        c
        for c in bot.slack.calls_to("chat.postMessage")
        if c.ok
        and c.args.get("channel") == REQUESTER
        and NOTICE_WORDS in str(c.args.get("text"))
        and request_id in str(c.args.get("text"))
    ]


def _notice_events(bot: MintingBot, request_id: str) -> list[Any]:
    return bot.events(request_id, "expiry_notice_sent")


def _run(bot: MintingBot) -> None:
    bot.served.runtime.jobs.run_now(EXPIRY_NOTICES_JOB)


def test_the_notice_goes_out_once_at_end_minus_notice_with_extend_and_revoke_now(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 30m checking INC-1234")
    grant = bot.grant(request_id)
    assert grant.status == "active" and grant.expiry_notice_for is None

    # 11 minutes before the end: not yet.
    bot.clock.advance(minutes(19))
    _run(bot)
    assert _notice_events(bot, request_id) == []
    assert bot.grant(request_id).expiry_notice_for is None

    # 9 minutes before the end: due. Two replicas run the job at the same moment; one notice is sent.
    bot.clock.advance(minutes(2))
    replica = build_runtime(bot.served.runtime.settings, bot.served.runtime.policy, engine=bot.engine, clock=bot.clock)
    try:
        start = threading.Barrier(2)

        def run(jobs: Any) -> None:
            start.wait()
            jobs.run_now(EXPIRY_NOTICES_JOB)

        threads = [threading.Thread(target=run, args=(r.jobs,)) for r in (bot.served.runtime, replica)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        replica.close()
    (call,) = bot.eventually(lambda: _notices(bot, request_id))
    text = str(call.args["text"])
    ends = bot.grant(request_id).expires_at
    assert f"request `{request_id}`" in text and "`prod-db` (read)" in text
    assert f"ends <!date^{int(ends.timestamp())}^" in text
    left = re.search(r": (\d+)m left", text)
    assert left is not None and 8 <= int(left.group(1)) <= 9, text
    message = bot.slack.message(str(call.response["channel"]), str(call.response["ts"]))
    assert [(b["text"]["text"], b["action_id"], b["value"]) for b in buttons(message)] == [
        ("Extend", ActionId.EXTEND.value, request_id),
        ("Revoke now", ActionId.REVOKE.value, request_id),
    ]
    (event,) = _notice_events(bot, request_id)
    assert (event.actor, event.details["ends_at"]) == ("jit-bot", ends.isoformat())
    assert bot.grant(request_id).expiry_notice_for == ends

    # Later runs send nothing more, and the grant is untouched by the notice.
    bot.clock.advance(minutes(5))
    _run(bot)
    _run(bot)
    assert len(_notice_events(bot, request_id)) == 1
    assert len(_notices(bot, request_id)) == 1
    assert bot.grant(request_id).status == "active"


@SQLITE_ONLY
def test_revoke_now_from_the_notice_ends_the_grant_and_only_for_whom_the_card_allows(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 30m checking INC-1234")
    token = bot.token(request_id)
    bot.clock.advance(minutes(21))
    _run(bot)
    (call,) = bot.eventually(lambda: _notices(bot, request_id))
    dm, ts = str(call.response["channel"]), str(call.response["ts"])

    # A click on the DM's button by someone else (a forged payload: the DM is not theirs) is refused.
    _, key = bot.click(OUTSIDER, ActionId.REVOKE, request_id, channel=dm, ts=ts)
    assert "Only the requester or an approver" in bot.reply_text(key)
    assert bot.grant(request_id).status == "active"
    assert bot.introspect(token)["active"] is True

    _, key = bot.click(REQUESTER, ActionId.REVOKE, request_id, channel=dm, ts=ts)
    assert bot.reply_text(key) == f"Revoking `{request_id}` now. The card changes once the IdP confirms it."
    bot.eventually(lambda: bot.stored(request_id).status == "revoked", timeout=15)
    assert bot.introspect(token) == {"active": False}
    (requested,) = bot.events(request_id, "revoke_requested")
    assert requested.actor == REQUESTER
    assert bot.grant(request_id).revoke_requested_by == REQUESTER
    card = bot.card_showing(request_id, f"Revoked early by <@{REQUESTER}>")
    assert buttons(card) == []
    assert bot.eventually(lambda: bot.dms_to(REQUESTER, f"ended early by <@{REQUESTER}>"))


@SQLITE_ONLY
def test_no_notice_for_a_grant_ended_earlier_or_no_longer_than_the_notice_and_a_resources_own_wins(
    minting_bot: MintingBot,
) -> None:
    bot = minting_bot
    revoked = bot.approve("request prod-db read 30m revoked before its notice")
    short = bot.approve("request prod-db read 10m no longer than the notice")
    billing = bot.request(REQUESTER, "request billing read 1h billing has its own notice").request_id
    bot.click(APPROVER_1, ActionId.APPROVE, billing)
    bot.click(APPROVER_2, ActionId.APPROVE, billing)
    bot.eventually(lambda: bot.stored(billing).status == "active", timeout=15)

    # Right after activation the 10m grant is within its notice, and gets none.
    _run(bot)
    assert _notice_events(bot, short) == []
    _, key = bot.command(REQUESTER, f"revoke {revoked}")
    assert "Revoking" in bot.reply_text(key)
    bot.eventually(lambda: bot.stored(revoked).status == "revoked", timeout=15)

    # 16m before billing's end: its own 15m notice is not due, although it is beyond 10m.
    bot.clock.advance(minutes(44))
    _run(bot)
    assert _notice_events(bot, billing) == []
    bot.clock.advance(minutes(2))
    _run(bot)
    assert len(bot.eventually(lambda: _notices(bot, billing))) == 1
    assert [e.request_id for e in bot.audit() if e.event_type == "expiry_notice_sent"] == [billing]
    assert _notices(bot, revoked) == [] and _notices(bot, short) == []


def _write(tmp_path: Any, data: dict[str, Any]) -> Any:
    import yaml

    path = tmp_path / "policy.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"expiry_notice": "soon"}, "expiry_notice"),
        ({"resources": [{**POLICY["resources"][0], "expiry_notice": "2h"}]}, "resources[0].expiry_notice"),
        # The top-level notice, for a resource with none of its own (k8s: max_duration 30m).
        ({"expiry_notice": "30m"}, "expiry_notice"),
        # Shorter than the job's look every 5 s: it would mostly fall between two looks.
        ({"expiry_notice": "3s"}, "expiry_notice"),
        ({"resources": [{**POLICY["resources"][0], "expiry_notice": "30s"}]}, "resources[0].expiry_notice"),
    ],
    ids=[
        "not-a-duration",
        "not-shorter-than-max-duration",
        "top-level-not-shorter-than-a-resources",
        "shorter-than-a-minute",
        "a-resources-shorter-than-a-minute",
    ],
)
def test_a_wrong_expiry_notice_is_a_start_up_error_naming_the_key(
    tmp_path: Any, changes: dict[str, Any], line: str
) -> None:
    path = _write(tmp_path, world_policy(**changes))
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    (said,) = caught.value.lines
    assert said.startswith(f"{path}: {line}: "), said
    assert load_policy(_write(tmp_path, world_policy(expiry_notice="10m"))).expiry_notice == timedelta(minutes=10)


@SQLITE_ONLY
def test_an_extension_shorter_than_the_notice_still_gets_one_before_its_new_end(minting_bot: MintingBot) -> None:
    # The extension adds 5m to a 30m grant: its own duration is shorter than the 10m notice, but the
    # access it carries on runs to 35m, so its requester must be told before that end like anyone else.
    bot = minting_bot
    first = bot.approve("request prod-db read 30m checking INC-1234")
    bot.token(first)
    _, key = bot.command(REQUESTER, f"extend {first} 5m")
    extension = bot.eventually(lambda: next((r.id for r in _requests(bot) if r.extends == first), None))
    bot.click(APPROVER_1, ActionId.APPROVE, extension)
    bot.eventually(lambda: bot.stored(extension).status == "active", timeout=15)
    bot.token(extension)  # picked up: the first grant is replaced
    bot.eventually(lambda: bot.stored(first).status == "revoked", timeout=15)

    bot.clock.advance(minutes(26))  # 9m before the extension's end (35m after the first approval)
    _run(bot)
    assert len(bot.eventually(lambda: _notices(bot, extension))) == 1
    assert len(_notice_events(bot, extension)) == 1


def _requests(bot: MintingBot) -> list[Any]:
    from sqlmodel import Session, select

    from bot.store.models import AccessRequest

    with Session(bot.engine) as session:
        return list(session.exec(select(AccessRequest)).all())
