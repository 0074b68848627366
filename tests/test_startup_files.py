"""`jit-bot serve` started with something wrong on this machine (the database URL, its folder, the
signing key file): one line that names the problem and the fix, a non-zero exit, no traceback, and
nothing created or migrated on the way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.demo.slack_api import SlackStandIn
from bot.idp.keys import generate_signing_key
from bot.store.crypto import TokenCipher
from tests.processes import assert_no_traceback, free_port, run_cli, write_policy
from tests.world import AUDIT_KEY, BOT_TOKEN, SIGNING_SECRET, serve_env

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING) ")
ENCRYPTION_KEY = TokenCipher.generate_key()
SECRETS = (BOT_TOKEN, SIGNING_SECRET, AUDIT_KEY, ENCRYPTION_KEY, "idp-secret-5d1f", "pw-83a1")


@pytest.fixture
def slack() -> SlackStandIn:
    standin = SlackStandIn(BOT_TOKEN).start()
    yield standin  # type: ignore[misc]
    standin.stop()


def _serve(tmp_path: Path, slack: SlackStandIn, **env: str) -> tuple[int, list[str], str]:
    """Run `jit-bot serve` until it gives up: (exit code, what the person is told, all output)."""
    write_policy(tmp_path)
    base = serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port())
    result = run_cli(tmp_path, "serve", env={**base, **env})
    output = result.stdout + result.stderr
    told = [line for line in result.stderr.splitlines() if not LOG_LINE.match(line)]
    return result.returncode, told, output


def _assert_one_line(code: int, told: list[str], output: str, *expected: str) -> str:
    assert code == 2, output
    assert_no_traceback(output)
    assert len(told) == 1, told
    for part in expected:
        assert part in told[0], (part, told[0])
    for secret in SECRETS:
        assert secret not in output
    return told[0]


def _idp_env(key_file: Path) -> dict[str, str]:
    # An issuer nothing listens on: the key is checked before the IdP is ever asked.
    return {
        "OIDC_ISSUER": f"http://127.0.0.1:{free_port()}",
        "OIDC_CLIENT_ID": "jit-bot",
        "OIDC_CLIENT_SECRET": "idp-secret-5d1f",
        "JIT_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "JIT_AUDIT_KEY": AUDIT_KEY,
        "JIT_SIGNING_KEY_FILE": str(key_file),
    }


def _created(tmp_path: Path) -> set[str]:
    return {path.name for path in tmp_path.iterdir()} - {"policy.yml", "key.pem", "keys"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "postgres://jit:pw-83a1@db.example:5432/jit",
            ["JIT_DATABASE_URL", "uses postgres://", "postgresql+psycopg://"],
            id="postgres-scheme",
        ),
        pytest.param(
            "mysql://jit:pw-83a1@db/jit", ["JIT_DATABASE_URL", "sqlite:///", "postgresql+psycopg://"], id="mysql"
        ),
        pytest.param("not a url", ["JIT_DATABASE_URL", "is not a database URL"], id="not-a-url"),
    ],
)
def test_an_unsupported_database_url_names_the_form_to_write(
    tmp_path: Path, slack: SlackStandIn, url: str, expected: list[str]
) -> None:
    code, told, output = _serve(tmp_path, slack, JIT_DATABASE_URL=url)

    _assert_one_line(code, told, output, *expected)
    assert _created(tmp_path) == set()


def test_postgresql_not_running_is_one_line(tmp_path: Path, slack: SlackStandIn) -> None:
    url = f"postgresql+psycopg://jit:pw-83a1@127.0.0.1:{free_port()}/jit"  # nothing listens there

    code, told, output = _serve(tmp_path, slack, JIT_DATABASE_URL=url)

    line = _assert_one_line(code, told, output, "cannot reach the database", "Connection refused")
    assert line.endswith("is it running, and is JIT_DATABASE_URL right?")
    assert "serving on" not in output


def test_a_sqlite_folder_that_does_not_exist_is_one_line(tmp_path: Path, slack: SlackStandIn) -> None:
    missing = tmp_path / "no-such-folder"

    code, told, output = _serve(tmp_path, slack, JIT_DATABASE_URL=f"sqlite:///{missing}/jit.db")

    _assert_one_line(code, told, output, "JIT_DATABASE_URL", str(missing), "does not exist")
    assert not missing.exists()


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "absent.pem"


def _a_folder(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    return tmp_path / "keys"


def _not_pem(tmp_path: Path) -> Path:
    path = tmp_path / "key.pem"
    path.write_text("this is not a key\n")
    return path


def _public_key(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    public = generate_signing_key().private_key.public_key()
    path = tmp_path / "key.pem"
    path.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(_missing, ["absent.pem", "cannot be read", "No such file"], id="missing"),
        pytest.param(_a_folder, ["keys", "cannot be read"], id="unreadable-a-folder"),
        pytest.param(_not_pem, ["key.pem", "not an unencrypted PEM private key"], id="not-pem"),
        pytest.param(_public_key, ["key.pem", "not an unencrypted PEM private key"], id="public-key"),
    ],
)
def test_a_signing_key_file_that_cannot_sign_is_one_line_before_anything_is_created(
    tmp_path: Path, slack: SlackStandIn, make: object, expected: list[str]
) -> None:
    key_file = make(tmp_path)  # type: ignore[operator]

    code, told, output = _serve(tmp_path, slack, **_idp_env(key_file))

    _assert_one_line(code, told, output, *expected)
    assert _created(tmp_path) == set(), "no database, no key file, no migration"


def test_a_policy_with_rules_serves_now_that_they_are_applied(tmp_path: Path, slack: SlackStandIn) -> None:
    from tests.processes import ServeProcess
    from tests.processes import write_policy as write
    from tests.world import APPROVER_1, APPROVER_2, POLICY

    rule = {"name": "deny-write", "when": {"scopes_any": ["write"]}, "effect": "deny", "message": "No writes."}
    write(tmp_path, {**POLICY, "groups": {"dba": [APPROVER_1, APPROVER_2]}, "rules": [rule]})
    served = ServeProcess(tmp_path, serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port()))
    try:
        served.wait_healthy()
    finally:
        assert served.stop() == 0, served.output()
    assert "rules" not in "\n".join(served.log_lines("ERROR")), served.output()
