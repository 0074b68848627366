"""``jit-bot demo``: the bot, the dev IdP and a local Slack workspace on loopback, with SQLite.

Nothing here is a second implementation: the bot is served by :func:`bot.serving.serve` as in a
deployment, the IdP is the real oidc-provider in ``devidp/``, and the workspace is the Slack stand-in
the tests use (:mod:`bot.demo.slack_api`) with its page (:mod:`bot.demo.workspace`). The demo ignores
``.env`` and the environment's Slack and IdP values: it makes its own secrets for each run and keeps
its database and keys in one folder, so it can neither talk to a real Slack nor leak into one.
"""

from __future__ import annotations

import base64
import logging
import secrets
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from bot.config import ConfigError, Settings, load_policy
from bot.demo.devidp import DevIdP, DevIdPError
from bot.demo.slack_api import SlackStandIn
from bot.demo.workspace import Channel, Person, Workspace
from bot.domain.policy import Policy
from bot.files import load_or_create_key, write_owner_only
from bot.idp.keys import generate_signing_key
from bot.serving import listen, serve

log = logging.getLogger("jit-bot")

PEOPLE = [
    Person("U0ALICE", "Alice Nguyen", "requester"),
    Person("U0BOB", "Bob Okafor", "approver"),
    Person("U0CAROL", "Carol Diaz", "approver"),
    Person("U0DANA", "Dana Kim", "security lead"),
]
USERGROUPS = {"S0PAYMENTS": ["U0BOB"]}
# Slack channels have names; the policy names them by id only.
CHANNEL_NAMES = {
    "C0DBAPPROVE": ("db-approvers", "Approvals for prod-db"),
    "C0PAYAPPROVE": ("payments-approvers", "Approvals for billing-api"),
    "C0JITAUDIT": ("jit-audit", "Every decision, for the security lead"),
}
HINTS = [
    "You are Alice, the requester: type /jit request prod-db read 2m checking INC-1234 (or just /jit request).",
    "Switch to Bob or Carol and press Approve on the card in #db-approvers.",
    "Back as Alice, open the pickup link in your DM with jit-bot: the token shows once.",
    "When the grant ends, the card says it was revoked; Dana reads #jit-audit.",
]


def demo_policy_file() -> Path:
    return Path(str(resources.files("bot.demo").joinpath("policy.yml")))


def run_demo(*, folder: Path, port: int, policy_file: Path | None = None) -> int:
    """Runs until interrupted; returns the exit code."""
    policy_path = policy_file or demo_policy_file()
    policy = load_policy(policy_path)
    folder.mkdir(parents=True, exist_ok=True)
    _start_fresh(folder)
    _quiet_start_up()
    bot_listener = listen("127.0.0.1", 0)
    bot_url = f"http://127.0.0.1:{bot_listener.getsockname()[1]}"
    signing_secret = secrets.token_urlsafe(24)
    bot_token = "xoxb-demo-" + secrets.token_hex(12)
    with ExitStack() as stack:
        standin = stack.enter_context(_workspace_slack(bot_token, port))
        idp = stack.enter_context(_dev_idp(bot_url, policy))
        settings = _settings(folder, policy_path, standin, idp, bot_url, bot_token, signing_secret)
        Workspace(
            standin=standin,
            people=PEOPLE,
            channels=_channels(policy),
            bot_url=bot_url,
            signing_secret=signing_secret,
            hints=HINTS,
        ).attach()

        def ready() -> None:
            _say(f"jit-bot demo: open {standin.base_url}/ in your browser (Ctrl-C stops the demo)")
            _say(f"  try first: {HINTS[0]}")
            _say(f"  the bot serves on {bot_url}, the dev IdP on {idp.issuer}; data in {folder}/ (fresh each run)")
            _say(f"  policy: {policy_path}")

        serve(settings, policy, bot_listener, ready=ready)
    return 0


DATABASE_FILE = "jit-demo.db"


def _start_fresh(folder: Path) -> None:
    """Each run starts with an empty database. The workspace's messages and the dev IdP's tokens live
    in memory, so requests kept from an earlier run would have no card to approve them on, and their
    tokens an IdP that no longer knows them."""
    for name in (DATABASE_FILE, f"{DATABASE_FILE}-wal", f"{DATABASE_FILE}-shm", f"{DATABASE_FILE}-journal"):
        (folder / name).unlink(missing_ok=True)


def _quiet_start_up() -> None:
    # A deployment's operator wants each migration and uvicorn's start in the log; someone trying the
    # demo wants the URL and what happens to their requests (the lifecycle lines), not scrolling past.
    # A filter, not a level: uvicorn sets its logger's level itself when the server is configured.
    for name in ("alembic.runtime.migration", "uvicorn.error"):
        logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.WARNING)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@contextmanager
def _workspace_slack(bot_token: str, port: int) -> Iterator[SlackStandIn]:
    users = {p.id: {"real_name": p.name, "display_name": p.name.split()[0]} for p in PEOPLE}
    standin = SlackStandIn(bot_token, users=users, usergroups=USERGROUPS)
    try:
        standin.start(port)
    except OSError as exc:
        raise ConfigError(
            [f"the demo's workspace cannot listen on 127.0.0.1:{port} ({exc.strerror}); pass --port with another one"]
        ) from None
    try:
        yield standin
    finally:
        standin.stop()


@contextmanager
def _dev_idp(bot_url: str, policy: Policy) -> Iterator[DevIdP]:
    audiences: dict[str, list[str]] = {}
    for resource in policy.resources:
        audiences.setdefault(resource.audience, [])
        audiences[resource.audience] += [s for s in resource.scopes if s not in audiences[resource.audience]]
    idp = DevIdP(
        client_id="jit-bot-demo",
        client_secret=secrets.token_urlsafe(24),
        trusted_issuer=bot_url,
        resources=audiences,
        admin=False,
    )
    try:
        idp.start()
    except DevIdPError as exc:
        raise ConfigError([f"the dev IdP did not start: {exc}"]) from None
    try:
        yield idp
    finally:
        idp.close()


def _channels(policy: Policy) -> list[Channel]:
    ids = [r.approver_channel for r in policy.resources]
    if policy.channels.audit:
        ids.append(policy.channels.audit)
    seen: list[Channel] = []
    for channel_id in dict.fromkeys(ids):
        name, about = CHANNEL_NAMES.get(channel_id, (channel_id.lower(), ""))
        seen.append(Channel(channel_id, name, about))
    return seen


def _settings(
    folder: Path,
    policy_file: Path,
    standin: SlackStandIn,
    idp: DevIdP,
    bot_url: str,
    bot_token: str,
    signing_secret: str,
) -> Settings:
    host, port = bot_url.removeprefix("http://").split(":")
    encryption_key, _created = load_or_create_key(folder / "demo-encryption-key")
    # The demo's own keys, made quietly: a deployment is warned that it should manage them itself.
    signing_key_file = folder / "demo-signing-key.pem"
    if not signing_key_file.exists():
        write_owner_only(signing_key_file, generate_signing_key().pem())
    values: dict[str, Any] = {
        "slack_bot_token": bot_token,
        "slack_signing_secret": signing_secret,
        "slack_app_token": None,
        "slack_api_url": standin.api_url,
        "slack_hooks_url": f"{standin.base_url}/response/",
        "jit_database_url": f"sqlite:///{(folder / DATABASE_FILE).resolve()}",
        "jit_policy_file": policy_file,
        "jit_http_host": host,
        "jit_http_port": int(port),
        "jit_public_url": bot_url,
        "oidc_issuer": idp.issuer,
        "oidc_client_id": idp.client_id,
        "oidc_client_secret": idp.client_secret,
        "oidc_client_auth": "client_secret_basic",
        "oidc_token_lifetime_param": idp.lifetime_param,
        "jit_signing_key_file": signing_key_file,
        # The database is new each run, so its audit chain's key may be too.
        "jit_audit_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "jit_encryption_key": base64.urlsafe_b64encode(encryption_key).decode(),
    }
    return Settings(_env_file=None, **values)
