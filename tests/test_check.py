"""`jit-bot check`, the real process, against the Slack stand-in, the dev IdP and real databases:
every check's ok line and its problem lines, `--offline`, and the exit codes (0 ok, 1 a problem,
2 settings or policy that do not load)."""

from __future__ import annotations

import base64
import copy
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet

from bot.demo.devidp import DevIdP
from bot.demo.slack_api import SlackStandIn
from bot.idp.keys import generate_signing_key
from bot.store.audit import bind_audit_key
from bot.store.db import MIGRATIONS, make_engine, migrate
from tests.processes import assert_no_traceback, free_port, run_cli, write_policy
from tests.world import (
    APPROVER_1,
    APPROVER_2,
    APPROVERS_CHANNEL,
    AUDIT_CHANNEL,
    AUDIT_KEY,
    BOT_TOKEN,
    IDP_CLIENT_SECRET,
    POLICY,
    SIGNING_SECRET,
    as_env,
    bot_values,
    dev_idp_trusting,
    fresh_postgres_database,
    idp_values,
)

# What the check may call: it reads, and never posts, opens or changes anything.
READ_METHODS = {"auth.test", "conversations.info", "users.info", "usergroups.list"}


@pytest.fixture(scope="module")
def idp() -> Iterator[DevIdP]:
    # Nothing here exchanges a token, so the bot it trusts need not exist.
    with dev_idp_trusting("http://127.0.0.1:9") as started:
        yield started


@pytest.fixture
def dev_idp(idp: DevIdP) -> Iterator[DevIdP]:
    yield idp
    idp.reset()  # faults a test queued (a stalled discovery) end with it


def env_for(tmp_path: Path, slack: SlackStandIn, idp: DevIdP | None = None, **extra: str) -> dict[str, str]:
    """A deployment's environment: the stand-in, a SQLite file in tmp_path, and the dev IdP if given."""
    values: dict[str, Any] = bot_values(slack, f"sqlite:///{tmp_path / 'jit.db'}", 3000)
    if idp is not None:
        key_file = tmp_path / "signing-key.pem"
        key_file.write_bytes(generate_signing_key().pem())
        values |= idp_values(idp.issuer, encryption_key=Fernet.generate_key().decode(), signing_key_file=key_file)
    return {**as_env(values), **extra}


def check(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    if not (tmp_path / "policy.yml").exists():
        write_policy(tmp_path)
    result = run_cli(tmp_path, "check", *args, env=env)
    assert_no_traceback(result.stdout + result.stderr)
    for secret in (BOT_TOKEN, SIGNING_SECRET, IDP_CLIENT_SECRET, AUDIT_KEY):
        assert secret not in result.stdout + result.stderr
    return result


def found(result: subprocess.CompletedProcess[str], subject: str) -> str:
    """The one line of the check whose subject starts with ``subject``."""
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(subject)]
    return line


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if ": PROBLEM: " in line]


# --- everything right -----------------------------------------------------------------------------


def test_a_deployment_that_is_right_is_ok_in_every_check(tmp_path: Path, slack: SlackStandIn, dev_idp: DevIdP) -> None:
    result = check(tmp_path, env_for(tmp_path, slack, dev_idp))

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert problems(result) == []
    db = tmp_path / "jit.db"
    assert found(result, "database: ") == (
        f"database: ok ({db} does not exist yet; it is created, with the newest schema, on first start)"
    )
    assert not db.exists(), "check creates no database"
    assert found(result, "signing key: ").startswith(f"signing key: ok ({tmp_path / 'signing-key.pem'}: ES256, kid ")
    assert found(result, "Slack: ") == (
        f"Slack: ok ({slack.api_url}: the token is the bot jit-bot in workspace Stand-in)"
    )
    assert found(result, f"Slack channel {APPROVERS_CHANNEL} ") == (
        f"Slack channel {APPROVERS_CHANNEL} (approvers of prod-db, billing, k8s): "
        "ok (#c0approvers; the bot is a member)"
    )
    assert found(result, f"Slack channel {AUDIT_CHANNEL} ").endswith(": ok (#c0audit0001; the bot is a member)")
    users = [line for line in result.stdout.splitlines() if line.startswith("Slack user ")]
    assert len(users) == 4 and all(": ok (" in line for line in users), users
    assert found(result, "Slack user U0APPROVER1 ") == (
        "Slack user U0APPROVER1 (approver of prod-db; approver of billing; identity bob): ok (u0approver1)"
    )
    assert found(result, "Slack usergroup S0PLATFORM ") == (
        "Slack usergroup S0PLATFORM (approvers of k8s): ok (@s0platform, 2 members)"
    )
    assert found(result, "IdP discovery: ") == (
        f"IdP discovery: ok ({dev_idp.discovery_url}: token, revocation, introspection and JWKS endpoints)"
    )
    assert found(result, "IdP client jit-bot (client_secret_basic): ok (the IdP accepted the client id and secret")
    assert {call.method for call in slack.calls} == READ_METHODS
    assert slack.rejected() == []


def test_offline_skips_slack_and_the_idp_in_one_line(tmp_path: Path, slack: SlackStandIn) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = env_for(tmp_path, slack, OIDC_ISSUER=dead, OIDC_CLIENT_ID="jit-bot", OIDC_CLIENT_SECRET="a-secret")
    env["JIT_ENCRYPTION_KEY"] = Fernet.generate_key().decode()

    result = check(tmp_path, env, "--offline")

    assert result.returncode == 0, result.stdout + result.stderr
    assert found(result, "Slack and the IdP: ") == "Slack and the IdP: not checked: --offline"
    assert found(result, "database: ").startswith("database: ok (")
    assert found(result, "signing key: ").startswith("signing key: ok (none yet: one is generated at ")
    assert slack.calls == []
    assert not [line for line in result.stdout.splitlines() if line.startswith(("Slack:", "IdP "))]


# --- Slack ----------------------------------------------------------------------------------------


def test_a_missing_channel_and_one_without_the_bot_are_problems(tmp_path: Path, slack: SlackStandIn) -> None:
    slack.delete_channel(AUDIT_CHANNEL)
    slack.remove_bot_from(APPROVERS_CHANNEL)

    result = check(tmp_path, env_for(tmp_path, slack))

    assert result.returncode == 1
    assert problems(result) == [
        f"Slack channel {APPROVERS_CHANNEL} (approvers of prod-db, billing, k8s): PROBLEM: the bot is not a member "
        "of #c0approvers; invite it there (/invite @jit-bot)",
        f"Slack channel {AUDIT_CHANNEL} (audit): PROBLEM: no channel with this id is visible to the bot; check the id "
        "in the policy, and if it is a private channel, invite the bot there (/invite @jit-bot)",
    ]

    slack.archive(AUDIT_CHANNEL)
    slack.create_channel(AUDIT_CHANNEL, name="jit-audit")
    archived = check(tmp_path, env_for(tmp_path, slack))
    assert found(archived, f"Slack channel {AUDIT_CHANNEL} ").endswith(
        "PROBLEM: #jit-audit is archived; unarchive it, or name another channel in the policy"
    )


def test_the_digest_channel_is_checked_like_the_others(tmp_path: Path, slack: SlackStandIn) -> None:
    """The bot posts the daily digest there, so it must be a member, as of the audit channel."""
    digest_channel = "C0SECURITY1"
    write_policy(tmp_path, {**POLICY, "channels": {"audit": AUDIT_CHANNEL, "digest": digest_channel}})
    slack.remove_bot_from(digest_channel)

    result = check(tmp_path, env_for(tmp_path, slack))

    assert result.returncode == 1
    assert problems(result) == [
        f"Slack channel {digest_channel} (digest): PROBLEM: the bot is not a member of #c0security1; invite it there "
        "(/invite @jit-bot)"
    ]


def test_an_unknown_user_and_an_unknown_usergroup_are_problems(tmp_path: Path, slack: SlackStandIn) -> None:
    policy = copy.deepcopy(POLICY)
    policy["resources"][0]["approvers"] = ["U0APPROVER1", "U0NOBODY01"]
    policy["resources"][2]["approvers"] = ["S0NOSUCH01", "S0PLATFORM"]
    write_policy(tmp_path, policy)

    result = check(tmp_path, env_for(tmp_path, slack))

    assert result.returncode == 1
    assert problems(result) == [
        "Slack user U0NOBODY01 (approver of prod-db): PROBLEM: no such user in this workspace; check the id in the "
        "policy",
        "Slack usergroup S0NOSUCH01 (approvers of k8s): PROBLEM: no such usergroup in this workspace; check the id "
        "in the policy",
    ]
    assert found(result, "Slack usergroup S0PLATFORM ").endswith(": ok (@s0platform, 2 members)")
    assert slack.rejected() == []


def test_a_refused_token_is_one_problem_and_the_rest_of_slack_is_not_checked(
    tmp_path: Path, slack: SlackStandIn
) -> None:
    refused = "xoxb-3333333333-4444444444-revokedtoken"

    result = check(tmp_path, env_for(tmp_path, slack, SLACK_BOT_TOKEN=refused))

    assert result.returncode == 1
    assert problems(result) == [
        "Slack: PROBLEM: Slack refused SLACK_BOT_TOKEN (invalid_auth); copy the Bot User OAuth Token (xoxb-…) from "
        "the app's OAuth & Permissions page again"
    ]
    assert found(result, "Slack channels, users and usergroups: ") == (
        "Slack channels, users and usergroups: not checked: auth.test did not succeed (above)"
    )
    assert refused not in result.stdout + result.stderr
    assert [call.method for call in slack.calls] == ["auth.test"]


def test_a_hanging_slack_is_one_problem_within_seconds(tmp_path: Path, slack: SlackStandIn) -> None:
    slack.stall("auth.test")
    try:
        result = check(tmp_path, env_for(tmp_path, slack))
    finally:
        slack.release("auth.test")

    assert result.returncode == 1
    assert problems(result) == [
        f"Slack: PROBLEM: Slack at {slack.api_url} did not answer auth.test within 5 s; check SLACK_API_URL, "
        "the network and any proxy"
    ]


def test_an_unreachable_slack_is_one_problem(tmp_path: Path, slack: SlackStandIn) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api/"

    result = check(tmp_path, env_for(tmp_path, slack, SLACK_API_URL=dead))

    assert result.returncode == 1
    assert result.stderr == "", "the one line says it all (no SDK log record beside it)"
    (line,) = problems(result)
    assert line.startswith(f"Slack: PROBLEM: cannot reach Slack at {dead} ("), line
    assert line.endswith("); check SLACK_API_URL, the network and any proxy"), line


# --- the IdP --------------------------------------------------------------------------------------


def test_a_wrong_client_secret_is_refused_by_the_idp(tmp_path: Path, slack: SlackStandIn, dev_idp: DevIdP) -> None:
    wrong = "not-the-secret-7d1f"

    result = check(tmp_path, env_for(tmp_path, slack, dev_idp, OIDC_CLIENT_SECRET=wrong))

    assert result.returncode == 1
    assert problems(result) == [
        "IdP client jit-bot (client_secret_basic): PROBLEM: the IdP refused the client (invalid_client: client "
        "authentication failed); check OIDC_CLIENT_ID and OIDC_CLIENT_SECRET, and that the client may authenticate "
        "with client_secret_basic (OIDC_CLIENT_AUTH)"
    ]
    assert found(result, "IdP discovery: ").startswith("IdP discovery: ok (")
    assert wrong not in result.stdout + result.stderr


def test_private_key_jwt_says_that_the_idp_must_know_the_signing_key(
    tmp_path: Path, slack: SlackStandIn, dev_idp: DevIdP
) -> None:
    # The dev IdP's client authenticates with its secret only, so it refuses any client assertion.
    result = check(tmp_path, env_for(tmp_path, slack, dev_idp, OIDC_CLIENT_AUTH="private_key_jwt"))

    assert result.returncode == 1
    (line,) = problems(result)
    kid = found(result, "signing key: ").split("kid ")[1].split(";")[0]
    assert line == (
        "IdP client jit-bot (private_key_jwt): PROBLEM: the IdP refused the client (invalid_client: client "
        f"authentication failed): with private_key_jwt it must know the signing key (kid {kid}); register its public "
        "key with the client, or let the IdP fetch http://127.0.0.1:3000/.well-known/jwks.json, which only a running "
        "bot serves (then run check again while it serves)"
    )


def test_a_hanging_or_unreachable_idp_is_one_problem_within_seconds(
    tmp_path: Path, slack: SlackStandIn, dev_idp: DevIdP
) -> None:
    dev_idp.fault("discovery", "stall")
    hanging = check(tmp_path, env_for(tmp_path, slack, dev_idp))

    assert hanging.returncode == 1
    assert problems(hanging) == [
        f"IdP discovery: PROBLEM: {dev_idp.discovery_url} did not answer within 5 s; check OIDC_ISSUER, the network "
        "and any proxy"
    ]
    assert found(hanging, "IdP client ") == (
        "IdP client jit-bot (client_secret_basic): not checked: the discovery document did not load"
    )

    dead = f"http://127.0.0.1:{free_port()}"
    unreachable = check(tmp_path, env_for(tmp_path, slack, dev_idp, OIDC_ISSUER=dead))
    assert unreachable.returncode == 1
    assert problems(unreachable) == [
        f"IdP discovery: PROBLEM: cannot reach {dead}/.well-known/openid-configuration (discovery: ConnectError); "
        "check OIDC_ISSUER, and that the IdP is up"
    ]


# --- the signing key ------------------------------------------------------------------------------


def test_a_signing_key_that_is_not_a_pem_key_is_a_problem(tmp_path: Path, slack: SlackStandIn, idp: DevIdP) -> None:
    env = env_for(tmp_path, slack, idp)
    key_file = Path(env["JIT_SIGNING_KEY_FILE"])
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")

    result = check(tmp_path, env, "--offline")

    assert result.returncode == 1
    (line,) = problems(result)
    assert line.startswith(f"signing key: PROBLEM: {key_file}: not an unencrypted PEM private key ("), line
    assert line.endswith("; write an unencrypted PEM private key there (EC P-256 or RSA of 2048 bits or more)")


# --- the database ---------------------------------------------------------------------------------


def upgrade_to(url: str, revision: str) -> None:
    engine = bind_audit_key(make_engine(url), base64.urlsafe_b64decode(AUDIT_KEY))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


# The newest migration, as alembic knows it; the revisions are numbered 0001, 0002, …
HEAD = str(ScriptDirectory(str(MIGRATIONS)).get_current_head())


def sqlite_revision(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        return str(revision)


def test_a_sqlite_database_is_read_never_migrated(tmp_path: Path, slack: SlackStandIn) -> None:
    db = tmp_path / "jit.db"
    env = env_for(tmp_path, slack)
    upgrade_to(f"sqlite:///{db}", "0003")

    behind = check(tmp_path, env, "--offline")
    assert behind.returncode == 0, behind.stdout + behind.stderr
    to_run = int(HEAD) - 3
    assert found(behind, "database: ") == (
        f"database: ok ({db}: schema 0003; {to_run} migration(s) to {HEAD} run on next start (or `jit-bot migrate`))"
    )
    assert sqlite_revision(db) == "0003", "check applied no migration"

    upgrade_to(f"sqlite:///{db}", "head")
    current = check(tmp_path, env, "--offline")
    assert found(current, "database: ") == f"database: ok ({db}: the newest schema ({HEAD}))"

    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
    newer = check(tmp_path, env, "--offline")
    assert newer.returncode == 1
    assert problems(newer) == [
        f"database: PROBLEM: {db} is at schema 0099, which this jit-bot does not know (a newer version migrated it); "
        "run that version, or restore the backup from before"
    ]


def test_a_database_of_something_else_is_a_problem(tmp_path: Path, slack: SlackStandIn) -> None:
    db = tmp_path / "jit.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")

    result = check(tmp_path, env_for(tmp_path, slack), "--offline")

    assert result.returncode == 1
    assert problems(result) == [
        f"database: PROBLEM: {db} holds 1 tables but no jit-bot schema version (no alembic_version table); "
        "is JIT_DATABASE_URL the right database?"
    ]


def test_postgresql_reachable_or_not(tmp_path: Path, slack: SlackStandIn) -> None:
    admin_url = os.environ.get("JIT_TEST_POSTGRES_URL")
    if not admin_url:
        pytest.fail("JIT_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which starts PostgreSQL")
    with fresh_postgres_database(admin_url) as url:
        empty = check(tmp_path, env_for(tmp_path, slack, JIT_DATABASE_URL=url), "--offline")
        assert empty.returncode == 0, empty.stdout + empty.stderr
        assert found(empty, "database: ").endswith(": empty: the schema is created on first start)")

        engine = bind_audit_key(make_engine(url), base64.urlsafe_b64decode(AUDIT_KEY))
        migrate(engine)
        engine.dispose()
        current = check(tmp_path, env_for(tmp_path, slack, JIT_DATABASE_URL=url), "--offline")
        assert found(current, "database: ").endswith(f": the newest schema ({HEAD}))")

    down = f"postgresql+psycopg://jit:pw-5e2a@127.0.0.1:{free_port()}/jit"
    refused = check(tmp_path, env_for(tmp_path, slack, JIT_DATABASE_URL=down), "--offline")
    assert refused.returncode == 1
    (line,) = problems(refused)
    assert line.startswith("database: PROBLEM: cannot read PostgreSQL postgresql+psycopg://jit:***@127.0.0.1:"), line
    assert "Connection refused" in line and line.endswith("is it running, and is JIT_DATABASE_URL right?")
    assert "pw-5e2a" not in refused.stdout + refused.stderr


# --- settings and policy that do not load ---------------------------------------------------------


def test_placeholder_slack_values_still_let_the_policy_be_checked(tmp_path: Path) -> None:
    # As copied straight from .env.example.
    (tmp_path / ".env").write_text("SLACK_BOT_TOKEN=xoxb-replace-me\nSLACK_SIGNING_SECRET=replace-me\n")
    policy = copy.deepcopy(POLICY)
    policy["resources"][1]["max_duration"] = "soon"
    write_policy(tmp_path, policy)

    result = check(tmp_path, {})

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "jit-bot: SLACK_BOT_TOKEN still holds a placeholder; put the real value from your Slack app here",
        "jit-bot: SLACK_SIGNING_SECRET still holds a placeholder; put the real value from your Slack app here",
        "jit-bot: policy.yml: resources[1].max_duration: 'soon' is not a duration like 90s, 15m, 2h or 1h30m",
    ]
    assert result.stdout.splitlines() == ["database, signing key, Slack and IdP: not checked: the settings do not load"]

    write_policy(tmp_path, POLICY, name="custom.yml")
    (tmp_path / ".env").write_text(
        "SLACK_BOT_TOKEN=xoxb-replace-me\nSLACK_SIGNING_SECRET=replace-me\nJIT_POLICY_FILE=custom.yml\n"
    )
    good_policy = check(tmp_path, {})
    assert good_policy.returncode == 2
    assert "policy: custom.yml: ok" in good_policy.stdout.splitlines()
    assert "xoxb-replace-me" not in good_policy.stdout + good_policy.stderr


def test_a_policy_that_does_not_load_is_exit_2_and_the_rest_is_still_checked(
    tmp_path: Path, slack: SlackStandIn
) -> None:
    policy = copy.deepcopy(POLICY)
    policy["resources"][0]["approvals_required"] = 3
    write_policy(tmp_path, policy)

    result = check(tmp_path, env_for(tmp_path, slack))

    assert result.returncode == 2
    assert result.stderr.startswith("jit-bot: policy.yml: resources[0]")
    assert found(result, "database: ").startswith("database: ok (")
    assert found(result, "Slack: ").startswith("Slack: ok (")
    assert {call.method for call in slack.calls} == {"auth.test"}, "no policy: no channels or users to look up"


def test_help_says_what_check_reads_and_its_exit_codes(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "check", "--help")

    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for said in (
        ".env in the working folder",
        "JIT_POLICY_FILE",
        "--offline",
        "Exit codes: 0",
        "1 a check found",
        "2 the",
    ):
        assert said in text, text


# --- rules -----------------------------------------------------------------------------------------

RULES = {
    "groups": {"dba": [APPROVER_1, APPROVER_2]},
    "rules": [
        {
            "name": "two-dbas",
            "when": {"resources": ["prod-db"], "scopes_any": ["write"]},
            "effect": "require",
            "approvals": 2,
            "approvers": ["dba"],
        },
    ],
}


def test_rules_are_applied_so_check_lists_each_and_passes(tmp_path: Path, slack: SlackStandIn) -> None:
    typo = {"name": "typo", "when": {"resources": ["prod-dv"]}, "effect": "deny"}
    rules = {**RULES, "rules": [*RULES["rules"], typo]}
    write_policy(tmp_path, {**POLICY, **rules})

    result = check(tmp_path, env_for(tmp_path, slack), "--offline")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "policy: policy.yml: ok" in result.stdout
    assert problems(result) == []
    lines = result.stdout.splitlines()
    assert "  rule two-dbas: require 2 of dba; when resources, scopes_any" in lines, result.stdout
    assert "  rule typo: deny; when resources" in lines, result.stdout
    assert "  warning: rules[1].when.resources: 'prod-dv' matches no resource in this policy" in lines
