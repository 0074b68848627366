"""Shared fixtures: databases (SQLite and PostgreSQL), the Slack stand-in, and the served app."""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from bot.config import Settings
from bot.domain.policy import Policy
from bot.jobs.expiry import SWEEP_INTERVAL_SECONDS
from bot.runtime import build_runtime
from bot.services.delivery import DeliveryPolicy
from bot.services.minting import RetryPolicy
from bot.services.revocation import RevocationTiming
from bot.store.db import make_engine, migrate
from bot.store.models import AccessRequest, AuditEvent, OutboxMessage
from tests.harness import ServedApp, SlackRequests, free_socket
from tests.slack_standin import SlackStandIn

BOT_TOKEN = "xoxb-1111111111-2222222222-testtokenvalue"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
# The audit chain's key in tests (32 bytes, URL-safe base64, as `jit-bot keygen` prints).
AUDIT_KEY = "dGVzdC1hdWRpdC1rZXktMzItYnl0ZXMtZXhhY3RseSE="

REQUESTER = "U0REQUESTER"
APPROVER_1 = "U0APPROVER1"
APPROVER_2 = "U0APPROVER2"
GROUP_MEMBER = "U0GROUPMEMB"
OUTSIDER = "U0OUTSIDER1"
UNMAPPED = "U0UNMAPPED1"
APPROVERS_CHANNEL = "C0APPROVERS"
AUDIT_CHANNEL = "C0AUDIT0001"

POLICY: dict[str, Any] = {
    "request_timeout": "30m",
    "channels": {"audit": AUDIT_CHANNEL},
    "identities": {REQUESTER: "alice", APPROVER_1: "bob", APPROVER_2: "carol", GROUP_MEMBER: "dave"},
    "identity": {"email_fallback": False},
    "resources": [
        {
            "name": "prod-db",
            "description": "Production Postgres",
            "audience": "https://db.internal.example",
            "scopes": ["read", "write"],
            "max_duration": "2h",
            "approver_channel": APPROVERS_CHANNEL,
            "approvers": [APPROVER_1, APPROVER_2],
            "approvals_required": 1,
        },
        {
            "name": "billing",
            "description": "Billing admin API",
            "audience": "https://billing.internal.example",
            "scopes": ["read", "refund"],
            "max_duration": "1h",
            "approver_channel": APPROVERS_CHANNEL,
            "approvers": [APPROVER_1, APPROVER_2],
            "approvals_required": 2,
        },
        {
            "name": "k8s",
            "description": "Kubernetes API",
            "audience": "https://k8s.internal.example",
            "scopes": ["view", "edit"],
            "max_duration": "30m",
            "approver_channel": APPROVERS_CHANNEL,
            "approvers": ["S0PLATFORM"],
            "approvals_required": 1,
        },
    ],
}

SLACK_USERS = {
    REQUESTER: {"email": "alice@example.com"},
    APPROVER_1: {"email": "bob@example.com"},
    APPROVER_2: {"email": "carol@example.com"},
    GROUP_MEMBER: {"email": "dave@example.com"},
    OUTSIDER: {"email": "eve@example.com"},
    UNMAPPED: {"email": "mallory@example.com"},
}
USERGROUPS = {"S0PLATFORM": [GROUP_MEMBER, APPROVER_1]}


# Tests make dozens of requests a second in one approver channel; Slack's real pace (about one message a
# second per channel) would make them wait. The pacing itself is tested with its own settings.
TEST_DELIVERY = DeliveryPolicy(channel_burst=1000, channel_per_second=1000.0, first_retry=0.2, poll_interval=0.5)


def make_policy(**changes: Any) -> Policy:
    data = {**POLICY, **changes}
    return Policy.model_validate(data)


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


@contextmanager
def fresh_postgres_database(admin_url: str, prefix: str = "jit_test") -> Iterator[str]:
    """A new, empty database on the server at ``admin_url``, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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


CARD_ID = re.compile(r"Access request (R[0-9A-Z]{9})")


@dataclass
class Bot:
    """The app served over HTTP, the Slack stand-in it talks to, and its database."""

    served: ServedApp
    slack: SlackStandIn
    engine: Engine
    send: SlackRequests

    def request(self, user: str, text: str) -> tuple[str, str, str]:
        """Type ``/jit <text>`` and wait for the card: returns (request id, card channel, card ts)."""
        before = len(self.slack.calls_to("chat.postMessage"))
        response, _key, _trigger = self.send.slash(user, text)
        assert response.status_code == 200, response.text

        def card_posted() -> Any:
            for call in self.slack.calls_to("chat.postMessage")[before:]:
                match = CARD_ID.search(str(call.args.get("text", "")))
                if call.ok and match and call.args.get("blocks"):
                    return match.group(1), call.response["channel"], call.response["ts"]
            return None

        try:
            found: tuple[str, str, str] = self.slack.wait_for(card_posted)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noutbox:\n{self.outbox_state()}") from None
        # The card's coordinates are stored just after the post; votes need them to update it.
        self.slack.wait_for(lambda: self.stored(found[0]).card_ts is not None)
        return found

    def outbox_state(self) -> str:
        """The outbox as the bot sees it, one line a message: what a failed wait should show."""
        with Session(self.engine) as session:
            rows = session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all()  # type: ignore[arg-type]
        return "\n".join(
            f"  {m.id} {m.lane} {m.kind} {m.status} attempts={m.attempts} due={m.next_attempt_at} error={m.last_error}"
            for m in rows
        )

    def stored(self, request_id: str) -> AccessRequest:
        with Session(self.engine) as session:
            row = session.get(AccessRequest, request_id)
            assert row is not None, f"request {request_id} not in the database"
            return row

    def audit(self, request_id: str | None = None) -> list[AuditEvent]:
        with Session(self.engine) as session:
            query = select(AuditEvent)
            if request_id is not None:
                query = query.where(AuditEvent.request_id == request_id)
            return list(session.exec(query.order_by(AuditEvent.seq)).all())

    def request_count(self) -> int:
        with Session(self.engine) as session:
            return len(session.exec(select(AccessRequest)).all())


def build_settings(slack: SlackStandIn, database_url: str, port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": BOT_TOKEN,
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": slack.api_url,
        "jit_database_url": database_url,
        "jit_http_host": "127.0.0.1",
        "jit_http_port": port,
        "jit_audit_key": AUDIT_KEY,
        "slack_hooks_url": f"{slack.base_url}/response/",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


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


@contextmanager
def serving(
    engine: Engine,
    database_url: str,
    policy: Policy,
    slack: SlackStandIn,
    delivery: DeliveryPolicy,
    *,
    slack_call_deadline: float = 15.0,
    clock: Any = None,
) -> Iterator[Bot]:
    """One bot, served on loopback, talking to ``slack``; a second call on the same database is a replica."""
    sock = free_socket()
    settings = build_settings(slack, database_url, sock.getsockname()[1], slack_call_deadline=slack_call_deadline)
    runtime = build_runtime(settings, policy, engine=engine, delivery=delivery, **({"clock": clock} if clock else {}))
    served = ServedApp(runtime, sock).start()
    sender = SlackRequests(
        base_url=served.base_url,
        signing_secret=SIGNING_SECRET,
        response_url_for=slack.response_url,
        trigger_id=slack.new_trigger_id,
    )
    try:
        yield Bot(served=served, slack=slack, engine=engine, send=sender)
    finally:
        sender.http.close()
        served.stop()


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


def minutes(n: int) -> timedelta:
    return timedelta(minutes=n)


# --- with a real IdP -------------------------------------------------------------------------------

IDP_CLIENT_ID = "jit-bot"
# Characters that RFC 6749 section 2.3.1 requires us to form-encode inside HTTP Basic.
IDP_CLIENT_SECRET = "s3cret+/%:&=bits"
IDP_RESOURCES = {
    "https://db.internal.example": ["read", "write"],
    "https://billing.internal.example": ["read", "refund"],
    "https://k8s.internal.example": ["view", "edit"],
}


class TestClock:
    """The bot's clock, movable forward by tests (pickup links and grants expire by it)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> Any:
        from bot.store.types import utcnow

        return utcnow() + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class MintingBot(Bot):
    idp: Any = None
    clock: Any = None
    public_url: str = ""
    log_records: Any = None


def dev_idp_trusting(
    public_url: str, *, resources: dict[str, list[str]] | None = None, token_format: str = "opaque"
) -> Any:
    """A dev IdP (not started) that trusts a bot at ``public_url``, with the test client and resources."""
    from tests.devidp import DevIdP

    return DevIdP(
        client_id=IDP_CLIENT_ID,
        client_secret=IDP_CLIENT_SECRET,
        trusted_issuer=public_url,
        trusted_jwks_url=f"{public_url}/.well-known/jwks.json",
        resources=resources or IDP_RESOURCES,
        lifetime_param="requested_lifetime",
        token_format=token_format,
    )


@pytest.fixture
def idp_resources() -> dict[str, list[str]]:
    return IDP_RESOURCES


@pytest.fixture
def idp_token_format() -> str:
    return "opaque"


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
) -> Iterator[MintingBot]:
    from cryptography.fernet import Fernet

    caplog.set_level(logging.DEBUG)
    sock = free_socket()
    port = sock.getsockname()[1]
    public_url = f"http://127.0.0.1:{port}"
    idp = dev_idp_trusting(public_url, resources=idp_resources, token_format=idp_token_format)
    idp.start()
    clock = TestClock()
    settings = build_settings(
        slack,
        database_url,
        port,
        oidc_issuer=idp.issuer,
        oidc_client_id=IDP_CLIENT_ID,
        oidc_client_secret=IDP_CLIENT_SECRET,
        oidc_token_lifetime_param="requested_lifetime",
        jit_encryption_key=Fernet.generate_key().decode(),
        jit_signing_key_file=None,
        jit_database_url=database_url,
    )
    if not database_url.startswith("sqlite"):
        # Keep generated keys out of the working directory when the database is not a file.
        from bot.idp.keys import generate_signing_key

        key_file = tmp_path / "signing-key.pem"
        key_file.write_bytes(generate_signing_key().pem())
        settings = settings.model_copy(update={"jit_signing_key_file": key_file})
    runtime = build_runtime(
        settings,
        policy,
        engine=engine,
        clock=clock,
        mint_retry=mint_retry,
        delivery=delivery,
        revocation_timing=revocation_timing,
        sweep_interval=sweep_interval,
    )
    served = ServedApp(runtime, sock).start()
    sender = SlackRequests(
        base_url=served.base_url,
        signing_secret=SIGNING_SECRET,
        response_url_for=slack.response_url,
        trigger_id=slack.new_trigger_id,
    )
    try:
        yield MintingBot(
            served=served,
            slack=slack,
            engine=engine,
            send=sender,
            idp=idp,
            clock=clock,
            public_url=public_url,
            log_records=caplog,
        )
    finally:
        sender.http.close()
        served.stop()
        idp.close()
