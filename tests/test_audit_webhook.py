"""Forwarding the audit trail to a webhook: in order, at least once, signed, and never silently skipped.

The receiver is a real HTTP server on loopback that can be told to answer 503, 400, stall (silent or a
byte at a time), go away and come back. Its signature check is the README's own receiver snippet, run
as written against the bot's real requests. Both databases.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from bot.config import ConfigError, Settings, load_settings
from bot.demo.slack_api import SlackStandIn
from bot.domain.audit import AuditEventType
from bot.domain.policy import Policy
from bot.services.audit import record
from bot.services.forwarding import AuditForwarder, ForwardingPolicy
from bot.services.outbox import Announcer, Doorbell
from bot.store import forward as forward_store
from bot.store.audit import bind_audit_forwarding, bind_audit_key, export_events, verify_chain
from bot.store.db import make_engine, session_scope
from bot.store.models import AuditEvent, AuditForward, OutboxMessage
from tests.world import AUDIT_KEY, BOT_TOKEN, SIGNING_SECRET, build_settings

KEY = base64.urlsafe_b64decode(AUDIT_KEY)
SECRET = "test-webhook-secret-0123456789abcdef"
README = Path(__file__).resolve().parent.parent / "README.md"
# Short, so that a stall costs the test a second; the lease outlasts it as the policy demands.
STEPPED = ForwardingPolicy(
    deadline=1.0,
    lease=timedelta(seconds=5),
    first_retry=1.0,
    max_retry=4.0,
    max_refusals=3,
    refused_retry=60.0,
)


def _readme_verifier() -> Callable[..., bool]:
    """``verify_jit_webhook`` exactly as the README prints it for receivers."""
    match = re.search(r"<!-- receiver-verification -->\n```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, "the README's receiver snippet is missing"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)  # noqa: S102 - our own README, on purpose
    verify: Callable[..., bool] = namespace["verify_jit_webhook"]
    return verify


VERIFY = _readme_verifier()


# --- the receiver ----------------------------------------------------------------------------------


@dataclass
class Received:
    seq: int
    timestamp: str
    signature: str
    body: bytes
    verified: bool
    answered: str


@dataclass
class Receiver:
    """What it does with each request: the next scripted behaviour, else ``mode``."""

    mode: str = "ok"  # ok | 503 | 400 | silent | drip
    script: list[str] = field(default_factory=list)
    delay: float = 0.0  # seconds an accepted request takes, to let concurrent senders overlap
    requests: list[Received] = field(default_factory=list)
    overlaps: list[int] = field(default_factory=list)
    in_flight: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)

    def behaviour(self) -> str:
        with self.lock:
            return self.script.pop(0) if self.script else self.mode

    @property
    def accepted(self) -> list[int]:
        with self.lock:
            return [r.seq for r in self.requests if r.answered == "ok"]

    def attempts(self) -> list[int]:
        with self.lock:
            return [r.seq for r in self.requests]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            return  # the test's output is its assertions, not an access log

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seq = int(json.loads(body)["seq"])
            timestamp = self.headers.get("X-JIT-Timestamp", "")
            signature = self.headers.get("X-JIT-Signature", "")
            behaviour = receiver.behaviour()
            with receiver.lock:
                if seq in receiver.in_flight:
                    receiver.overlaps.append(seq)
                receiver.in_flight.add(seq)
                receiver.requests.append(
                    Received(
                        seq, timestamp, signature, body, VERIFY(SECRET.encode(), timestamp, signature, body), behaviour
                    )
                )
            try:
                self._answer(behaviour)
            except OSError:
                pass  # the sender hung up on a stall: what it should do
            finally:
                with receiver.lock:
                    receiver.in_flight.discard(seq)

        def _answer(self, behaviour: str) -> None:
            if behaviour == "silent":
                # Accepts, reads, says nothing: until the test ends, far past any deadline.
                receiver.release.wait(30)
                return
            if behaviour == "drip":
                self.send_response(200)
                self.send_header("Content-Length", "64")
                self.end_headers()
                for _ in range(64):
                    if receiver.release.wait(0.5):
                        return
                    self.wfile.write(b"x")
                    self.wfile.flush()
                return
            if receiver.delay:
                time.sleep(receiver.delay)
            status = {"ok": 200, "503": 503, "400": 400}[behaviour]
            answer = b'{"ok": true}' if status == 200 else b'{"error": "no"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    return Handler


class Server:
    """The receiver on a fixed loopback port, which can go away and come back on the same port."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self._http: ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    def up(self) -> None:
        ThreadingHTTPServer.allow_reuse_address = True
        self._http = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self.receiver))
        self._http.daemon_threads = True
        self.port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def down(self) -> None:
        assert self._http is not None
        self._http.shutdown()
        self._http.server_close()
        self._http = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jit-audit"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.release.set()


@pytest.fixture
def server(receiver: Receiver) -> Iterator[Server]:
    server = Server(receiver)
    yield server
    if server._http is not None:
        server.down()


# --- the bot's side ---------------------------------------------------------------------------------


class SteppedClock:
    """A clock the test moves: backoffs and leases pass without the test sleeping through them."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _forwarding(engine: Engine) -> Engine:
    return bind_audit_forwarding(bind_audit_key(engine, KEY))


def _forwarder(
    engine: Engine,
    server: Server,
    policy: Policy,
    clock: Callable[[], datetime],
    settings: ForwardingPolicy = STEPPED,
) -> AuditForwarder:
    announcer = Announcer(policy=policy, clock=clock, doorbell=Doorbell())
    return AuditForwarder(
        engine=engine, url=server.url, secret=SecretStr(SECRET), announcer=announcer, clock=clock, settings=settings
    )


def _write(engine: Engine, count: int, clock: Callable[[], datetime], **details: Any) -> None:
    for n in range(count):
        with session_scope(engine) as session:
            record(
                AuditEventType.VOTE_CAST, session=session, at=clock(), actor="U0ALICE", request_id="r-1", n=n, **details
            )


def _drain(forwarder: AuditForwarder, clock: SteppedClock, *, steps: int = 50) -> None:
    """Step until nothing is left to try, moving the clock past each backoff."""
    for _ in range(steps):
        if not forwarder.step():
            if forwarder.backlog() == 0:
                return
            clock.advance(5)


def _rows(engine: Engine) -> list[AuditForward]:
    with Session(engine) as session:
        return list(session.exec(select(AuditForward).order_by(col(AuditForward.seq))).all())


# --- tests --------------------------------------------------------------------------------------------


def test_the_outbox_row_is_written_in_the_events_own_transaction(engine: Engine) -> None:
    keyed = _forwarding(engine)

    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned), session_scope(keyed) as session:
        record(AuditEventType.VOTE_CAST, session=session, at=datetime.now(UTC), actor="U0ALICE", request_id=None, n=1)
        session.flush()
        raise Abandoned
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(AuditEvent)).one() == 0
        assert session.exec(select(func.count()).select_from(AuditForward)).one() == 0, "no row for a rolled-back event"

    with session_scope(keyed) as session:
        for n in range(2):
            record(
                AuditEventType.VOTE_CAST, session=session, at=datetime.now(UTC), actor="U0ALICE", request_id=None, n=n
            )
    assert [(r.seq, r.status) for r in _rows(engine)] == [(1, "pending"), (2, "pending")]

    # Without forwarding bound, events are written and nothing is queued: the option is what queues them.
    with session_scope(bind_audit_key(engine, KEY)) as session:
        record(AuditEventType.VOTE_CAST, session=session, at=datetime.now(UTC), actor="U0ALICE", request_id=None, n=3)
    assert [r.seq for r in _rows(engine)] == [1, 2]


def test_every_event_arrives_in_order_across_an_outage_and_nothing_is_lost(
    engine: Engine, server: Server, receiver: Receiver, policy: Policy
) -> None:
    clock = SteppedClock()
    keyed = _forwarding(engine)
    forwarder = _forwarder(keyed, server, policy, clock)
    _write(keyed, 2, clock)
    _drain(forwarder, clock)
    assert receiver.accepted == [1, 2]

    # The receiver answers 503 for a while: only the head is tried, nothing after it, nothing dropped.
    receiver.mode = "503"
    _write(keyed, 2, clock)
    for _ in range(4):
        assert forwarder.step()
        clock.advance(5)
    assert receiver.attempts()[2:] == [3, 3, 3, 3]
    # ... then is not there at all: the connection is refused.
    server.down()
    _write(keyed, 2, clock)
    for _ in range(3):
        assert forwarder.step()
        clock.advance(5)
    assert forwarder.backlog() == 4
    row = _rows(engine)[2]
    assert row.status == "pending" and row.attempts == 7 and row.refusals == 0 and row.alerted_at is None

    # Back: the backlog follows in order, each event once accepted, each signed.
    server.up()
    receiver.mode = "ok"
    _drain(forwarder, clock)
    assert receiver.accepted == [1, 2, 3, 4, 5, 6]
    assert forwarder.backlog() == 0
    with Session(engine) as session:
        events = list(export_events(session=session, since=None, until=None))
    accepted = [r for r in receiver.requests if r.answered == "ok"]
    assert all(r.verified for r in receiver.requests)
    for event, request in zip(events, accepted, strict=True):
        payload = json.loads(request.body)
        assert payload == {
            "seq": event.seq,
            "at": event.at.isoformat(timespec="microseconds"),
            "event_type": "vote_cast",
            "actor": "U0ALICE",
            "request_id": "r-1",
            "details": event.details,
            "prev_hash": event.prev_hash,
            "hash": event.hash,
        }
    # The receiver can check the order by itself: each event links to the one before.
    bodies = [json.loads(r.body) for r in accepted]
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(bodies, bodies[1:], strict=False))


@pytest.mark.parametrize("stall", ["silent", "drip"])
def test_a_stalling_receiver_is_cut_off_by_the_deadline_and_the_event_retried(
    engine: Engine, server: Server, receiver: Receiver, policy: Policy, stall: str
) -> None:
    clock = SteppedClock()
    keyed = _forwarding(engine)
    forwarder = _forwarder(keyed, server, policy, clock)
    _write(keyed, 2, clock)
    receiver.script = [stall]

    assert forwarder.step()
    (head, _) = _rows(engine)
    # Cut off by the total deadline, not by the receiver giving up (which would be another error).
    assert head.status == "pending" and head.attempts == 1
    assert head.last_error == "no complete answer within 1 s"

    _drain(forwarder, clock)
    assert receiver.attempts() == [1, 1, 2], "the stalled event again, then the next: at least once, in order"
    assert receiver.accepted == [1, 2]


def test_a_refusing_receiver_is_retried_a_bounded_number_of_times_then_alerted_and_forwarding_stops(
    engine: Engine, server: Server, receiver: Receiver, policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = SteppedClock()
    keyed = _forwarding(engine)
    forwarder = _forwarder(keyed, server, policy, clock)
    _write(keyed, 2, clock)
    receiver.mode = "400"

    for _ in range(10):
        forwarder.step()
        clock.advance(5)  # past every backoff, well short of refused_retry
    assert receiver.attempts() == [1, 1, 1], "max_refusals tries of the head, and nothing after it"
    head = _rows(engine)[0]
    assert head.status == "refused" and head.refusals == 3 and head.last_error == "HTTP 400"

    with Session(engine) as session:
        alerts = session.exec(select(OutboxMessage).where(col(OutboxMessage.kind) == "alert")).all()
        refused = session.exec(
            select(AuditEvent).where(col(AuditEvent.event_type) == AuditEventType.AUDIT_FORWARDING_REFUSED.value)
        ).all()
    assert [(a.channel, a.payload["alert"], a.payload["facts"]) for a in alerts] == [
        (policy.channels.audit, "audit_forwarding_refused", {"seq": 1, "status": "HTTP 400", "refusals": 3})
    ]
    assert [(e.seq, e.details) for e in refused] == [(3, {"seq": 1, "status": "HTTP 400", "refusals": 3})]
    assert [r.seq for r in _rows(engine)] == [1, 2, 3], "the refusal is itself queued, behind the refused event"

    # Stopped, not skipping: the receiver is fixed, and after refused_retry the trail resumes where it stopped.
    receiver.mode = "ok"
    clock.advance(STEPPED.refused_retry)
    _drain(forwarder, clock)
    assert receiver.accepted == [1, 2, 3]
    with Session(engine) as session:
        assert len(session.exec(select(OutboxMessage).where(col(OutboxMessage.kind) == "alert")).all()) == 1
        assert verify_chain(session=session, key=KEY).intact


def test_a_replica_that_dies_mid_send_holds_the_head_until_its_lease_ends_then_the_event_is_sent_again(
    engine: Engine, server: Server, receiver: Receiver, policy: Policy
) -> None:
    clock = SteppedClock()
    keyed = _forwarding(engine)
    _write(keyed, 2, clock)
    # A replica leased the head and died before recording the outcome (it may or may not have sent it).
    with session_scope(keyed) as session:
        dead = forward_store.claim_head(
            session=session, now=clock(), claim_id="dead-replica", lease_until=clock() + STEPPED.lease
        )
    assert dead is not None and dead.seq == 1 and dead.event.seq == 1
    forwarder = _forwarder(keyed, server, policy, clock)

    clock.advance(STEPPED.lease.total_seconds() - 1)
    assert not forwarder.step(), "the lease holds: neither the head nor anything after it is sent"
    assert receiver.requests == []

    clock.advance(1)
    _drain(forwarder, clock)
    assert receiver.accepted == [1, 2], "once the lease ends the head is sent again, then the rest"
    # The dead replica's late answer no longer counts: its claim moved on.
    with session_scope(keyed) as session:
        assert not forward_store.mark_sent(session=session, seq=1, claim_id="dead-replica", now=clock())


@pytest.mark.usefixtures("engine")  # the migrated database
def test_two_replicas_never_send_one_event_at_the_same_time(
    database_url: str, server: Server, receiver: Receiver, policy: Policy
) -> None:
    # Two forwarders as two replicas would run them: each its own engine (pool) on one database.
    engines = [_forwarding(make_engine(database_url)) for _ in range(2)]
    live = ForwardingPolicy(deadline=2.0, lease=timedelta(seconds=10), poll_interval=0.01, first_retry=0.05)
    _write(engines[0], 12, lambda: datetime.now(UTC))
    receiver.delay = 0.05  # each send lasts long enough for the other replica to try the same head
    forwarders = [_forwarder(e, server, policy, lambda: datetime.now(UTC), live) for e in engines]
    for forwarder in forwarders:
        forwarder.start()
    try:
        for _ in range(600):  # a bound, not a timing assertion: the test fails below if this runs out
            if len(receiver.accepted) >= 12:
                break
            time.sleep(0.05)
    finally:
        for forwarder in forwarders:
            forwarder.stop()
        for e in engines:
            e.dispose()
    assert receiver.overlaps == [], "no event was in flight twice at once"
    assert receiver.accepted == list(range(1, 13)), "each once, in order (no replica crashed, so no duplicate)"
    assert all(r.verified for r in receiver.requests)


def test_the_signature_verifies_only_the_untouched_request_within_the_replay_window(
    engine: Engine, server: Server, receiver: Receiver, policy: Policy
) -> None:
    clock = SteppedClock()
    keyed = _forwarding(engine)
    _write(keyed, 1, clock, reason="break-glass")
    assert _forwarder(keyed, server, policy, clock).step()
    (sent,) = receiver.requests
    secret, signed_at = SECRET.encode(), int(sent.timestamp)
    assert sent.signature.startswith("sha256=") and len(sent.signature) == 7 + 64

    assert VERIFY(secret, sent.timestamp, sent.signature, sent.body, now=signed_at + 299)
    tampered = sent.body.replace(b"break-glass", b"break-gloss")
    assert tampered != sent.body
    assert not VERIFY(secret, sent.timestamp, sent.signature, tampered, now=signed_at)
    assert not VERIFY(b"another-secret-0123456789abcdef", sent.timestamp, sent.signature, sent.body, now=signed_at)
    assert not VERIFY(secret, sent.timestamp, sent.signature, sent.body, now=signed_at + 301), "stale: a replay"
    assert not VERIFY(secret, sent.timestamp, sent.signature, sent.body, now=signed_at - 301), "from the future"
    # A replay that freshens the timestamp breaks the signature, which covers it.
    assert not VERIFY(secret, str(signed_at + 600), sent.signature, sent.body, now=signed_at + 600)


# --- settings ---------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.lower() in Settings.model_fields:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)


@pytest.mark.usefixtures("clean_env")
def test_the_webhook_url_needs_its_secret_and_the_secret_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as missing:
        load_settings(jit_audit_webhook_url="https://siem.example.com/jit")
    assert missing.value.lines == ["JIT_AUDIT_WEBHOOK_SECRET is not set (needed because JIT_AUDIT_WEBHOOK_URL is set)"]
    with pytest.raises(ConfigError) as short:
        load_settings(jit_audit_webhook_url="https://siem.example.com/jit", jit_audit_webhook_secret="sh0rt-s3cret")
    assert len(short.value.lines) == 1 and short.value.lines[0].startswith("JIT_AUDIT_WEBHOOK_SECRET is too short")
    assert "sh0rt-s3cret" not in str(short.value)
    with pytest.raises(ConfigError) as placeholder:
        load_settings(jit_audit_webhook_url="https://siem.example.com/jit", jit_audit_webhook_secret="replace-me")
    assert placeholder.value.lines[0].startswith("JIT_AUDIT_WEBHOOK_SECRET still holds a placeholder")

    settings = load_settings(jit_audit_webhook_url="https://siem.example.com/jit", jit_audit_webhook_secret=SECRET)
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert load_settings().jit_audit_webhook_url is None, "unset: nothing is forwarded, and no secret is needed"


def test_the_runtime_forwards_the_bots_own_events_when_the_url_is_set(
    database_url: str, engine: Engine, server: Server, receiver: Receiver, policy: Policy, slack: SlackStandIn
) -> None:
    from bot.runtime import build_runtime

    settings = build_settings(slack, database_url, 0, jit_audit_webhook_url=server.url, jit_audit_webhook_secret=SECRET)
    runtime = build_runtime(settings, policy, engine=engine)
    try:
        assert runtime.forwarder is not None
        with session_scope(runtime.engine) as session:
            record(AuditEventType.VOTE_CAST, session=session, at=datetime.now(UTC), actor="U0ALICE", request_id=None)
        assert runtime.forwarder.step()
    finally:
        runtime.close()
    assert receiver.accepted == [1] and receiver.requests[0].verified

    # Without the URL the bot forwards nothing and queues nothing.
    runtime = build_runtime(build_settings(slack, database_url, 0), policy, engine=make_engine(database_url))
    try:
        assert runtime.forwarder is None
        with session_scope(runtime.engine) as session:
            record(AuditEventType.VOTE_CAST, session=session, at=datetime.now(UTC), actor="U0ALICE", request_id=None)
    finally:
        runtime.close()
    assert [r.seq for r in _rows(engine)] == [1]


def test_the_commands_queue_what_they_append_when_the_url_is_set(
    engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`jit-bot audit rekey` appends an event through the commands' engine: it is forwarded like the bot's."""
    from bot.cli import _store_engine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JIT_DATABASE_URL", database_url)
    monkeypatch.setenv("JIT_AUDIT_KEY", AUDIT_KEY)
    for url, queued in (("", []), ("https://siem.example.com/jit", [2])):
        monkeypatch.setenv("JIT_AUDIT_WEBHOOK_URL", url)
        commands = _store_engine(create_key=False)
        with session_scope(commands) as session:
            now = datetime.now(UTC)
            record(AuditEventType.AUDIT_CHAIN_KEYED, session=session, at=now, actor="jit-bot", request_id=None)
        commands.dispose()
        assert [r.seq for r in _rows(engine)] == queued
