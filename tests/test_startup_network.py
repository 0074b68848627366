"""`jit-bot serve` when Slack or the IdP cannot be had at start: one line naming the problem and the
fix, a non-zero exit, no traceback. (A token Slack refuses: tests/test_cli.py.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cryptography.fernet import Fernet

from bot.demo.slack_api import SlackStandIn
from bot.idp.keys import generate_signing_key
from tests.processes import assert_no_traceback, free_port, run_cli, write_policy
from tests.world import BOT_TOKEN, IDP_CLIENT_SECRET, SIGNING_SECRET, idp_values, serve_env

# A log record (any level): what remains on stderr once they are set aside is what the person is told.
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def serve(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    write_policy(tmp_path)
    result = run_cli(tmp_path, "serve", env=env)
    output = result.stdout + result.stderr
    assert_no_traceback(output)
    for secret in (BOT_TOKEN, SIGNING_SECRET, IDP_CLIENT_SECRET):
        assert secret not in output
    assert "serving on" not in output
    return result, [line for line in result.stderr.splitlines() if not LOG_RECORD.match(line)]


def test_slack_unreachable_at_start_is_one_line(tmp_path: Path, slack: SlackStandIn) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api/"
    env = serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port(), SLACK_API_URL=dead)

    result, said = serve(tmp_path, env)

    assert result.returncode == 2
    (line,) = said
    assert line.startswith(f"jit-bot: cannot reach Slack at {dead} ("), line
    assert line.endswith("); check SLACK_API_URL, the network and any proxy"), line


def test_slack_hanging_at_start_is_one_line_at_the_call_deadline(tmp_path: Path, slack: SlackStandIn) -> None:
    env = serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port(), SLACK_CALL_DEADLINE="1")
    slack.stall("auth.test")
    try:
        result, said = serve(tmp_path, env)
    finally:
        slack.release("auth.test")

    assert result.returncode == 2
    assert said == [
        f"jit-bot: Slack at {slack.api_url} did not answer auth.test within 1 s (SLACK_CALL_DEADLINE); "
        "check SLACK_API_URL, the network and any proxy"
    ]
    assert [call.method for call in slack.calls] == ["auth.test"]


def test_an_idp_whose_discovery_document_does_not_load_at_start_is_one_line(
    tmp_path: Path, slack: SlackStandIn
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    key_file = tmp_path / "signing-key.pem"
    key_file.write_bytes(generate_signing_key().pem())
    values = idp_values(dead, encryption_key=Fernet.generate_key().decode(), signing_key_file=key_file)
    env = serve_env(
        slack,
        f"sqlite:///{tmp_path / 'jit.db'}",
        free_port(),
        **{name.upper(): str(value) for name, value in values.items()},
    )

    result, said = serve(tmp_path, env)

    assert result.returncode == 2
    assert said == [
        f"jit-bot: the IdP's discovery document did not load: cannot reach {dead}/.well-known/openid-configuration "
        "(discovery: ConnectError); check OIDC_ISSUER, and that the IdP is up"
    ]
    assert [call.method for call in slack.calls] == ["auth.test"], "Slack was fine; the IdP was not"
