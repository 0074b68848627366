"""The world the tests and the benchmarks play in: who is who, the policy, the secrets, and how a bot's
settings (in process) or environment (``jit-bot serve``) are built from them.

Nothing here starts anything; the fixtures in conftest.py and the benchmarks do.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bot.config import Settings
from bot.domain.policy import Policy
from bot.services.delivery import DeliveryPolicy

if TYPE_CHECKING:
    from bot.demo.devidp import DevIdP
    from bot.demo.slack_api import SlackStandIn

T = TypeVar("T")

BOT_TOKEN = "xoxb-1111111111-2222222222-testtokenvalue"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
# The audit chain's key in tests (32 bytes, URL-safe base64, as `jit-bot keygen` prints).
AUDIT_KEY = "dGVzdC1hdWRpdC1rZXktMzItYnl0ZXMtZXhhY3RseSE="

# People: who asks, who approves (by name, or through the S0PLATFORM usergroup), and who may not.
REQUESTER = "U0REQUESTER"
APPROVER_1 = "U0APPROVER1"
APPROVER_2 = "U0APPROVER2"
GROUP_MEMBER = "U0GROUPMEMB"
OUTSIDER = "U0OUTSIDER1"
UNMAPPED = "U0UNMAPPED1"

APPROVERS_CHANNEL = "C0APPROVERS"
AUDIT_CHANNEL = "C0AUDIT0001"

# The title of an approval card, as the bot posts it: how a test finds the card of a request.
CARD_ID = re.compile(r"Access request (R[0-9A-Z]{9})")


def _resource(
    name: str,
    description: str,
    host: str,
    scopes: list[str],
    max_duration: str,
    approvers: list[str],
    required: int,
    claims: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One resource of POLICY: its API at https://<host>.internal.example, its approvers in
    APPROVERS_CHANNEL, ``required`` of them to approve; keys in the order a policy file has them."""
    return {
        "name": name,
        "description": description,
        "audience": f"https://{host}.internal.example",
        "scopes": scopes,
        "max_duration": max_duration,
        "approver_channel": APPROVERS_CHANNEL,
        "approvers": approvers,
        "approvals_required": required,
        **({"claims": claims} if claims else {}),
    }


# The static claims prod-db's tokens carry (policy `claims:`), for the resource server.
PROD_DB_CLAIMS: dict[str, Any] = {"row_limit": 1000, "environment": "prod", "audited": True}

POLICY: dict[str, Any] = {
    "request_timeout": "30m",
    "channels": {"audit": AUDIT_CHANNEL},
    "identities": {REQUESTER: "alice", APPROVER_1: "bob", APPROVER_2: "carol", GROUP_MEMBER: "dave"},
    "identity": {"email_fallback": False},
    "resources": [
        _resource(
            "prod-db", "Production Postgres", "db", ["read", "write"], "2h", [APPROVER_1, APPROVER_2], 1, PROD_DB_CLAIMS
        ),
        _resource("billing", "Billing admin API", "billing", ["read", "refund"], "1h", [APPROVER_1, APPROVER_2], 2),
        _resource("k8s", "Kubernetes API", "k8s", ["view", "edit"], "30m", ["S0PLATFORM"], 1),
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
    return Policy.model_validate(policy_data(**changes))


def policy_data(**changes: Any) -> dict[str, Any]:
    """POLICY with top-level keys replaced, as a policy file would hold it."""
    return {**POLICY, **changes}


def lifted_quota(pending: int) -> dict[str, Any]:
    """The change to POLICY that lets one requester have ``pending`` requests waiting at once."""
    return {"limits": {"pending_per_requester": pending}}


def minutes(n: int) -> timedelta:
    return timedelta(minutes=n)


# --- the identity provider ---------------------------------------------------------------------------

IDP_CLIENT_ID = "jit-bot"
# Characters that RFC 6749 section 2.3.1 requires us to form-encode inside HTTP Basic.
IDP_CLIENT_SECRET = "s3cret+/%:&=bits"
IDP_LIFETIME_PARAM = "requested_lifetime"
# What the dev IdP lets the bot ask for: every audience and scope the policy offers.
IDP_RESOURCES: dict[str, list[str]] = {r["audience"]: list(r["scopes"]) for r in POLICY["resources"]}


def dev_idp_options(public_url: str, resources: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """How a dev IdP is set up to trust a bot at ``public_url``: the test client, and ``resources``."""
    return {
        "client_id": IDP_CLIENT_ID,
        "client_secret": IDP_CLIENT_SECRET,
        "trusted_issuer": public_url,
        "trusted_jwks_url": f"{public_url}/.well-known/jwks.json",
        "resources": resources or IDP_RESOURCES,
        "lifetime_param": IDP_LIFETIME_PARAM,
    }


def dev_idp_trusting(
    public_url: str, *, resources: dict[str, list[str]] | None = None, token_format: str = "opaque"
) -> DevIdP:
    """A dev IdP (not started) that trusts a bot at ``public_url``, with the test client and resources."""
    from bot.demo.devidp import DevIdP

    return DevIdP(**dev_idp_options(public_url, resources), token_format=token_format)


# --- a bot's settings: in process, or as the environment of `jit-bot serve` ---------------------------


def bot_values(slack: SlackStandIn, database_url: str, port: int) -> dict[str, Any]:
    """The settings every test bot has: our Slack stand-in, its database, loopback, the audit key."""
    return {
        "slack_bot_token": BOT_TOKEN,
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": slack.api_url,
        "jit_database_url": database_url,
        "jit_http_host": "127.0.0.1",
        "jit_http_port": port,
        "jit_audit_key": AUDIT_KEY,
        "slack_hooks_url": f"{slack.base_url}/response/",
    }


def idp_values(issuer: str, *, encryption_key: str, signing_key_file: Path | None) -> dict[str, Any]:
    """The settings that connect a bot to a dev IdP made by :func:`dev_idp_trusting`."""
    return {
        "oidc_issuer": issuer,
        "oidc_client_id": IDP_CLIENT_ID,
        "oidc_client_secret": IDP_CLIENT_SECRET,
        "oidc_token_lifetime_param": IDP_LIFETIME_PARAM,
        "jit_encryption_key": encryption_key,
        "jit_signing_key_file": signing_key_file,
    }


def build_settings(slack: SlackStandIn, database_url: str, port: int, **overrides: Any) -> Settings:
    values = {**bot_values(slack, database_url, port), **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def as_env(values: dict[str, Any]) -> dict[str, str]:
    """Settings values as the environment variables `jit-bot serve` reads them from (None: left unset)."""
    return {name.upper(): str(value) for name, value in values.items() if value is not None}


def serve_env(slack: SlackStandIn, database_url: str, port: int, **extra: str) -> dict[str, str]:
    """The environment of a `jit-bot serve` with the same settings as an in-process test bot."""
    return {
        **as_env(bot_values(slack, database_url, port)),
        # The stand-in does not rate-limit unless a test asks it to, so the bot need not pace itself.
        "SLACK_CHANNEL_RATE": "1000",
        **extra,
    }


# --- databases -----------------------------------------------------------------------------------------


# For a slow test of behaviour no choice of database changes (Slack's and the IdP's faults, log lines,
# back-off timing): what the database does decide (claims, leases, guarded moves, replicas) is tested on
# both elsewhere, and the suite must stay within its time budget.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


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


@contextmanager
def scratch_database(url: str | None, workdir: Path, prefix: str = "jit_bench") -> Iterator[str]:
    """A SQLite file in ``workdir`` (also for a SQLite ``url``), or a fresh database on a PostgreSQL server."""
    if url is None or make_url(url).get_backend_name() == "sqlite":
        yield url or f"sqlite:///{workdir / 'jit.db'}"
        return
    with fresh_postgres_database(url, prefix=prefix) as fresh:
        yield fresh


# --- waiting ------------------------------------------------------------------------------------------


def eventually(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; exceptions propagate
    (a process that died should fail the wait at once). For waits on the Slack stand-in's records,
    whose predicates may index into what is not there yet, use ``SlackStandIn.wait_for``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
