"""What keeps a pickup link a one-time secret: never unfurled, never framed or cached, never outliving its grant.

Each test here fails when one line of the code that keeps the promise is broken (scripts/mutants
breaks them on purpose).
"""

from __future__ import annotations

import re
from datetime import UTC

import httpx

from tests.testbot import MintingBot
from tests.world import AUDIT_CHANNEL, REQUESTER

# Spelled out rather than imported: a test that compared the page with the code's own table would
# pass whatever the table lost.
PICKUP_HEADERS = {
    "cache-control": "no-store",
    "pragma": "no-cache",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}
SLACK_DATE = re.compile(r"<!date\^(\d+)\^")


def _assert_pickup_headers(response: httpx.Response, what: str) -> None:
    got = {name: response.headers.get(name) for name in PICKUP_HEADERS}
    assert got == PICKUP_HEADERS, what


def test_pickup_dm_is_never_unfurled(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve()
    url = bot.pickup_url(request_id)
    (dm,) = [c for c in bot.slack.calls_to("chat.postMessage") if c.ok and url in str(c.args.get("text"))]
    assert dm.args.get("channel") == REQUESTER
    # Slack's unfurler would fetch the link, and the first fetch uses it up.
    assert dm.args.get("unfurl_links") is False, dm.args
    assert dm.args.get("unfurl_media") is False, dm.args
    # No message of the bot's asks Slack to unfurl anything.
    posted = [c for c in bot.slack.calls_to("chat.postMessage") if c.ok]
    assert {c.args.get("channel") for c in posted} >= {REQUESTER, AUDIT_CHANNEL}
    assert all(c.args.get("unfurl_links") is False for c in posted), [c.args for c in posted]
    # The link is still unused: nothing fetched it.
    assert bot.grant(request_id).picked_up_at is None
    assert httpx.get(url).status_code == 200


def test_every_pickup_answer_carries_the_security_headers(minting_bot: MintingBot) -> None:
    bot = minting_bot
    html_link = bot.pickup_url(bot.approve())
    json_link = bot.pickup_url(bot.approve("request prod-db read 30m second"))

    head = httpx.head(html_link)
    assert head.status_code == 405
    _assert_pickup_headers(head, "HEAD")
    page = httpx.get(html_link)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    _assert_pickup_headers(page, "the token page")
    answer = httpx.get(json_link, headers={"Accept": "application/json"})
    assert answer.status_code == 200 and "access_token" in answer.json()
    _assert_pickup_headers(answer, "the token as JSON")
    for accept in ("text/html", "application/json"):
        gone = httpx.get(html_link, headers={"Accept": accept})
        assert gone.status_code == 410
        _assert_pickup_headers(gone, f"a used link ({accept})")
        unknown = httpx.get(f"{bot.public_url}/pickup/no-such-link", headers={"Accept": accept})
        assert unknown.status_code == 404
        _assert_pickup_headers(unknown, f"an unknown link ({accept})")


def test_pickup_link_of_a_short_grant_ends_with_the_grant(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # Five minutes of access: the link's usual ten minutes would outlive it.
    request_id = bot.approve("request prod-db read 5m short one")
    url = bot.pickup_url(request_id)  # waits for the DM
    grant = bot.grant(request_id)
    assert grant.pickup_expires_at is not None
    assert grant.pickup_expires_at == grant.expires_at
    (dm,) = [t for t in _dms(bot) if url in t]
    active_until, link_until = (int(epoch) for epoch in SLACK_DATE.findall(dm))
    assert link_until == active_until == int(grant.expires_at.replace(tzinfo=UTC).timestamp()), dm


def _dms(bot: MintingBot) -> list[str]:
    return [
        str(c.args.get("text")) for c in bot.slack.calls_to("chat.postMessage") if c.args.get("channel") == REQUESTER
    ]
