"""What `jit-bot check` checks beyond the settings and the policy file: the database, the signing key,
Slack and the IdP. Each check is a ``Finding``: ok with what was found, or the problem and its fix.

It only looks: no database file is created and no migration applied, nothing is posted to Slack, no
token is asked for. Every network call has a short total deadline (``bot.bounded_http``), so a
Slack or an IdP that hangs is one problem line within seconds.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
from slack_sdk.errors import SlackApiError
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from bot.config import ClientAuth, Settings
from bot.domain.policy import Policy
from bot.domain.text import one_line
from bot.idp.client import IdPClient, IdPConfig
from bot.idp.discovery import discovery_problem
from bot.idp.errors import IdPError
from bot.idp.keys import SigningKey, SigningKeyError, generate_signing_key, load_signing_key
from bot.redact import redact_url
from bot.slack.web_client import SLACK_CALL_FAILURES, DeadlineWebClient, slack_call_problem

# Seconds one network call of a check may take in all (connect to last byte): long enough for a
# far-away IdP, short enough that a check against a hanging one ends promptly.
CALL_SECONDS = 5.0


@dataclass(frozen=True)
class Finding:
    """One check. ``said`` is what was found (ok) or what is wrong and what to do (a problem).
    A check that could not run (``--offline``, or what it needs failed first) is not checked."""

    subject: str
    ok: bool
    said: str
    checked: bool = True

    @property
    def problem(self) -> bool:
        return self.checked and not self.ok

    def line(self) -> str:
        if not self.checked:
            return f"{self.subject}: not checked: {self.said}"
        return f"{self.subject}: ok ({self.said})" if self.ok else f"{self.subject}: PROBLEM: {self.said}"


def _ok(subject: str, said: str) -> Finding:
    return Finding(subject, True, said)


def _problem(subject: str, said: str) -> Finding:
    return Finding(subject, False, said)


def _skipped(subject: str, why: str) -> Finding:
    return Finding(subject, True, why, checked=False)


def preflight(
    settings: Settings, policy: Policy | None, *, offline: bool, timeout: float = CALL_SECONDS
) -> list[Finding]:
    """Every check that applies to these settings; the Slack and IdP ones unless ``offline``.
    Without a policy (it did not load), the channels, users and usergroups it names are not checked."""
    found = [check_database(settings.jit_database_url, timeout=timeout)]
    key: SigningKey | None = None
    if settings.idp_configured:
        key_finding, key = check_signing_key(settings)
        found.append(key_finding)
    if offline:
        found.append(_skipped("Slack and the IdP", "--offline"))
        return found
    found += check_slack(settings, policy, timeout=timeout)
    if settings.idp_configured:
        found += check_idp(settings, key, timeout=timeout)
    return found


# --- the database ---------------------------------------------------------------------------------


def check_database(url: str, *, timeout: float) -> Finding:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.exists():
            return _ok("database", f"{path} does not exist yet; it is created, with the newest schema, on first start")
        if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
            return _problem(
                "database",
                f"{path} (or its folder) is not writable by this user, and the bot writes there (the file and "
                f"its -wal beside it); fix the owner or the mode",
            )
        where = str(path)
        # mode=ro: the check never writes (SQLite may still create the empty -wal/-shm files of WAL mode).
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        engine = create_engine(
            "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=timeout), poolclass=NullPool
        )
    else:
        where = f"PostgreSQL {redact_url(url)}"
        engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": max(1, math.ceil(timeout))})
    try:
        with engine.connect() as connection:
            return _schema(connection, where)
    except DBAPIError as exc:
        said = str(exc.orig or exc).strip()
        reason = one_line(said.splitlines()[0] if said else type(exc).__name__, 200)
        return _problem("database", f"cannot read {where} ({reason}); is it running, and is JIT_DATABASE_URL right?")
    finally:
        engine.dispose()


def _schema(connection: Connection, where: str) -> Finding:
    """Where the schema stands against this version's migrations, read without writing anything
    (alembic only reads its version table here, and creates none)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    from bot.store.db import MIGRATIONS

    scripts = ScriptDirectory(str(MIGRATIONS))
    head = scripts.get_current_head()
    current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return _ok("database", f"{where}: the newest schema ({head})")
    if current is None:
        tables = inspect(connection).get_table_names()
        if tables:
            return _problem(
                "database",
                f"{where} holds {len(tables)} tables but no jit-bot schema version (no alembic_version table); "
                "is JIT_DATABASE_URL the right database?",
            )
        pending = "empty: the schema is created on first start"
    else:
        try:
            steps = [revision.revision for revision in scripts.iterate_revisions(head, current)]
        except (CommandError, RevisionError):
            return _problem(
                "database",
                f"{where} is at schema {current}, which this jit-bot does not know (a newer version migrated it); "
                "run that version, or restore the backup from before",
            )
        pending = f"schema {current}; {len(steps)} migration(s) to {head} run on next start (or `jit-bot migrate`)"
    if connection.dialect.name == "postgresql":
        may_create = connection.execute(text("SELECT has_schema_privilege(current_schema(), 'CREATE')")).scalar()
        if not may_create:
            user, schema = connection.execute(text("SELECT current_user, current_schema()")).one()
            return _problem(
                "database",
                f"{where}: {pending}, but {user} may not create tables in schema {schema}; "
                f"GRANT CREATE ON SCHEMA {schema} TO {user}, or migrate as its owner",
            )
    return _ok("database", f"{where}: {pending}")


# --- the signing key ------------------------------------------------------------------------------


def check_signing_key(settings: Settings) -> tuple[Finding, SigningKey | None]:
    """The key of subject assertions (and of client assertions, with private_key_jwt): it reads, and
    it signs something that its public half verifies."""
    from bot.runtime import default_signing_key_path

    path = settings.jit_signing_key_file
    if path is None:
        path = default_signing_key_path(settings.jit_database_url)
        if not path.exists():
            return _ok("signing key", f"none yet: one is generated at {path} on first start"), None
    try:
        key = load_signing_key(path)
    except SigningKeyError as exc:
        fix = "write an unencrypted PEM private key there (EC P-256 or RSA of 2048 bits or more)"
        return _problem("signing key", f"{exc}; {fix}"), None
    try:
        signed = jwt.encode({"iss": "jit-bot check"}, key.private_key, algorithm=key.alg, headers={"kid": key.kid})
        jwt.decode(signed, key.private_key.public_key(), algorithms=[key.alg])
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        return _problem("signing key", f"{path}: signing a test assertion failed ({type(exc).__name__})"), None
    return _ok("signing key", f"{path}: {key.alg}, kid {key.kid}; signed and verified a test assertion"), key


# --- Slack ----------------------------------------------------------------------------------------


def check_slack(settings: Settings, policy: Policy | None, *, timeout: float) -> list[Finding]:
    """auth.test with the bot token, then each channel, user and usergroup the policy names."""
    client = DeadlineWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=max(1, math.ceil(timeout)),
        total_timeout=timeout,
        retry_handlers=[],
        logger=_quiet_logger(),
    )
    where = redact_url(settings.slack_api_url)
    try:
        identity = client.auth_test()
    except SLACK_CALL_FAILURES as exc:
        found = [_problem("Slack", slack_call_problem(exc, "auth.test", where, timeout))]
        if policy is not None:
            found.append(_skipped("Slack channels, users and usergroups", "auth.test did not succeed (above)"))
        return found
    found = [_ok("Slack", f"{where}: the token is the bot {identity.get('user')} in workspace {identity.get('team')}")]
    if policy is None:
        return found
    for channel, uses in _channels(policy).items():
        found.append(_channel(client, channel, uses, where, timeout))
    for user, uses in _users(policy).items():
        found.append(_user(client, user, uses, where, timeout))
    groups = _usergroups(policy)
    if groups:
        found += _groups(client, groups, where, timeout)
    return found


def _quiet_logger() -> logging.Logger:
    """The SDK's logger for the check's client: a failure is the check's one line already, and the
    SDK's own ERROR record would say it again on stderr."""
    quiet = logging.getLogger("jit-bot.check.slack_sdk")
    quiet.propagate = False
    quiet.setLevel(logging.CRITICAL)
    return quiet


def _channels(policy: Policy) -> dict[str, str]:
    """Each channel the policy names, with what it is for."""
    uses: dict[str, list[str]] = {}
    for resource in policy.resources:
        uses.setdefault(resource.approver_channel, []).append(resource.name)
    named = {channel: "approvers of " + ", ".join(names) for channel, names in uses.items()}
    # The daily digest is posted (and its chart uploaded) by the bot, which must be in the channel.
    for channel, use in ((policy.channels.audit, "audit"), (policy.channels.digest, "digest")):
        if channel is not None:
            named[channel] = f"{named[channel]}; {use}" if channel in named else use
    return named


def _users(policy: Policy) -> dict[str, str]:
    uses: dict[str, list[str]] = {}
    for resource in policy.resources:
        for user in sorted(resource.user_approvers):
            uses.setdefault(user, []).append(f"approver of {resource.name}")
    for user, subject in policy.identities.items():
        uses.setdefault(user, []).append(f"identity {subject}")
    return {user: "; ".join(said) for user, said in uses.items()}


def _usergroups(policy: Policy) -> dict[str, str]:
    uses: dict[str, list[str]] = {}
    for resource in policy.resources:
        for group in sorted(resource.usergroup_approvers):
            uses.setdefault(group, []).append(resource.name)
    return {group: "approvers of " + ", ".join(names) for group, names in uses.items()}


def _call(call: Callable[[], Any]) -> tuple[Any, Exception | None]:
    try:
        return call(), None
    except SLACK_CALL_FAILURES as exc:
        return None, exc


def _channel(client: DeadlineWebClient, channel: str, uses: str, where: str, timeout: float) -> Finding:
    subject = f"Slack channel {channel} ({uses})"
    answer, failed = _call(lambda: client.conversations_info(channel=channel))
    if failed is not None:
        if isinstance(failed, SlackApiError) and failed.response.get("error") == "channel_not_found":
            return _problem(
                subject,
                "no channel with this id is visible to the bot; check the id in the policy, and if it is a "
                "private channel, invite the bot there (/invite @jit-bot)",
            )
        return _problem(subject, slack_call_problem(failed, "conversations.info", where, timeout))
    info = answer.get("channel") or {}
    name = f"#{info.get('name') or channel}"
    if info.get("is_archived"):
        return _problem(subject, f"{name} is archived; unarchive it, or name another channel in the policy")
    if not info.get("is_member"):
        return _problem(subject, f"the bot is not a member of {name}; invite it there (/invite @jit-bot)")
    return _ok(subject, f"{name}; the bot is a member")


def _user(client: DeadlineWebClient, user: str, uses: str, where: str, timeout: float) -> Finding:
    subject = f"Slack user {user} ({uses})"
    answer, failed = _call(lambda: client.users_info(user=user))
    if failed is not None:
        if isinstance(failed, SlackApiError) and failed.response.get("error") == "user_not_found":
            return _problem(subject, "no such user in this workspace; check the id in the policy")
        return _problem(subject, slack_call_problem(failed, "users.info", where, timeout))
    info = answer.get("user") or {}
    name = one_line(str(info.get("real_name") or info.get("name") or user), 80)
    if info.get("deleted"):
        return _problem(subject, f"{name} is deactivated in Slack; take them out of the policy")
    return _ok(subject, name)


def _groups(client: DeadlineWebClient, groups: dict[str, str], where: str, timeout: float) -> list[Finding]:
    # One call lists them all; include_disabled, so a disabled group is named as such, not as missing.
    answer, failed = _call(lambda: client.usergroups_list(include_disabled=True, include_count=True))
    if failed is not None:
        subject = f"Slack usergroups {', '.join(groups)}"
        return [_problem(subject, slack_call_problem(failed, "usergroups.list", where, timeout))]
    known = {g.get("id"): g for g in answer.get("usergroups") or [] if isinstance(g, dict)}
    found = []
    for group, uses in groups.items():
        subject = f"Slack usergroup {group} ({uses})"
        info = known.get(group)
        if info is None:
            found.append(_problem(subject, "no such usergroup in this workspace; check the id in the policy"))
        elif info.get("date_delete"):
            found.append(_problem(subject, "the usergroup is disabled; enable it, or take it out of the policy"))
        else:
            handle = one_line(str(info.get("handle") or group), 80)
            found.append(_ok(subject, f"@{handle}, {info.get('user_count', '?')} members"))
    return found


# --- the IdP --------------------------------------------------------------------------------------


def check_idp(settings: Settings, key: SigningKey | None, *, timeout: float) -> list[Finding]:
    """The discovery document and its endpoints, then the client's credentials: introspecting a
    made-up token is harmless, and needs the client to authenticate as it does for every real call."""
    assert settings.oidc_issuer is not None and settings.oidc_client_id is not None
    auth = settings.oidc_client_auth
    private_key_jwt = auth is ClientAuth.PRIVATE_KEY_JWT
    idp = IdPClient(
        IdPConfig(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None,
            client_auth=auth,
            lifetime_param=settings.oidc_token_lifetime_param,
            timeout=timeout,
        ),
        # With a client secret the signing key plays no part in authenticating; any key will do.
        signing_key=key or generate_signing_key(),
    )
    url = redact_url(f"{settings.oidc_issuer}/.well-known/openid-configuration")
    client = f"IdP client {settings.oidc_client_id} ({auth.value})"
    try:
        metadata = idp.metadata()
    except IdPError as exc:
        return [
            _problem("IdP discovery", discovery_problem(exc, url, timeout)),
            _skipped(client, "the discovery document did not load"),
        ]
    needs = {
        "revocation_endpoint": (metadata.revocation_endpoint, "revoke tokens"),
        "introspection_endpoint": (metadata.introspection_endpoint, "prove them revoked"),
        "jwks_uri": (metadata.jwks_uri, "verify JWT access tokens"),
    }
    missing = [f"{name} (to {why})" for name, (value, why) in needs.items() if not value]
    if missing:
        discovery = _problem(
            "IdP discovery",
            f"{url} publishes no {', no '.join(missing)}; enable them at the IdP (RFC 7009, RFC 7662)",
        )
    else:
        discovery = _ok("IdP discovery", f"{url}: token, revocation, introspection and JWKS endpoints")
    if not metadata.introspection_endpoint:
        return [discovery, _skipped(client, "the IdP publishes no introspection endpoint to try it on")]
    if private_key_jwt and key is None:
        return [discovery, _skipped(client, "private_key_jwt signs with the signing key, which cannot be used")]
    try:
        answer = idp.introspect(f"jit-bot-check-{secrets.token_urlsafe(16)}", timeout=timeout)
    except IdPError as exc:
        return [discovery, _problem(client, _client_problem(exc, settings, key, timeout))]
    if answer.get("active") is not False:
        untrusted = "the IdP says a made-up token is active; its introspection cannot be trusted"
        return [discovery, _problem(client, untrusted)]
    if private_key_jwt:
        assert key is not None
        said = (
            f"the IdP accepted a client assertion signed with the signing key (kid {key.kid}), so it knows that "
            "key; with private_key_jwt no secret is involved"
        )
    else:
        said = "the IdP accepted the client id and secret (introspecting a made-up token: not active)"
    return [discovery, _ok(client, said)]


def _client_problem(exc: IdPError, settings: Settings, key: SigningKey | None, timeout: float) -> str:
    refused = exc.code in ("invalid_client", "unauthorized_client") or exc.status == 401
    if not refused:
        if exc.code == "idp_timeout":
            return f"introspection did not answer within {timeout:g} s; check the IdP and the network"
        return f"introspection failed ({exc}); check the IdP"
    said = f"the IdP refused the client ({exc})"
    if settings.oidc_client_auth is ClientAuth.PRIVATE_KEY_JWT:
        kid = key.kid if key is not None else "?"
        return (
            f"{said}: with private_key_jwt it must know the signing key (kid {kid}); register its public key with "
            f"the client, or let the IdP fetch {redact_url(settings.public_url)}/.well-known/jwks.json, which only a "
            "running bot serves (then run check again while it serves)"
        )
    return (
        f"{said}; check OIDC_CLIENT_ID and OIDC_CLIENT_SECRET, and that the client may authenticate "
        f"with {settings.oidc_client_auth.value} (OIDC_CLIENT_AUTH)"
    )
