"""The real ``jit-bot`` console script, run as a subprocess with a clean environment."""

from __future__ import annotations

import base64
import copy
import importlib.metadata
import json
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from bot.demo.slack_api import SlackStandIn
from bot.idp.keys import generate_signing_key
from bot.slack.messages import help_text
from bot.store.audit import append_event, bind_audit_key, canonical_event, event_link, legacy_event_link
from bot.store.db import MIGRATIONS, make_engine, migrate, session_scope
from tests.harness import SlackRequests
from tests.processes import ServeProcess, assert_no_traceback, free_port, run_cli, write_policy
from tests.world import AUDIT_KEY, BOT_TOKEN, POLICY, REQUESTER, SIGNING_SECRET, serve_env

SECRETS = (BOT_TOKEN, SIGNING_SECRET)


def write_dotenv(tmp_path: Path, **values: str) -> None:
    (tmp_path / ".env").write_text("".join(f"{key}={value}\n" for key, value in values.items()))


def assert_no_secrets(*outputs: str) -> None:
    for output in outputs:
        for secret in SECRETS:
            assert secret not in output


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) ")


def messages(stderr: str) -> list[str]:
    """stderr without INFO/WARNING log records (alembic logs a few on import): what the person is told."""
    return [line for line in stderr.splitlines() if not LOG_LINE.match(line)]


# --- jit-bot check --------------------------------------------------------------------------------


def test_check_with_good_settings_and_policy(tmp_path: Path) -> None:
    write_dotenv(
        tmp_path,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_APP_TOKEN="",
        JIT_DATABASE_URL=f"sqlite:///{tmp_path / 'jit.db'}",
        JIT_PUBLIC_URL="https://jit.example.com/",
    )
    write_policy(tmp_path)

    # Offline: Slack itself cannot be reached from here (tests/test_check.py checks against the stand-in).
    result = run_cli(tmp_path, "check", "--offline")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "settings: ok"
    assert "  mode: HTTP" in lines
    assert "  Slack API: https://slack.com/api/; replies only to https://hooks.slack.com/" in lines
    assert f"  database: sqlite:///{tmp_path / 'jit.db'}" in lines
    assert "  listening on: 127.0.0.1:3000; public URL https://jit.example.com" in lines
    assert "policy: policy.yml: ok" in lines
    assert "  request_timeout: 30m" in lines
    assert "  audit channel: C0AUDIT0001" in lines
    assert "  digest: 09:00 UTC to (no channel); business hours mon,tue,wed,thu,fri 08:00-19:00" in lines
    assert "  security leads: (none)" in lines
    assert "  identities: 4 mapped; email fallback off" in lines
    resources = [line for line in lines if line.startswith("  resource ")]
    assert resources == [
        "  resource prod-db: scopes read, write; max 2h; 1 of U0APPROVER1, U0APPROVER2 in C0APPROVERS",
        "  resource billing: scopes read, refund; max 1h; 2 of U0APPROVER1, U0APPROVER2 in C0APPROVERS",
        "  resource k8s: scopes view, edit; max 30m; 1 of S0PLATFORM in C0APPROVERS",
    ]
    assert lines[-1] == "Slack and the IdP: not checked: --offline"
    assert_no_secrets(result.stdout, result.stderr)


def test_check_redacts_credentials_opens_the_signing_key_and_warns_about_plain_http(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(generate_signing_key().pem())
    port = free_port()  # nothing listens: the database check fails, and must not show the password either
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "JIT_DATABASE_URL": f"postgresql+psycopg://jit:dbpassw0rd@127.0.0.1:{port}/jit",
        "SLACK_API_URL": "https://proxyuser:pr0xypass@slack-proxy.example/api/",
        "JIT_PUBLIC_URL": "http://jit.corp.example:3000",
        "OIDC_ISSUER": "http://issuer-user:issuerpass@idp.corp.example",
        "OIDC_CLIENT_ID": "jit-bot",
        "OIDC_CLIENT_SECRET": "an-actual-client-secret",
        "JIT_ENCRYPTION_KEY": AUDIT_KEY,
        "JIT_AUDIT_KEY": AUDIT_KEY,
        "JIT_SIGNING_KEY_FILE": str(key_file),
    }
    write_policy(tmp_path)

    result = run_cli(tmp_path, "check", "--offline", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    for secret in ("pr0xypass", "issuerpass", "proxyuser", "issuer-user", "an-actual-client-secret", AUDIT_KEY):
        assert secret not in output
    assert "dbpassw0rd" not in output
    assert "  Slack API: https://***@slack-proxy.example/api/" in result.stdout
    assert f"  database: postgresql+psycopg://jit:***@127.0.0.1:{port}/jit" in result.stdout
    assert f"database: PROBLEM: cannot read PostgreSQL postgresql+psycopg://jit:***@127.0.0.1:{port}/jit (" in output
    assert f"signing key: ok ({key_file}: ES256, kid " in result.stdout
    assert "  audit key: JIT_AUDIT_KEY" in result.stdout
    assert messages(result.stderr) == [
        "jit-bot: warning: OIDC_ISSUER is plain http:// on a non-loopback host (http://***@idp.corp.example); "
        "use https://",
        "jit-bot: warning: JIT_PUBLIC_URL is plain http:// on a non-loopback host (http://jit.corp.example:3000); "
        "use https://",
    ]

    # A signing key that cannot be used is found by check, not at the first approval.
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    broken = run_cli(tmp_path, "check", "--offline", env=env)
    assert broken.returncode == 1
    assert_no_traceback(broken.stdout + broken.stderr)
    assert f"signing key: PROBLEM: {key_file}: not an unencrypted PEM private key" in broken.stdout


def test_check_reads_the_environment_and_the_policy_path(tmp_path: Path) -> None:
    policy = copy.deepcopy(POLICY)
    policy["resources"] = policy["resources"][2:]
    write_policy(tmp_path, policy, name="custom.yml")
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_APP_TOKEN": "xapp-1-A0JITBOT01-1234567890-0a1b2c3d4e5f",
        "JIT_POLICY_FILE": "custom.yml",
        "JIT_HTTP_PORT": "8080",
    }

    result = run_cli(tmp_path, "check", "--offline", env=env)

    assert result.returncode == 0, result.stderr
    assert "  mode: Socket Mode" in result.stdout
    assert "policy: custom.yml: ok" in result.stdout
    assert "public URL http://127.0.0.1:8080" in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("  resource ")] == [
        "  resource k8s: scopes view, edit; max 30m; 1 of S0PLATFORM in C0APPROVERS"
    ]
    assert env["SLACK_APP_TOKEN"] not in result.stdout + result.stderr


def test_check_missing_signing_secret_is_one_line(tmp_path: Path) -> None:
    write_dotenv(tmp_path, SLACK_BOT_TOKEN=BOT_TOKEN)
    write_policy(tmp_path)

    result = run_cli(tmp_path, "check")

    assert result.returncode == 2
    assert_no_traceback(result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("jit-bot: SLACK_SIGNING_SECRET is not set"), lines
    # The policy is still checked; nothing that needs the settings is.
    assert "policy: policy.yml: ok" in result.stdout.splitlines()
    not_checked = "database, signing key, Slack and IdP: not checked: the settings do not load"
    assert result.stdout.splitlines()[-1] == not_checked
    assert_no_secrets(result.stdout, result.stderr)


def test_check_placeholder_tokens_name_the_variables(tmp_path: Path) -> None:
    # Copied straight from .env.example, as the README says to start.
    shutil.copy(Path(__file__).parents[1] / ".env.example", tmp_path / ".env")
    write_policy(tmp_path)

    result = run_cli(tmp_path, "check")

    assert result.returncode != 0
    assert_no_traceback(result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("jit-bot: SLACK_BOT_TOKEN still holds a placeholder"), lines
    assert lines[1].startswith("jit-bot: SLACK_APP_TOKEN still holds a placeholder"), lines
    assert "xoxb-replace-me" not in result.stderr


def test_check_wrong_token_never_echoes_it(tmp_path: Path) -> None:
    user_token = "xoxp-9999999999-8888888888-userTOKENsecret"
    write_dotenv(tmp_path, SLACK_BOT_TOKEN=user_token, SLACK_SIGNING_SECRET=SIGNING_SECRET)
    write_policy(tmp_path)

    result = run_cli(tmp_path, "check")

    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "jit-bot: SLACK_BOT_TOKEN must be a bot token starting with xoxb- (OAuth & Permissions page)"
    ]
    assert user_token not in result.stdout + result.stderr
    assert_no_secrets(result.stdout, result.stderr)


def test_check_bad_policy_names_the_key(tmp_path: Path) -> None:
    policy = copy.deepcopy(POLICY)
    policy["resources"][2]["approver_channel"] = "#approvers"
    write_dotenv(tmp_path, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET)
    write_policy(tmp_path, policy)

    result = run_cli(tmp_path, "check", "--offline")

    assert result.returncode == 2
    assert "policy: " not in result.stdout
    assert_no_traceback(result.stderr)
    assert result.stderr.splitlines() == [
        "jit-bot: policy.yml: resources[2].approver_channel: '#approvers' is not a Slack channel id (like C0123ABCD)"
    ]
    assert_no_secrets(result.stdout, result.stderr)


def test_check_missing_policy_file(tmp_path: Path) -> None:
    write_dotenv(tmp_path, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET)

    result = run_cli(tmp_path, "check", "--offline")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "jit-bot: policy.yml: policy file not found (set JIT_POLICY_FILE or create it)"
    ]


# --- jit-bot serve (against the `slack` stand-in from conftest) -------------------------------------


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def test_serve_migrates_serves_and_stops(tmp_path: Path, slack: SlackStandIn, database_url: str) -> None:
    write_policy(tmp_path)
    served = ServeProcess(tmp_path, serve_env(slack, database_url, free_port()))
    base_url = served.base_url
    try:
        health = served.wait_healthy()
        assert health.json()["status"] == "ok"
        assert health.json()["database"] == "ok"

        engine = make_engine(database_url)
        try:
            tables = set(inspect(engine).get_table_names())
            assert {"access_request", "vote", "audit_event", "audit_head", "alembic_version"} <= tables
            with engine.connect() as connection:
                versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            assert versions == [head_revision()]
        finally:
            engine.dispose()

        # The bot checked its token with Slack before serving.
        assert [call.ok for call in slack.calls_to("auth.test")] == [True]

        sender = SlackRequests.for_standin(base_url, slack)
        forger = SlackRequests(
            base_url=base_url,
            signing_secret="0" * 32,
            response_url_for=slack.response_url,
            trigger_id=slack.new_trigger_id,
        )
        try:
            response, _key, _trigger = sender.slash(REQUESTER, "help")
            assert response.status_code == 200, response.text
            assert response.json()["text"] == help_text()

            forged, _key, _trigger = forger.slash(REQUESTER, "help")
            assert forged.status_code == 401
            assert forged.json() == {"error": "invalid request"}
            assert "*jit-bot*" not in forged.text

            tampered, _key, _trigger = sender.slash(REQUESTER, "help", signature="v0=" + "ab" * 32)
            assert tampered.status_code == 401

            stale, _key, _trigger = sender.slash(REQUESTER, "help", timestamp=int(time.time()) - 3600)
            assert stale.status_code == 401
        finally:
            sender.http.close()
            forger.http.close()
        assert slack.rejected() == []

        code = served.terminate(timeout=10)
    finally:
        served.close()

    output = served.output()
    # uvicorn's graceful path ran: it stopped accepting and finished in-flight work.
    assert "Finished server process" in output, output
    # See test_serve_exits_zero_on_sigterm for why -SIGTERM is still accepted here.
    assert code in (0, -signal.SIGTERM), output
    assert_no_traceback(output)
    assert_no_secrets(output)


def test_serve_exits_zero_on_sigterm(tmp_path: Path, slack: SlackStandIn) -> None:
    write_policy(tmp_path)
    served = ServeProcess(tmp_path, serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port()))
    try:
        served.wait_healthy()
        code = served.terminate(timeout=10)
    finally:
        served.close()
    assert code == 0, served.output()


def test_serve_with_a_refused_token_names_it(tmp_path: Path, slack: SlackStandIn) -> None:
    refused = "xoxb-3333333333-4444444444-revokedtoken"
    write_policy(tmp_path)
    env = serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port(), SLACK_BOT_TOKEN=refused)

    result = run_cli(tmp_path, "serve", env=env)

    assert result.returncode != 0
    assert_no_traceback(result.stderr)
    assert messages(result.stderr) == ["jit-bot: SLACK_BOT_TOKEN was refused by Slack: invalid_auth"], result.stderr
    assert [call.ok for call in slack.calls_to("auth.test")] == [False]
    for output in (result.stdout, result.stderr):
        assert refused not in output
        assert_no_secrets(output)


def test_serve_on_a_port_in_use_is_one_line_and_touches_nothing(tmp_path: Path, slack: SlackStandIn) -> None:
    write_policy(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", port)

        result = run_cli(tmp_path, "serve", env=env)

    assert result.returncode == 2
    assert_no_traceback(result.stdout + result.stderr)
    assert messages(result.stderr) == [
        f"jit-bot: JIT_HTTP_PORT {port} on 127.0.0.1 is already in use; stop what listens there or set another port"
    ], result.stderr
    assert "serving on" not in result.stdout + result.stderr
    assert slack.calls_to("auth.test") == [], "it stopped before talking to Slack"
    assert not (tmp_path / "jit.db").exists(), "nor did it create a database"


def test_serve_refuses_to_start_on_bad_settings(tmp_path: Path, slack: SlackStandIn) -> None:
    write_policy(tmp_path)
    env = serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port(), SLACK_SIGNING_SECRET="replace-me")

    result = run_cli(tmp_path, "serve", env=env)

    assert result.returncode != 0
    assert_no_traceback(result.stderr)
    assert messages(result.stderr) == [
        "jit-bot: SLACK_SIGNING_SECRET still holds a placeholder; put the real value from your Slack app here"
    ]
    # Nothing was touched: no Slack call, no database file.
    assert slack.calls == []
    assert not (tmp_path / "jit.db").exists()


def test_serve_bad_settings_print_nothing_but_the_line(tmp_path: Path, slack: SlackStandIn) -> None:
    write_policy(tmp_path)
    env = serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port(), SLACK_BOT_TOKEN="xoxb-replace-me")

    result = run_cli(tmp_path, "serve", env=env)

    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "jit-bot: SLACK_BOT_TOKEN still holds a placeholder; put the real value from your Slack app here"
    ]


# --- jit-bot audit verify -------------------------------------------------------------------------


def append_events(database_url: str, count: int) -> None:
    engine = bind_audit_key(make_engine(database_url), base64.urlsafe_b64decode(AUDIT_KEY))
    migrate(engine)
    start = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    try:
        for n in range(count):
            with session_scope(engine) as session:
                append_event(
                    session=session,
                    at=start + timedelta(seconds=n),
                    event_type="request.submitted" if n == 0 else "request.voted",
                    actor=REQUESTER,
                    request_id="R000000001",
                    details={"resource": "prod-db", "scopes": ["read"], "n": n},
                )
    finally:
        engine.dispose()


def tamper(database_url: str, statement: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            changed = connection.execute(text(statement)).rowcount
        assert changed == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        pytest.param(
            """UPDATE audit_event SET details = '{"resource": "prod-db", "scopes": ["read", "write"], "n": 1}'
               WHERE seq = 2""",
            "audit trail BROKEN at event 2: event 2 was altered after it was written (or the key is wrong)",
            id="details-edited",
        ),
        pytest.param(
            "DELETE FROM audit_event WHERE seq = 2",
            "audit trail BROKEN at event 2: event 2 is missing",
            id="event-deleted",
        ),
        pytest.param(
            "UPDATE audit_event SET actor = 'U0OUTSIDER1' WHERE seq = 3",
            "audit trail BROKEN at event 3: event 3 was altered after it was written (or the key is wrong)",
            id="actor-edited",
        ),
        pytest.param(
            "DELETE FROM audit_event WHERE seq = 3",
            "audit trail BROKEN at event 3: the chain ends at event 2 but 3 were written",
            id="last-event-deleted",
        ),
    ],
)
def test_audit_verify(tmp_path: Path, database_url: str, statement: str, expected: str) -> None:
    env = {"JIT_AUDIT_KEY": AUDIT_KEY, "JIT_DATABASE_URL": database_url}
    append_events(database_url, 3)

    intact = run_cli(tmp_path, "audit", "verify", env=env)

    assert intact.returncode == 0, intact.stderr
    assert intact.stdout == "audit trail intact: 3 events\n"

    tamper(database_url, statement)
    broken = run_cli(tmp_path, "audit", "verify", env=env)

    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert broken.stdout == ""
    assert_no_traceback(broken.stderr)
    assert messages(broken.stderr) == [expected]


def rechain(database_url: str, link: Callable[[str, str], str], *, edit: bool = True) -> None:
    """What someone with write access to the database can do: rewrite an event, then recompute every
    link after it with whatever they have (no key, or a key of their own) so the chain looks whole.
    With ``edit=False`` and plain links it is a trail as written before the key existed."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            if edit:
                connection.execute(text("UPDATE audit_event SET actor = 'U0OUTSIDER1' WHERE seq = 2"))
            prev = "0" * 64
            for seq, at, event_type, actor, request_id, details in connection.execute(
                text("SELECT seq, at, event_type, actor, request_id, details FROM audit_event ORDER BY seq")
            ).all():
                when = at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
                canonical = canonical_event(
                    seq=seq,
                    at=when if when.tzinfo else when.replace(tzinfo=UTC),
                    event_type=event_type,
                    actor=actor,
                    request_id=request_id,
                    details=details if isinstance(details, dict) else json.loads(details),
                )
                digest = link(prev, canonical)
                connection.execute(
                    text("UPDATE audit_event SET prev_hash = :p, hash = :h WHERE seq = :s"),
                    {"p": prev, "h": digest, "s": seq},
                )
                prev = digest
            connection.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": prev})
    finally:
        engine.dispose()


NOT_VERIFIED = (
    "audit trail NOT VERIFIED: events 1 to 3 (of 3) are not linked with JIT_AUDIT_KEY, so anyone who could write "
    "to the database could have rewritten them. If they predate the key (an upgrade), check them with the old "
    "version, then run `jit-bot audit rekey` once"
)


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        pytest.param(legacy_event_link, NOT_VERIFIED, id="plain-sha256"),
        pytest.param(
            lambda prev, canonical: event_link(b"a key of the attacker's own, 32b", prev, canonical),
            "audit trail BROKEN at event 1: event 1 was altered after it was written (or the key is wrong)",
            id="own-key",
        ),
    ],
)
def test_audit_verify_detects_a_chain_rebuilt_without_the_key(
    tmp_path: Path, database_url: str, link: Callable[[str, str], str], expected: str
) -> None:
    env = {"JIT_AUDIT_KEY": AUDIT_KEY, "JIT_DATABASE_URL": database_url}
    append_events(database_url, 3)
    rechain(database_url, link)

    broken = run_cli(tmp_path, "audit", "verify", env=env)

    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert messages(broken.stderr) == [expected]


def test_a_trail_from_before_the_key_is_not_verified_until_an_operator_rekeys_it(
    tmp_path: Path, database_url: str
) -> None:
    env = {"JIT_AUDIT_KEY": AUDIT_KEY, "JIT_DATABASE_URL": database_url}
    append_events(database_url, 3)
    rechain(database_url, legacy_event_link, edit=False)  # as the previous version wrote it
    # Serving never re-keys it (that would also launder a trail rewritten the old, keyless way).
    assert run_cli(tmp_path, "migrate", env=env).returncode == 0
    unverified = run_cli(tmp_path, "audit", "verify", env=env)
    assert unverified.returncode == 1 and messages(unverified.stderr) == [NOT_VERIFIED]

    rekeyed = run_cli(tmp_path, "audit", "rekey", env=env)
    assert rekeyed.returncode == 0, rekeyed.stderr
    assert rekeyed.stdout.splitlines()[0] == "re-linked 3 events with JIT_AUDIT_KEY (3 were unkeyed)"
    assert "the trail's last link before re-keying was " in rekeyed.stdout
    intact = run_cli(tmp_path, "audit", "verify", env=env)
    assert intact.returncode == 0 and intact.stdout == "audit trail intact: 4 events\n", intact.stderr

    again = run_cli(tmp_path, "audit", "rekey", env=env)
    assert again.returncode == 1
    assert messages(again.stderr) == [
        "jit-bot: nothing re-keyed: every event is already linked with the key; nothing to re-key"
    ]
    # Rewritten the keyless way after keying: detected, however whole it looks.
    rechain(database_url, legacy_event_link)
    assert run_cli(tmp_path, "audit", "verify", env=env).returncode == 1


def test_audit_verify_without_a_key_says_so(tmp_path: Path, database_url: str) -> None:
    append_events(database_url, 1)
    result = run_cli(tmp_path, "audit", "verify", env={"JIT_DATABASE_URL": database_url})
    assert result.returncode == 2
    assert_no_traceback(result.stderr)
    (line,) = messages(result.stderr)
    assert line.startswith("jit-bot: JIT_AUDIT_KEY is not set and there is no audit key file at ")
    assert not list(tmp_path.glob("jit-audit-key")), "verifying never makes up a key"


def test_audit_verify_on_an_empty_trail(tmp_path: Path, database_url: str) -> None:
    env = {"JIT_AUDIT_KEY": AUDIT_KEY, "JIT_DATABASE_URL": database_url}
    migrated = run_cli(tmp_path, "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout == "database is at the newest schema\n"

    result = run_cli(tmp_path, "audit", "verify", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "audit trail intact: 0 events\n"


@pytest.mark.parametrize("with_key", [False, True], ids=["no-key", "key-set"])
@pytest.mark.parametrize("command", [("audit", "verify"), ("audit", "rekey")], ids=["verify", "rekey"])
def test_audit_commands_in_an_empty_folder_create_no_database(
    tmp_path: Path, command: tuple[str, ...], with_key: bool
) -> None:
    env = {"JIT_AUDIT_KEY": AUDIT_KEY} if with_key else {}

    result = run_cli(tmp_path, *command, env=env)

    assert result.returncode == 2, result
    assert_no_traceback(result.stderr)
    assert messages(result.stderr) == [
        f"jit-bot: JIT_DATABASE_URL: there is no database at {(tmp_path / 'jit.db').resolve()}; "
        "run this where the bot's .env is, or set JIT_DATABASE_URL to its database"
    ]
    assert list(tmp_path.iterdir()) == [], "nothing is created"


def test_audit_verify_before_migrations_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    env = {"JIT_AUDIT_KEY": AUDIT_KEY, "JIT_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}

    result = run_cli(tmp_path, "audit", "verify", env=env)

    # Exit 1 means "the trail is broken"; a database without the schema is a different problem.
    assert result.returncode not in (0, 1)
    assert_no_traceback(result.stderr)
    lines = messages(result.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("jit-bot: ") and "JIT_DATABASE_URL" in lines[0], lines


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://jit:dbpass@db:5432/jit?password=qspass&sslmode=require",
            "postgresql+psycopg://jit:***@db:5432/jit?password=redacted&sslmode=require",
        ),
        ("https://idp.example/realm?client_secret=qspass&x=1", "https://idp.example/realm?client_secret=redacted&x=1"),
        (
            "https://user:qspass@proxy.example/api/?access_token=qspass",
            "https://***@proxy.example/api/?access_token=redacted",
        ),
        ("sqlite:///jit.db", "sqlite:///jit.db"),
    ],
)
def test_printed_urls_hide_passwords_in_the_user_part_and_in_the_query(url: str, shown: str) -> None:
    from bot.redact import redact_url

    assert redact_url(url) == shown
    assert "qspass" not in redact_url(url) and "dbpass" not in redact_url(url)


def test_a_misspelt_setting_is_a_warning_naming_the_real_one(tmp_path: Path) -> None:
    write_policy(tmp_path, POLICY)
    env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "OIDC_ISUER": "https://idp.example"}

    result = run_cli(tmp_path, "check", "--offline", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "jit-bot: warning: OIDC_ISUER is not a setting jit-bot knows, so it is ignored; did you mean OIDC_ISSUER?"
    ]
    assert "IdP: not configured" in result.stdout, "the misspelt issuer really was ignored"


def test_version(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"jit-bot {importlib.metadata.version('jit-bot')}"


def _leaf_commands() -> list[tuple[str, ...]]:
    """Every runnable command of the real parser, so a new one cannot ship without its --help."""
    import argparse

    from bot.cli import build_parser

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        subs = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        if not subs:
            return [prefix]
        return [leaf for name, sub in subs[0].choices.items() for leaf in walk(sub, (*prefix, name))]

    return walk(build_parser(), ())


# What each command's --help must say it reads (the demo makes its own settings and ignores .env).
READS = {
    ("serve",): [".env in the working folder", "JIT_POLICY_FILE"],
    ("check",): [".env in the working folder", "JIT_POLICY_FILE"],
    ("migrate",): [".env in the working folder", "JIT_DATABASE_URL"],
    ("audit", "verify"): [".env in the working folder", "JIT_DATABASE_URL", "JIT_AUDIT_KEY"],
    ("audit", "rekey"): [".env in the working folder", "JIT_DATABASE_URL", "JIT_AUDIT_KEY"],
    ("digest",): [".env in the working folder", "JIT_POLICY_FILE", "JIT_DATABASE_URL", "JIT_AUDIT_KEY", "read-only"],
    ("demo",): ["Ignores .env"],
    ("keygen",): ["Reads nothing"],
    ("policy", "check"): [".env in the working folder", "JIT_POLICY_FILE"],
    ("policy", "test"): ["Reads FILE (a policy) and CASES", "talks to nothing"],
    ("policy", "replay"): [".env in the working folder", "JIT_DATABASE_URL", "read-only"],
    ("audit", "export"): [".env in the working folder", "JIT_DATABASE_URL", "constant memory"],
}


@pytest.mark.parametrize("command", _leaf_commands(), ids=" ".join)
def test_each_command_help_says_what_it_reads_and_its_exit_codes(tmp_path: Path, command: tuple[str, ...]) -> None:
    result = run_cli(tmp_path, *command, "--help")

    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert re.search(r"Exit codes?: 0", text), text
    assert command in READS, f"say what `{' '.join(command)}` reads"
    for needed in READS[command]:
        assert needed in text, (needed, text)


def test_a_database_that_is_not_running_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://jit:pw-7c1e@127.0.0.1:{free_port()}/jit"  # nothing listens there
    env = {"JIT_DATABASE_URL": url, "JIT_AUDIT_KEY": AUDIT_KEY}

    result = run_cli(tmp_path, "migrate", env=env)

    assert result.returncode == 2
    assert_no_traceback(result.stdout + result.stderr)
    (line,) = result.stderr.splitlines()
    assert line.startswith("jit-bot: cannot reach the database (") and "Connection refused" in line, line
    assert line.endswith("is it running, and is JIT_DATABASE_URL right?")
    assert "pw-7c1e" not in result.stdout + result.stderr

    verify = run_cli(tmp_path, "audit", "verify", env=env)
    assert verify.returncode != 0
    assert_no_traceback(verify.stdout + verify.stderr)
    assert len(verify.stderr.splitlines()) == 1 and "pw-7c1e" not in verify.stderr, verify.stderr
