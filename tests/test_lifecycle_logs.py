"""One log line per step in a request's life (``jit-bot.lifecycle``), written once by whoever took the
step, naming the request, its resource and its requester, and never a secret."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.demo.slack_api import SlackStandIn
from bot.jobs.scheduler import AtStart, JobScheduler
from bot.logs import FIELDS, JsonFormatter
from bot.services.lifecycle import LOGGER_NAME
from bot.slack.ids import ActionId
from tests.harness import SlackRequests
from tests.processes import ServeProcess, assert_no_traceback, free_port, run_cli, write_policy
from tests.test_e2e_minting import written_at_debug
from tests.testbot import Bot, MintingBot
from tests.world import (
    APPROVER_1,
    APPROVER_2,
    AUDIT_CHANNEL,
    BOT_TOKEN,
    IDP_CLIENT_SECRET,
    REQUESTER,
    SIGNING_SECRET,
    SQLITE_ONLY,
    make_policy,
    serve_env,
)

JSON = JsonFormatter()


def steps(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    """The lifecycle records of one request, in order."""
    return [
        r for r in caplog.records if r.name == LOGGER_NAME and getattr(r, FIELDS, {}).get("request_id") == request_id
    ]


def events(caplog: pytest.LogCaptureFixture, request_id: str) -> list[str]:
    return [getattr(r, FIELDS)["event"] for r in steps(caplog, request_id)]


def written(caplog: pytest.LogCaptureFixture) -> str:
    """What `jit-bot serve` would write of the records captured, even at DEBUG (its configuration keeps
    client libraries at WARNING), and the lifecycle lines as the JSON format writes them, fields and all."""
    lifecycle = [JSON.format(r) for r in caplog.records if r.name == LOGGER_NAME]
    return "\n".join([*written_at_debug(caplog.records), *lifecycle])


def one(caplog: pytest.LogCaptureFixture, request_id: str, event: str) -> logging.LogRecord:
    found = [r for r in steps(caplog, request_id) if getattr(r, FIELDS)["event"] == event]
    assert len(found) == 1, f"{event}: {[r.getMessage() for r in found]}"
    return found[0]


def names_the_request(record: logging.LogRecord, request_id: str, resource: str = "prod-db") -> None:
    message = record.getMessage()
    assert f"request={request_id}" in message and f"resource={resource}" in message, message
    assert f"requester={REQUESTER}" in message, message
    fields = getattr(record, FIELDS)
    assert (fields["request_id"], fields["resource"], fields["requester"]) == (request_id, resource, REQUESTER)


# --- a grant from request to revocation ----------------------------------------------------------------


def test_each_step_of_a_grant_is_one_line_without_secrets(
    minting_bot: MintingBot, caplog: pytest.LogCaptureFixture
) -> None:
    bot = minting_bot
    bot.idp.fail_next(503)  # one retry of the exchange: a retry is not a step
    request_id = bot.approve()
    url = bot.pickup_url(request_id)
    token = httpx.get(url, headers={"Accept": "application/json"}).json()["access_token"]
    bot.command(REQUESTER, f"/jit revoke {request_id}")
    bot.eventually(lambda: "revoked" in events(caplog, request_id), timeout=15)

    expected = ["submitted", "approved", "minted", "picked_up", "revoke_requested", "revoked"]
    assert events(caplog, request_id) == expected
    for record in steps(caplog, request_id):
        names_the_request(record, request_id)
        assert record.levelno == logging.INFO
    assert "scopes=read duration=30m" in one(caplog, request_id, "submitted").getMessage()
    assert f"by={APPROVER_1}" in one(caplog, request_id, "approved").getMessage()
    grant = bot.grant(request_id)
    minted = one(caplog, request_id, "minted")
    assert f"token_fingerprint={grant.token_fingerprint}" in minted.getMessage()
    assert getattr(minted, FIELDS)["scopes"] == ["read"]
    assert f"by={REQUESTER}" in one(caplog, request_id, "revoke_requested").getMessage()
    revoked = one(caplog, request_id, "revoked")
    assert 'proof="introspection inactive"' in revoked.getMessage()
    assert getattr(revoked, FIELDS)["proof"] == "introspection inactive"

    # Nothing anyone could use: the token, the pickup link and its code, the subject assertion (a
    # JWT: its id, or any JWS at all), the IdP client secret, Slack's secrets, the encryption key.
    code = url.rsplit("/", 1)[1]
    assertion = bot.idp.last_assertion()
    assert assertion is not None
    settings = bot.served.runtime.settings
    assert settings.jit_encryption_key is not None
    log = written(caplog)
    for secret in (
        token,
        url,
        code,
        assertion["jti"],
        "eyJ",
        IDP_CLIENT_SECRET,
        BOT_TOKEN,
        SIGNING_SECRET,
        settings.jit_encryption_key.get_secret_value(),
    ):
        assert secret not in log, secret
    assert len(token) > 20 and len(code) > 20


def test_a_refused_exchange_is_one_mint_failed_line(minting_bot: MintingBot, caplog: pytest.LogCaptureFixture) -> None:
    bot = minting_bot
    bot.idp.fail_next(400, error="invalid_grant")
    request_id = bot.approve()
    assert bot.stored(request_id).status == "failed"
    bot.eventually(lambda: "mint_failed" in events(caplog, request_id))

    assert events(caplog, request_id) == ["submitted", "approved", "mint_failed"]
    failed = one(caplog, request_id, "mint_failed")
    names_the_request(failed, request_id)
    assert failed.levelno == logging.WARNING
    assert "error=invalid_grant" in failed.getMessage()
    assert IDP_CLIENT_SECRET not in written(caplog)


@SQLITE_ONLY
def test_a_failing_revocation_is_one_line_when_alerted_not_one_per_retry(
    minting_bot: MintingBot, caplog: pytest.LogCaptureFixture
) -> None:
    bot = minting_bot
    request_id = bot.approve("request prod-db read 2s outage drill")
    bot.token(request_id)
    bot.idp.stop()
    bot.slack.wait_for(lambda: bot.posts_to(AUDIT_CHANNEL, ":rotating_light:"), timeout=20)
    bot.idp.start()
    bot.slack.wait_for(lambda: "revoked" in events(caplog, request_id), timeout=30)

    assert len(bot.events(request_id, "revocation_failed")) >= 3
    expected = ["submitted", "approved", "minted", "picked_up", "revocation_failing", "revoked"]
    assert events(caplog, request_id) == expected
    failing = one(caplog, request_id, "revocation_failing")
    names_the_request(failing, request_id)
    assert failing.levelno == logging.WARNING
    assert "attempts=3" in failing.getMessage()


# --- decided without a grant ------------------------------------------------------------------------


@pytest.fixture
def lifecycle_caplog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    return caplog


def test_deny_and_cancel_are_one_line_each(bot: Bot, lifecycle_caplog: pytest.LogCaptureFixture) -> None:
    caplog = lifecycle_caplog
    denied = bot.request(REQUESTER, "request prod-db read 30m checking INC-1234").request_id
    bot.deny(APPROVER_1, denied, "not during the freeze")
    bot.eventually(lambda: "denied" in events(caplog, denied))
    cancelled = bot.request(REQUESTER, "request prod-db read 30m never mind").request_id
    bot.command(REQUESTER, f"/jit cancel {cancelled}")
    bot.eventually(lambda: "cancelled" in events(caplog, cancelled))

    assert events(caplog, denied) == ["submitted", "denied"]
    assert f"by={APPROVER_1}" in one(caplog, denied, "denied").getMessage()
    assert events(caplog, cancelled) == ["submitted", "cancelled"]
    assert f"by={REQUESTER}" in one(caplog, cancelled, "cancelled").getMessage()
    for request_id in (denied, cancelled):
        for record in steps(caplog, request_id):
            names_the_request(record, request_id)
    assert SIGNING_SECRET not in written(caplog) and BOT_TOKEN not in written(caplog)


@SQLITE_ONLY
@pytest.mark.parametrize("policy", [make_policy(request_timeout="2s")])
def test_an_unanswered_request_expires_in_one_line(bot: Bot, lifecycle_caplog: pytest.LogCaptureFixture) -> None:
    caplog = lifecycle_caplog
    request_id = bot.request(REQUESTER, "request prod-db read 30m anyone there").request_id
    bot.eventually(lambda: "expired" in events(caplog, request_id))
    assert events(caplog, request_id) == ["submitted", "expired"]
    expired = one(caplog, request_id, "expired")
    names_the_request(expired, request_id)
    assert "after=2s" in expired.getMessage()


def _post_together(bot: Bot, bodies: list[str]) -> None:
    """Release all requests at once from separate threads, so they reach the app concurrently."""
    barrier = threading.Barrier(len(bodies))

    def fire(body: str) -> None:
        barrier.wait()
        bot.send.post_signed(body)

    threads = [threading.Thread(target=fire, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_racing_approvers_decide_once_and_log_once(bot: Bot, lifecycle_caplog: pytest.LogCaptureFixture) -> None:
    caplog = lifecycle_caplog
    for round_no in range(10):
        request_id, channel, ts = bot.request(REQUESTER, f"request prod-db read 30m race {round_no}")
        _post_together(
            bot,
            [
                bot.click_body(user, ActionId.APPROVE, request_id, channel=channel, ts=ts)
                for user in (APPROVER_1, APPROVER_2)
            ],
        )
        # Both clicks are judged (one vote, one refusal) before the count.
        bot.eventually(lambda: len(bot.events(request_id, "unauthorized_attempt")) == 1)  # noqa: B023 - awaited here
        assert events(caplog, request_id) == ["submitted", "approved"]


# --- the scheduler's own chatter ------------------------------------------------------------------------


def test_the_schedulers_per_run_lines_are_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    ran = threading.Event()
    jobs = JobScheduler()
    jobs.add("probe", AtStart(), ran.set)
    jobs.start()
    try:
        assert ran.wait(10)
    finally:
        jobs.stop()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("apscheduler")] == []

    caplog.clear()
    caplog.set_level(logging.DEBUG)
    ran.clear()
    jobs = JobScheduler()
    jobs.add("probe", AtStart(), ran.set)
    jobs.start()
    try:
        assert ran.wait(10)
    finally:
        jobs.stop()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("apscheduler")]
    assert any(m.startswith('Running job "probe') for _, m in said), said
    assert all(level == "DEBUG" for level, _ in said), said


# --- the JSON format ---------------------------------------------------------------------------------------


def _record(message: str, *args: Any, exc: bool = False, **fields: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    record = logging.LogRecord("jit-bot.test", logging.WARNING, __file__, 1, message, args, exc_info)
    if fields:
        setattr(record, FIELDS, fields)
    return record


def test_json_lines_are_one_object_each_with_fields_and_traceback() -> None:
    line = JSON.format(_record("refused %s", "a\nERROR forged\u2028x\u202e", exc=True, event="mint_failed"))
    assert len(line.splitlines()) == 1
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "jit-bot.test"
    assert entry["message"] == "refused a\nERROR forged\u2028x\u202e"
    assert entry["event"] == "mint_failed"
    assert entry["time"].endswith("Z") and "T" in entry["time"]
    assert "Traceback" in entry["exc_info"] and "ValueError: boom" in entry["exc_info"]
    # A field never replaces one of the four every line has.
    assert json.loads(JSON.format(_record("said", level="forged")))["level"] == "WARNING"


# --- the jit-bot command's --log-format ------------------------------------------------------------------


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line parsed as one JSON object (a line that is not one fails the test, naming it)."""
    parsed = []
    for line in output.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}\n{output}") from None
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry), line
        parsed.append(entry)
    return parsed


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--log-format", "json", "check"], {}, id="before-the-sub-command"),
        pytest.param(["check", "--log-format", "json"], {}, id="after-the-sub-command"),
        pytest.param(["check"], {"JIT_LOG_FORMAT": "json"}, id="from-the-environment"),
    ],
)
def test_check_with_a_bad_setting_says_so_in_json(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    write_policy(tmp_path)
    result = run_cli(tmp_path, *args, env={"OIDC_ISUER": "https://idp.example", **env})
    assert result.returncode == 2
    said = json_lines(result.stderr)
    assert [(e["level"], e["logger"]) for e in said] == [("WARNING", "jit-bot")] + [("ERROR", "jit-bot")] * 2
    assert "did you mean OIDC_ISSUER?" in said[0]["message"]
    assert said[1]["message"].startswith("SLACK_BOT_TOKEN is not set")
    assert datetime.fromisoformat(said[1]["time"]).utcoffset() == timedelta(0)


def test_an_unknown_log_format_is_refused(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "check", env={"JIT_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert "JIT_LOG_FORMAT='xml': choose text or json" in result.stderr
    assert_no_traceback(result.stderr)


def test_serve_writes_json_lines_with_lifecycle_fields(tmp_path: Path, slack: SlackStandIn) -> None:
    write_policy(tmp_path)
    env = serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port(), JIT_LOG_FORMAT="json")
    served = ServeProcess(tmp_path, env)
    try:
        served.wait_healthy()
        sender = SlackRequests.for_standin(served.base_url, slack)
        try:
            response, _key, _trigger = sender.slash(REQUESTER, "request prod-db read 30m checking INC-1234")
            assert response.status_code == 200, response.text
        finally:
            sender.http.close()
        slack.wait_for(lambda: '"event": "submitted"' in served.stderr_path.read_text())
        code = served.terminate(timeout=10)
    finally:
        served.close()
    assert code == 0, served.output()
    said = json_lines(served.stderr_path.read_text())
    (submitted,) = [e for e in said if e.get("event") == "submitted"]
    assert submitted["logger"] == LOGGER_NAME and submitted["level"] == "INFO"
    assert submitted["resource"] == "prod-db" and submitted["requester"] == REQUESTER
    assert submitted["scopes"] == ["read"] and submitted["duration"] == "30m"
    assert submitted["message"].startswith(f"submitted: request={submitted['request_id']} resource=prod-db")
    messages = [e["message"] for e in said]
    assert any(m.startswith("serving on http://127.0.0.1:") for m in messages), messages
    assert "Finished server process" in " ".join(messages), "uvicorn's own lines are JSON too"
    assert not [e for e in said if e["logger"].startswith("apscheduler")], "the scheduler's per-run lines are DEBUG"
    assert BOT_TOKEN not in served.output() and SIGNING_SECRET not in served.output()
