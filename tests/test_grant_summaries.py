"""Issue 11: when a request ends, the audit channel gets one summary of it, and nothing secret.

A grant that was live: who asked for what, who approved it (people, or the rule), how long it was
asked for and used, whether its token was picked up, how it ended, and the revocation's proof and
lag. Every other ending (failed, denied, expired unanswered, cancelled): one line.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from bot.demo.slack_api import SlackStandIn
from bot.domain.policy import Policy
from bot.services.delivery import DeliveryPolicy
from bot.slack.ids import ActionId
from tests.testbot import Bot, MintingBot, serving
from tests.world import APPROVER_1, APPROVER_2, AUDIT_CHANNEL, REQUESTER, make_policy

RULES = [
    {
        "name": "alice-billing-reads",
        "when": {"requester_in": [REQUESTER], "resources": ["billing"], "scopes_within": ["read"]},
        "effect": "auto_approve",
    }
]

# "confirmed 0.3 s after the grant ended"
LAG = re.compile(r"confirmed (\d+\.\d) s after the grant ended")


@pytest.fixture
def policy() -> Policy:
    return make_policy(rules=RULES)


@pytest.fixture
def idp_resources() -> dict[str, list[str]]:
    # The IdP refuses prod-db's write, which the policy offers: that request's mint fails.
    return {"https://db.internal.example": ["read"], "https://billing.internal.example": ["read", "refund"]}


def audit_lines(bot: Bot, request_id: str) -> list[str]:
    """Everything the bot posted to the audit channel about this request (accepted or not)."""
    return [t for t in bot.posts_to(AUDIT_CHANNEL, accepted=False) if f"`{request_id}`" in t]


def ending_lines(bot: Bot, request_id: str, event: str) -> list[str]:
    return [t for t in audit_lines(bot, request_id) if t.startswith(f"[{event}] `{request_id}`")]


def the_summary(bot: Bot, request_id: str, event: str) -> str:
    """The one summary of this ending: waited for, then checked to stay one (a second would be a bug)."""
    bot.eventually(lambda: ending_lines(bot, request_id, event), timeout=20)
    bot.eventually(lambda: "pending" not in bot.outbox_state() and "sending" not in bot.outbox_state())
    (line,) = ending_lines(bot, request_id, event)
    assert "\n" not in line, "one line"
    return line


def secrets_of(bot: Bot) -> list[str]:
    settings = bot.served.runtime.settings
    values = [
        settings.slack_bot_token,
        settings.slack_signing_secret,
        settings.oidc_client_secret,
        settings.jit_encryption_key,
        settings.jit_audit_key,
    ]
    return [v.get_secret_value() for v in values if v is not None]


def assert_nothing_secret(bot: Bot, request_id: str, *, token: str | None = None, url: str | None = None) -> None:
    """No audit line about the request holds the token, its pickup link (or the link's id) or a secret."""
    lines = audit_lines(bot, request_id)
    assert lines
    forbidden = secrets_of(bot)
    if token is not None:
        forbidden.append(token)
    if url is not None:
        forbidden += [url, url.rsplit("/", 1)[1]]
    for line in lines:
        assert "/pickup/" not in line, line
        for secret in forbidden:
            assert secret not in line, f"a secret in the audit channel: {line}"


def assert_lag_matches_the_trail(bot: MintingBot, request_id: str, line: str) -> None:
    """The lag shown is the one the audit trail recorded with the proof, to the tenth of a second."""
    match = LAG.search(line)
    assert match is not None, line
    (revoked,) = bot.events(request_id, "grant_revoked")
    assert revoked.details["proof"]["introspection"] == {"active": False}
    assert abs(float(match.group(1)) - revoked.details["lag_ms"] / 1000) <= 0.11, (line, revoked.details)


PROOF = "Revocation proof: the IdP accepted the revocation and introspection says the token is inactive"


def test_an_expired_grant_that_was_picked_up(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 4s look at the slow query")
    url = bot.pickup_url(request_id)
    token = bot.token(request_id)
    bot.eventually(lambda: bot.stored(request_id).status == "revoked", timeout=20)

    line = the_summary(bot, request_id, "revoked")
    assert line.startswith(f"[revoked] `{request_id}` <@{REQUESTER}> → `prod-db` (read, 4s). :lock: ")
    assert f"Approved by <@{APPROVER_1}>." in line
    assert re.search(r"Used [34]s of 4s \(active <!date\^\d+\^.*> to <!date\^\d+\^.*>\)", line), line
    assert "; token picked up <!date^" in line
    assert "Ended at its expiry." in line and "early" not in line
    assert PROOF in line
    assert_lag_matches_the_trail(bot, request_id, line)
    assert_nothing_secret(bot, request_id, token=token, url=url)
    # The step lines still said what was news at the time; the ending is told once.
    events = [t.split(" ", 1)[0] for t in audit_lines(bot, request_id)]
    assert events == ["[submitted]", "[active]", "[revoked]"]


def test_a_grant_never_picked_up(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 2s nobody came")
    url = bot.pickup_url(request_id)
    bot.eventually(lambda: bot.stored(request_id).status == "revoked", timeout=20)

    line = the_summary(bot, request_id, "revoked")
    assert "token never picked up" in line and "picked up <!date" not in line
    assert "Ended at its expiry." in line
    assert PROOF in line
    assert_lag_matches_the_trail(bot, request_id, line)
    assert bot.grant(request_id).picked_up_at is None
    assert_nothing_secret(bot, request_id, url=url)


def test_revoked_early_by_the_requester_with_the_button_and_by_an_approver_with_the_command(
    minting_bot: MintingBot,
) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h first")
    token = bot.token(first)
    bot.card_showing(first, "Revoke now")
    bot.click(REQUESTER, ActionId.REVOKE, first)
    bot.eventually(lambda: bot.stored(first).status == "revoked", timeout=15)

    line = the_summary(bot, first, "revoked")
    assert f"Ended early by <@{REQUESTER}>." in line and "at its expiry" not in line
    assert re.search(r"Used \d+s of 1h ", line), "used: from activation to the moment it was ended"
    assert "; token picked up <!date^" in line
    assert PROOF in line
    assert_lag_matches_the_trail(bot, first, line)
    assert_nothing_secret(bot, first, token=token, url=bot.pickup_url(first))

    second = bot.approve("request prod-db read 1h second")
    bot.send.slash(APPROVER_2, f"revoke {second}")
    bot.eventually(lambda: bot.stored(second).status == "revoked", timeout=15)
    line = the_summary(bot, second, "revoked")
    assert f"Approved by <@{APPROVER_1}>. " in line and f"Ended early by <@{APPROVER_2}>." in line
    assert "token never picked up" in line
    assert_nothing_secret(bot, second, url=bot.pickup_url(second))


def test_auto_approved_by_a_rule_says_the_rule(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.request(REQUESTER, "request billing read 1h monthly report").request_id
    bot.eventually(lambda: bot.stored(request_id).status == "active", timeout=15)
    token = bot.token(request_id)
    bot.send.slash(REQUESTER, f"revoke {request_id}")
    bot.eventually(lambda: bot.stored(request_id).status == "revoked", timeout=15)

    line = the_summary(bot, request_id, "revoked")
    assert ":lock: Auto-approved by rule `alice-billing-reads`." in line
    assert "<@U" not in line.split(":lock:", 1)[1].split("Ended early", 1)[0], "no person approved it"
    assert f"Ended early by <@{REQUESTER}>." in line
    assert PROOF in line
    assert_nothing_secret(bot, request_id, token=token, url=bot.pickup_url(request_id))


def test_a_failed_mint_is_one_line_with_its_code(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db write 30m schema change")
    assert bot.stored(request_id).status == "failed"

    line = the_summary(bot, request_id, "failed")
    assert f"[failed] `{request_id}` <@{REQUESTER}> → `prod-db` (write, 30m). :x: Failed: " in line
    assert "IdP said `invalid_scope`" in line and f"approved by <@{APPROVER_1}>" in line
    assert line.endswith("No token was handed out.")
    assert [t.split(" ", 1)[0] for t in audit_lines(bot, request_id)] == ["[submitted]", "[failed]"]
    assert_nothing_secret(bot, request_id)


def test_a_denied_request_is_one_line(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.request(REQUESTER, "request prod-db write 30m drop a table").request_id
    bot.deny(APPROVER_1, request_id, "not <!channel> today")
    bot.eventually(lambda: bot.stored(request_id).status == "denied")

    line = the_summary(bot, request_id, "denied")
    assert line == (
        f"[denied] `{request_id}` <@{REQUESTER}> → `prod-db` (write, 30m). "
        f":no_entry: Denied by <@{APPROVER_1}>: not &lt;!channel&gt; today"
    )
    assert [t.split(" ", 1)[0] for t in audit_lines(bot, request_id)] == ["[submitted]", "[denied]"]
    assert_nothing_secret(bot, request_id)


def test_a_cancelled_request_is_one_line(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.request(REQUESTER, "request prod-db read 30m changed my mind").request_id
    bot.send.slash(REQUESTER, f"revoke {request_id}")
    bot.eventually(lambda: bot.stored(request_id).status == "cancelled")

    line = the_summary(bot, request_id, "cancelled")
    assert line == (
        f"[cancelled] `{request_id}` <@{REQUESTER}> → `prod-db` (read, 30m). "
        ":heavy_multiplication_x: Cancelled by the requester before it was decided."
    )
    assert [t.split(" ", 1)[0] for t in audit_lines(bot, request_id)] == ["[submitted]", "[cancelled]"]
    assert_nothing_secret(bot, request_id)


def test_a_request_nobody_answered_is_one_line(
    engine: Engine, database_url: str, slack: SlackStandIn, delivery: DeliveryPolicy
) -> None:
    with serving(engine, database_url, make_policy(request_timeout="2s"), slack, delivery) as bot:
        request_id = bot.request(REQUESTER, "request prod-db read 30m anyone there").request_id
        bot.eventually(lambda: bot.stored(request_id).status == "expired", timeout=10)

        line = the_summary(bot, request_id, "expired")
        assert line == (
            f"[expired] `{request_id}` <@{REQUESTER}> → `prod-db` (read, 30m). "
            ":alarm_clock: Expired without a decision (no decision within the request timeout)"
        )
        assert [t.split(" ", 1)[0] for t in audit_lines(bot, request_id)] == ["[submitted]", "[expired]"]
        assert_nothing_secret(bot, request_id)


def test_the_words_of_a_grant_life_from_its_facts() -> None:
    """The renderer alone: durations, the pickup moment, the proof without introspection."""
    from datetime import UTC, datetime

    from bot.services.notices import EndSummary, GrantLife
    from bot.services.snapshots import RequestSnapshot, VoteView
    from bot.slack.messages import end_summary_text

    start = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)
    request = RequestSnapshot(
        id="R0000000001",
        requester=REQUESTER,
        resource="prod-db",
        resource_description="",
        scopes=("read",),
        duration=timedelta(minutes=30),
        reason="<!here> look",
        status="revoked",
        approvals_required=1,
        votes=(VoteView(APPROVER_1, "approve", None),),
        created_at=start,
        decided_at=start,
        deny_reason=None,
        approver_channel="C0APPROVERS",
        card_channel=None,
        card_ts=None,
        revoked_early_by=APPROVER_2,
    )
    life = GrantLife(
        activated_at=start,
        ended_at=start + timedelta(minutes=12, seconds=5),
        picked_up_at=start + timedelta(seconds=40),
        confirmed_at=start + timedelta(minutes=12, seconds=5, milliseconds=730),
        introspected_inactive=False,
    )
    line = end_summary_text(EndSummary(request, life))
    assert "Used 12m5s of 30m" in line
    assert "token picked up <!date^1796313640^" in line
    assert f"Ended early by <@{APPROVER_2}>." in line
    assert "the IdP accepted the revocation (it offers no introspection to confirm it), confirmed 0.7 s after" in line
    assert "<!here>" not in line, "the requester's words are not in the summary"
