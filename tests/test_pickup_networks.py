"""Context at pickup: a resource's ``pickup_networks`` and whose ``X-Forwarded-For`` is believed
(``JIT_TRUSTED_PROXIES``). The tests connect from 127.0.0.1; the policy allows only 10.0.0.0/8, so a
pickup is refused unless a trusted proxy (loopback, here) says it forwards for an address in it."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest

from bot.domain.policy import Policy
from bot.web.client_address import client_address
from tests.testbot import MintingBot
from tests.world import POLICY, make_policy

ALLOWED = "10.0.0.0/8"


@pytest.fixture
def policy() -> Policy:
    resources = [dict(r) for r in POLICY["resources"]]
    resources[0] = {**resources[0], "pickup_networks": [ALLOWED]}
    return make_policy(resources=resources)


def _refused_then_kept(bot: MintingBot, request_id: str, url: str, headers: dict[str, str]) -> None:
    refused = httpx.get(url, headers={"Accept": "text/html", **headers})
    assert refused.status_code == 403, refused.text
    assert "cannot be opened from this network" in refused.text
    for detail in ("prod-db", "db.internal.example", "read", request_id):
        assert detail not in refused.text, f"nothing about the grant is shown ({detail})"
    as_json = httpx.get(url, headers={"Accept": "application/json", **headers})
    assert as_json.status_code == 403 and "access_token" not in as_json.text
    assert bot.grant(request_id).picked_up_at is None, "the link is not used up"
    refusals = [e.details for e in bot.audit(request_id) if e.event_type == "pickup_refused"]
    assert refusals[-1]["why"] == "address outside pickup_networks"


class TestNoTrustedProxy:
    def test_a_pickup_from_outside_is_refused_audited_and_the_link_kept(self, minting_bot: MintingBot) -> None:
        bot = minting_bot
        request_id = bot.approve()
        url = bot.pickup_url(request_id)

        _refused_then_kept(bot, request_id, url, {})
        # X-Forwarded-For from a client nobody trusts is ignored: anyone can write it.
        _refused_then_kept(bot, request_id, url, {"X-Forwarded-For": "10.1.2.3"})
        addresses = {e.details["address"] for e in bot.audit(request_id) if e.event_type == "pickup_refused"}
        assert addresses == {"127.0.0.1"}


class TestBehindATrustedProxy:
    @pytest.fixture
    def minting_settings(self) -> dict[str, Any]:
        return {"jit_trusted_proxies": "127.0.0.0/8, ::1/128"}

    def test_the_proxy_says_who_the_client_is(self, minting_bot: MintingBot) -> None:
        bot = minting_bot
        request_id = bot.approve()
        url = bot.pickup_url(request_id)

        # The proxy appends the outside address it saw; what the client wrote before it is not believed.
        _refused_then_kept(bot, request_id, url, {"X-Forwarded-For": "10.9.9.9, 203.0.113.7"})
        _refused_then_kept(bot, request_id, url, {})  # a trusted proxy that names no client
        _refused_then_kept(bot, request_id, url, {"X-Forwarded-For": "not-an-address"})

        page = httpx.get(url, headers={"Accept": "application/json", "X-Forwarded-For": "203.0.113.7, 10.1.2.3"})
        assert page.status_code == 200, page.text
        assert page.json()["access_token"]
        assert bot.grant(request_id).picked_up_at is not None


TRUSTED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("192.168.0.0/16"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        pytest.param("10.1.2.3", [], (), "10.1.2.3", id="no-proxy-the-peer"),
        pytest.param("10.1.2.3", ["8.8.8.8"], (), "10.1.2.3", id="header-from-an-untrusted-peer-ignored"),
        pytest.param("127.0.0.1", ["8.8.8.8"], TRUSTED, "8.8.8.8", id="one-trusted-proxy"),
        pytest.param("127.0.0.1", ["10.0.0.1, 8.8.8.8, 192.168.1.1"], TRUSTED, "8.8.8.8", id="two-trusted-hops"),
        pytest.param("127.0.0.1", ["10.0.0.1", "8.8.8.8"], TRUSTED, "8.8.8.8", id="two-header-lines"),
        pytest.param("127.0.0.1", ["10.0.0.1, 8.8.8.8"], TRUSTED, "8.8.8.8", id="spoofed-left-entry-ignored"),
        pytest.param("127.0.0.1", [], TRUSTED, None, id="trusted-proxy-names-no-client"),
        pytest.param("127.0.0.1", ["192.168.1.1"], TRUSTED, None, id="only-trusted-hops"),
        pytest.param("127.0.0.1", ["garbage"], TRUSTED, None, id="not-an-address"),
        pytest.param("::ffff:10.1.2.3", [], (), "10.1.2.3", id="ipv4-mapped-ipv6"),
        pytest.param(None, [], (), None, id="no-peer"),
    ],
)
def test_whose_address_it_is(
    peer: str | None, forwarded: list[str], trusted: tuple[Any, ...], expected: str | None
) -> None:
    found = client_address(peer, forwarded, trusted)
    assert (str(found) if found is not None else None) == expected
