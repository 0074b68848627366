"""Shared fixtures: databases (SQLite and PostgreSQL), the Slack stand-in, and the served app.

What they are made of (people, policy, secrets, settings) is in tests/world.py; the bot they yield, with
its readers and actions, in tests/testbot.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from bot.demo.slack_api import SlackStandIn
from bot.domain.policy import Policy
from bot.jobs.expiry import SWEEP_INTERVAL_SECONDS
from bot.runtime import build_runtime
from bot.services.delivery import DeliveryPolicy
from bot.services.minting import RetryPolicy
from bot.services.revocation import RevocationTiming
from bot.store.db import make_engine, migrate
from tests.harness import free_socket
from tests.testbot import Bot, MintingBot, TestClock, serving, serving_runtime
from tests.world import (
    BOT_TOKEN,
    IDP_RESOURCES,
    SLACK_USERS,
    TEST_DELIVERY,
    USERGROUPS,
    build_settings,
    dev_idp_trusting,
    fresh_postgres_database,
    idp_values,
    make_policy,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jit.db'}"
        return
    admin_url = os.environ.get("JIT_TEST_POSTGRES_URL")
    if not admin_url:
        pytest.fail("JIT_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which starts PostgreSQL")
    with fresh_postgres_database(admin_url) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def policy() -> Policy:
    return make_policy()


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    standin = SlackStandIn(BOT_TOKEN, users=SLACK_USERS, usergroups=USERGROUPS)
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def delivery() -> DeliveryPolicy:
    """How the bot under test delivers its outbox; a test of pacing overrides it."""
    return TEST_DELIVERY


@pytest.fixture
def mint_retry() -> RetryPolicy:
    return RetryPolicy(budget_seconds=3.0, first_delay=0.2, attempt_timeout=1.0)


@pytest.fixture
def revocation_timing() -> RevocationTiming:
    return RevocationTiming()


@pytest.fixture
def sweep_interval() -> float:
    """The expiry engine's periodic sweep; a test of its timer makes it long, so only the timer is on time."""
    return SWEEP_INTERVAL_SECONDS


@pytest.fixture
def slack_call_deadline() -> float:
    """SLACK_CALL_DEADLINE of the bot under test; a test of slow answers shortens it."""
    return 15.0


@pytest.fixture
def bot(
    engine: Engine,
    database_url: str,
    policy: Policy,
    slack: SlackStandIn,
    delivery: DeliveryPolicy,
    slack_call_deadline: float,
) -> Iterator[Bot]:
    with serving(engine, database_url, policy, slack, delivery, slack_call_deadline=slack_call_deadline) as served:
        yield served


# --- with a real IdP -------------------------------------------------------------------------------


@pytest.fixture
def idp_resources() -> dict[str, list[str]]:
    return IDP_RESOURCES


@pytest.fixture
def idp_token_format() -> str:
    return "opaque"


@pytest.fixture
def minting_settings() -> dict[str, Any]:
    """Settings a module's minting bot has beyond the usual (override the fixture in the module)."""
    return {}


@pytest.fixture
def minting_bot(
    idp_token_format: str,
    engine: Engine,
    database_url: str,
    policy: Policy,
    slack: SlackStandIn,
    tmp_path: Path,
    idp_resources: dict[str, list[str]],
    caplog: pytest.LogCaptureFixture,
    delivery: DeliveryPolicy,
    mint_retry: RetryPolicy,
    revocation_timing: RevocationTiming,
    sweep_interval: float,
    minting_settings: dict[str, Any],
) -> Iterator[MintingBot]:
    from cryptography.fernet import Fernet

    caplog.set_level(logging.DEBUG)
    sock = free_socket()
    port = sock.getsockname()[1]
    public_url = f"http://127.0.0.1:{port}"
    idp = dev_idp_trusting(public_url, resources=idp_resources, token_format=idp_token_format)
    idp.start()
    try:
        key_file: Path | None = None
        if not database_url.startswith("sqlite"):
            # Keep generated keys out of the working directory when the database is not a file.
            from bot.idp.keys import generate_signing_key

            key_file = tmp_path / "signing-key.pem"
            key_file.write_bytes(generate_signing_key().pem())
        values: dict[str, Any] = idp_values(
            idp.issuer, encryption_key=Fernet.generate_key().decode(), signing_key_file=key_file
        )
        values |= minting_settings
        clock = TestClock()
        runtime = build_runtime(
            build_settings(slack, database_url, port, **values),
            policy,
            engine=engine,
            clock=clock,
            mint_retry=mint_retry,
            delivery=delivery,
            revocation_timing=revocation_timing,
            sweep_interval=sweep_interval,
        )
        with serving_runtime(
            runtime, sock, slack, MintingBot, idp=idp, clock=clock, public_url=public_url, log_records=caplog
        ) as bot:
            yield bot
    finally:
        idp.close()
