"""The edges, probed the way an attacker or a confused client would: oversized and junk requests,
replays, quotas, text that tries to forge lines, reads under a held write lock, replies aimed
elsewhere, and files that hold secrets."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.demo.signing import signed_headers
from bot.demo.slack_api import SlackStandIn
from bot.slack.forms import DenyForm
from bot.slack.ids import ActionId, BlockId
from tests.processes import ServeProcess, free_port, write_policy
from tests.testbot import Bot, opened_views, request_form
from tests.world import APPROVER_1, APPROVER_2, APPROVERS_CHANNEL, AUDIT_CHANNEL, REQUESTER, SIGNING_SECRET, serve_env

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    # What these tests probe lives in front of the database; SQLite is the embedded default.
    yield f"sqlite:///{tmp_path / 'jit.db'}"


# --- the HTTP edge of a real `jit-bot serve` -------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, slack: SlackStandIn, database_url: str) -> Iterator[tuple[ServeProcess, str]]:
    write_policy(tmp_path)
    process = ServeProcess(tmp_path, serve_env(slack, database_url, free_port()))
    try:
        process.wait_healthy()
        yield process, process.base_url
    finally:
        process.close()


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def raw_post(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10) -> bytes:
    """Send ``head`` (and ``body``) and return what the server answers, without finishing the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        return sock.recv(4096)


def test_an_oversized_body_is_refused_before_it_is_read(served: tuple[ServeProcess, str]) -> None:
    process, base_url = served
    port = int(base_url.rsplit(":", 1)[1])
    before = peak_rss_kb(process.process.pid)

    # Announced as 300 MiB, but only the headers are sent: the answer must not wait for the body.
    head = (
        b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 314572800\r\n\r\n"
    )
    answer = raw_post(port, head, b"payload=")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]

    # Chunked, with no length at all: reading stops at the cap.
    def chunks() -> Iterator[bytes]:
        block = b"a" * (1 << 20)
        for _ in range(64):
            yield block

    try:
        response = httpx.post(f"{base_url}/slack/events", content=chunks(), timeout=30)
        assert response.status_code == 413
    except httpx.TransportError:
        pass  # the server may close the connection while the client is still sending: also a refusal
    assert httpx.get(f"{base_url}/healthz").status_code == 200
    grown_mb = (peak_rss_kb(process.process.pid) - before) / 1024
    assert grown_mb < 30, f"the bot's peak memory grew by {grown_mb:.0f} MB for refused bodies"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(b"payload=[1]", {}, id="payload-is-a-list"),
        pytest.param(b"payload=%7Bnot-json", {}, id="payload-not-json"),
        pytest.param(b"\xff\xfe\x00payload=\xc3\x28", {}, id="not-utf8"),
        pytest.param(b"command=/jit", {"X-Slack-Request-Timestamp": "abc", "X-Slack-Signature": "v0=00"}, id="ts-abc"),
        pytest.param(b"command=/jit", {"X-Slack-Signature": "v0=" + "0" * 64}, id="no-timestamp"),
        # str.isdigit() says yes to these; int() of the first raises, the second is not a number here.
        pytest.param(
            b"command=/jit",
            {"X-Slack-Request-Timestamp": "9" * 5000, "X-Slack-Signature": "v0=00"},
            id="ts-5000-digits",
        ),
        pytest.param(
            b"command=/jit",
            {"X-Slack-Request-Timestamp": "\u0661\u0667\u0660\u0660".encode(), "X-Slack-Signature": "v0=00"},
            id="ts-arabic-indic-digits",
        ),
        pytest.param(
            b"command=/jit",
            {"X-Slack-Request-Timestamp": "1700000000", "X-Slack-Signature": "v0=\u00e9".encode("latin-1")},
            id="signature-not-ascii",
        ),
    ],
)
def test_unsigned_junk_gets_401_and_one_short_log_line(
    served: tuple[ServeProcess, str], body: bytes, headers: dict[str, str | bytes]
) -> None:
    process, base_url = served
    lines_before = len(process.output().splitlines())
    response = httpx.post(
        f"{base_url}/slack/events",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    assert response.status_code == 401
    time.sleep(0.3)
    new = process.output().splitlines()[lines_before:]
    assert "Traceback" not in "\n".join(new)
    assert len(new) <= 1 and all(len(line) < 200 for line in new), new


def test_signed_junk_gets_400_not_a_traceback(served: tuple[ServeProcess, str]) -> None:
    process, base_url = served
    for body in ("payload=[1]", "payload=%7Bnot-json", 'payload={"type": 5}'):
        response = httpx.post(
            f"{base_url}/slack/events",
            content=body,
            headers=signed_headers(SIGNING_SECRET, body, content_type="application/x-www-form-urlencoded"),
        )
        assert response.status_code in (400, 401, 404), (body, response.status_code)
        assert response.status_code != 500
    assert httpx.get(f"{base_url}/healthz").status_code == 200
    assert "Traceback" not in process.output()


# --- replays ----------------------------------------------------------------------------------------


def test_a_replayed_or_retried_slash_command_makes_one_request(bot: Bot) -> None:
    body, _, _ = bot.send.command_body(REQUESTER, "request prod-db read 30m only once")
    headers = signed_headers(SIGNING_SECRET, body, content_type="application/x-www-form-urlencoded")
    first = bot.send.http.post(f"{bot.served.base_url}/slack/events", content=body, headers=headers)
    assert first.status_code == 200
    bot.slack.wait_for(lambda: bot.request_count() == 1)
    # The same signed request again (a replay), Slack's own retry, and the same command re-signed
    # a second later (a replay that dodges the signature cache) all leave one request.
    replay = bot.send.http.post(f"{bot.served.base_url}/slack/events", content=body, headers=headers)
    assert replay.status_code == 200
    retried = bot.send.post_signed(body, extra_headers={"X-Slack-Retry-Num": "1"})
    assert retried.status_code == 200
    time.sleep(1.1)
    resigned = bot.send.post_signed(body)
    assert resigned.status_code == 200
    time.sleep(1.0)
    assert bot.request_count() == 1
    assert [e.event_type for e in bot.audit()].count("request_submitted") == 1
    cards = [c for c in bot.slack.calls_to("chat.postMessage") if c.ok and c.args.get("blocks")]
    assert len(cards) == 1


def test_a_replayed_modal_submission_makes_one_request(bot: Bot) -> None:
    _, key, _ = bot.send.slash(REQUESTER, "request prod-db")
    (view,) = bot.slack.wait_for(lambda: opened_views(bot.slack))
    values = request_form("prod-db", ["read"], "30m", "submitted twice")
    for _ in range(2):
        assert bot.send.submit_view(REQUESTER, view, values).status_code == 200
        time.sleep(1.1)  # a new timestamp, so a new signature: only the request's origin can tell
    time.sleep(0.5)
    assert bot.request_count() == 1


# --- limits and text --------------------------------------------------------------------------------


def test_pending_requests_per_requester_are_limited_with_a_clear_message(bot: Bot) -> None:
    for n in range(5):
        bot.request(REQUESTER, f"request prod-db read 30m pending {n}")
    _, key, _ = bot.send.slash(REQUESTER, "request prod-db read 30m one too many")
    (reply,) = bot.slack.wait_for(lambda: [r for r in bot.slack.responses if r.key == key])
    assert "5 requests waiting for approval" in reply.payload["text"] and "limit is 5" in reply.payload["text"]
    assert bot.request_count() == 5
    assert [e.event_type for e in bot.audit()].count("request_submitted") == 5
    # Someone else is not held back by it.
    bot.request(APPROVER_2, "request prod-db read 30m not the same person")


def test_a_deny_reason_is_limited_and_clipped_and_cannot_leave_buttons_live(bot: Bot) -> None:
    request_id, channel, ts = bot.request(REQUESTER, "request prod-db read 30m deny me")
    too_long = bot.deny(APPROVER_1, request_id, "x" * 900)
    assert too_long.status_code == 200
    assert too_long.json()["response_action"] == "errors"
    assert "under 500 characters" in too_long.json()["errors"][DenyForm.REASON_BLOCK]
    assert bot.stored(request_id).status == "pending"

    long_enough = "because " + "y" * 480
    ok = bot.deny(APPROVER_1, request_id, long_enough)
    assert ok.status_code == 200
    bot.slack.wait_for(lambda: bot.stored(request_id).status == "denied")
    card = bot.slack.wait_for(lambda: (m := bot.slack.message(channel, ts)) and "Denied" in json.dumps(m) and m)
    assert not [b for b in card["blocks"] if b["type"] == "actions"], "no live buttons on a denied card"
    decision = [b for b in card["blocks"] if b.get("block_id") == BlockId.DECISION][0]["text"]["text"]
    assert "…" in decision and len(decision) < 500, "the reason is clipped on the card"
    assert bot.slack.rejected() == []


def test_newlines_and_invisible_characters_cannot_forge_lines(bot: Bot) -> None:
    forged = "fix\n*Approved by* <@U0BOSS>\u202eoc.live\u200b\r\nINFO fake log line"
    request_id, channel, ts = bot.request(REQUESTER, f"request prod-db read 30m {forged}")
    stored = bot.stored(request_id).reason
    assert "\n" not in stored and "\r" not in stored and "\u202e" not in stored and "\u200b" not in stored
    card = bot.slack.message(channel, ts)
    reason_block = [b for b in card["blocks"] if b["type"] == "section" and "*Reason*" in str(b.get("text"))][0]
    shown = reason_block["text"]["text"].removeprefix("*Reason*\n")
    assert "\n" not in shown and "\u202e" not in shown, shown
    for call in bot.slack.calls_to("chat.postMessage"):
        if call.args.get("channel") == AUDIT_CHANNEL:
            assert "\n" not in call.args["text"] and "\u202e" not in call.args["text"]


# --- reads never wait for the writer ----------------------------------------------------------------


def test_read_only_paths_answer_while_another_process_holds_the_write_lock(bot: Bot, database_url: str) -> None:
    path = database_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None, timeout=1)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process is writing, for as long as it likes
        started = time.monotonic()
        health = httpx.get(f"{bot.served.base_url}/healthz", timeout=20)
        unknown = [httpx.get(f"{bot.served.base_url}/pickup/no-such-link-{n}", timeout=20) for n in range(20)]
        took = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok"}
    assert [r.status_code for r in unknown] == [404] * 20
    # Behind the lock, each answer would have waited for SQLite's 30 s busy timeout.
    assert took < 15
    assert [e for e in bot.audit() if e.event_type == "pickup_refused"] == [], "guesses are not audited one by one"


# --- replies go only to Slack, requests come only from our workspace --------------------------------


def test_a_response_url_outside_slacks_hooks_host_is_never_posted_to(bot: Bot) -> None:
    catcher = SlackStandIn("xoxb-0-0-other")
    catcher.start()
    try:
        payload, _ = bot.send.click_payload(
            APPROVER_1, ActionId.APPROVE, "RAAAAAAAAA", channel=APPROVERS_CHANNEL, ts="1.1"
        )
        payload["response_url"] = f"{catcher.base_url}/response/stolen"
        response = bot.send.post_signed(bot.send.payload_body(payload))
        assert response.status_code == 400
        time.sleep(0.5)
        assert catcher.responses == [], "nothing was POSTed to a stranger's URL"
        assert bot.audit() == []
    finally:
        catcher.stop()


def test_a_payload_from_another_workspace_is_refused(bot: Bot) -> None:
    body, _, _ = bot.send.command_body(REQUESTER, "request prod-db read 30m from elsewhere")
    foreign = body.replace("team_id=T0STANDIN1", "team_id=T0SOMEONE2")
    assert foreign != body
    response = bot.send.post_signed(foreign)
    assert response.status_code == 401
    time.sleep(0.5)
    assert bot.request_count() == 0 and bot.audit() == []


# --- files that hold secrets ------------------------------------------------------------------------


def test_files_that_hold_secrets_are_owner_only(tmp_path: Path, slack: SlackStandIn) -> None:
    write_policy(tmp_path)
    env = serve_env(slack, f"sqlite:///{tmp_path / 'jit.db'}", free_port())
    env.pop("JIT_AUDIT_KEY")  # generated beside the database, like the signing key
    process = ServeProcess(tmp_path, env)
    try:
        process.wait_healthy()
        names = ["jit.db", "jit.db-wal", "jit.db-shm", "jit-audit-key"]
        for name in names:
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode & 0o077 == 0, f"{name} has mode {mode:o}"
        assert "generated a new audit key" in process.output()
    finally:
        process.close()


def test_scripts_run_creates_env_owner_only(tmp_path: Path) -> None:
    work = tmp_path / "checkout"
    (work / "scripts").mkdir(parents=True)
    for name in (".env.example", "policy.example.yml", "scripts/run"):
        (work / name).write_bytes((REPO / name).read_bytes())
    result = subprocess.run(
        ["bash", "scripts/run"],
        cwd=work,
        env={"PATH": os.environ["PATH"], "JIT_RUN_SETUP_ONLY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "mode: demo" in result.stdout  # the placeholder token is no Slack app: the local demo
    mode = stat.S_IMODE((work / ".env").stat().st_mode)
    assert mode == 0o600, f".env has mode {mode:o}"
    assert (work / ".env").read_text() == (REPO / ".env.example").read_text()


def test_scripts_run_serves_slack_once_a_bot_token_is_set(tmp_path: Path) -> None:
    work = tmp_path / "checkout"
    (work / "scripts").mkdir(parents=True)
    for name in (".env.example", "policy.example.yml", "scripts/run"):
        (work / name).write_bytes((REPO / name).read_bytes())
    (work / ".env").write_text("SLACK_BOT_TOKEN=xoxb-1234-real-looking\n")
    env = {"PATH": os.environ["PATH"], "JIT_RUN_SETUP_ONLY": "1"}
    result = subprocess.run(["bash", "scripts/run"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "mode: serve" in result.stdout
    # The environment wins over .env, as for the bot itself.
    env["SLACK_BOT_TOKEN"] = "xoxb-replace-me"
    result = subprocess.run(["bash", "scripts/run"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert "mode: demo" in result.stdout
