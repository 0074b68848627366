"""An extension's token arriving, or its link opened, while the grant it extends is revoked, on
PostgreSQL (where two transactions really run at once): whichever commits first, the revocation is
never lost and the extension's link never outlives it. Each interleaving is forced by holding one
side's statement (a listener on the engine's cursor) until the other side has had its chance to run."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event
from sqlmodel import Session, col, select

from bot.slack.ids import ActionId
from bot.store.models import AccessRequest
from tests.testbot import MintingBot
from tests.world import APPROVER_1, REQUESTER


@pytest.fixture
def sweep_interval() -> float:
    return 3600.0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_revocation_racing_an_extensions_activation_ends_the_extension_too(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h checking INC-1234")
    response, _key = bot.command(REQUESTER, f"extend {first} 30m")
    assert response.status_code == 200, response.text

    def extension_id() -> str | None:
        with Session(bot.engine) as session:
            row = session.exec(select(AccessRequest).where(col(AccessRequest.extends) == first)).first()
            return row.id if row is not None else None

    second = bot.eventually(extension_id)
    bot.eventually(lambda: bot.stored(second).card_ts is not None)

    held, release = threading.Event(), threading.Event()

    def hold_activation(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        # The extension's token has passed its checks and is about to become its grant.
        if statement.lstrip().upper().startswith("UPDATE") and "pickup_hash" in statement:
            activating = isinstance(parameters, dict) and parameters.get("pickup_hash") is not None
            if activating and second in str(parameters) and not held.is_set():
                held.set()
                release.wait(10)

    event.listen(Engine, "before_cursor_execute", hold_activation)
    try:
        bot.click(APPROVER_1, ActionId.APPROVE, second)
        assert held.wait(15), "the extension was never activated"
        response, _key = bot.command(APPROVER_1, f"revoke {first}")
        assert response.status_code == 200
        # Give the revocation time to run to its end if nothing makes it wait for the activation.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and bot.grant(first).revoke_requested_by is None:
            time.sleep(0.05)
        release.set()
        bot.eventually(lambda: bot.stored(first).status == "revoked", timeout=15)
        bot.eventually(lambda: bot.stored(second).status in ("revoked", "failed"), timeout=15)
    finally:
        release.set()
        # Removed once the mint worker is done: removing a listener while another thread runs the
        # listeners breaks that thread's statement.
        event.remove(Engine, "before_cursor_execute", hold_activation)

    assert bot.idp.active_tokens(first) == [] and bot.idp.active_tokens(second) == []
    grant = bot.find_grant(second)
    if grant is not None and grant.pickup_hash is not None:
        assert httpx.get(bot.pickup_url(second), headers={"Accept": "application/json"}).status_code == 410


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_revocation_racing_an_extensions_pickup_is_never_the_one_to_lose(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h checking INC-1234")
    response, _key = bot.command(REQUESTER, f"extend {first} 30m")
    assert response.status_code == 200, response.text

    def extension_id() -> str | None:
        with Session(bot.engine) as session:
            row = session.exec(select(AccessRequest).where(col(AccessRequest.extends) == first)).first()
            return row.id if row is not None else None

    second = bot.eventually(extension_id)
    bot.eventually(lambda: bot.stored(second).card_ts is not None)
    bot.click(APPROVER_1, ActionId.APPROVE, second)
    bot.eventually(lambda: bot.stored(second).status == "active", timeout=15)
    link = bot.pickup_url(second)

    held, release = threading.Event(), threading.Event()

    def hold_revocation(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        # The revocation holds the first grant's row and is about to end the extension's.
        if statement.lstrip().upper().startswith("UPDATE") and isinstance(parameters, dict):
            if "revoke_requested_by" in parameters and second in parameters.values() and not held.is_set():
                held.set()
                release.wait(10)

    picked: list[int] = []
    event.listen(Engine, "before_cursor_execute", hold_revocation)
    try:
        response, _key = bot.command(APPROVER_1, f"revoke {first}")
        assert response.status_code == 200
        assert held.wait(15), "the revocation never reached the extension"
        # The link is opened meanwhile; the revocation goes on once the pickup has had time to wait on it.
        opener = threading.Thread(
            target=lambda: picked.append(httpx.get(link, headers={"Accept": "application/json"}).status_code)
        )
        opener.start()
        time.sleep(1.5)
        release.set()
        opener.join(20)
        bot.eventually(lambda: bot.stored(first).status == "revoked", timeout=15)
        bot.eventually(lambda: bot.stored(second).status == "revoked", timeout=15)
    finally:
        release.set()
        event.remove(Engine, "before_cursor_execute", hold_revocation)
    assert picked == [410], "the revocation came first: the link no longer works"
    assert bot.grant(second).revoke_requested_by == APPROVER_1
    assert bot.idp.active_tokens(second) == []
