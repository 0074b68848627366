"""The revocation engine as it runs in production: real ``jit-bot serve`` processes, crashed, restarted, replicated.

Everything outside the test process is real: the console script, its database (SQLite or PostgreSQL), the
dev IdP. Slack is the wire-level stand-in. Grants are made the way people make them (a signed slash command,
a signed Approve click), and the test reads the outcome from the database, the IdP's own counters and the
Slack calls the bot made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, text
from sqlmodel import Session, col, select

from bot.demo.devidp import DevIdP
from bot.demo.slack_api import SlackStandIn
from bot.idp.keys import generate_signing_key
from bot.slack.ids import ActionId
from bot.store.db import make_engine
from bot.store.models import AccessRequest, AuditEvent, Grant
from tests.harness import SlackRequests
from tests.processes import ServeProcess, free_port, write_policy
from tests.testbot import PICKUP_LINK, dms_to
from tests.testbot import cards_posted as all_cards_posted
from tests.world import (
    APPROVER_1,
    APPROVERS_CHANNEL,
    AUDIT_CHANNEL,
    BOT_TOKEN,
    IDP_CLIENT_ID,
    IDP_CLIENT_SECRET,
    REQUESTER,
    SIGNING_SECRET,
    as_env,
    dev_idp_trusting,
    idp_values,
    lifted_quota,
    policy_data,
    serve_env,
)
from tests.world import eventually as wait_until

T = TypeVar("T")

PICKUP_REQUEST = re.compile(r"request `(R[0-9A-Z]{9})`")
LOG_LEVEL = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) ", re.MULTILINE)


class SlackTap:
    """A pass-through proxy in front of the stand-in, one per replica, so the test can tell which process
    made which Slack call (the stand-in itself cannot: both replicas send the same token)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=30)
        tap = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                answer = tap._http.post(f"{tap.upstream}{self.path}", content=body, headers=headers)
                tap._record(self.path, self.headers.get_content_type(), body)
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Retry-After"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def _record(self, path: str, content_type: str, body: bytes) -> None:
        method = path.split("?")[0].removeprefix("/api/")
        args: dict[str, Any]
        if content_type == "application/json" and body:
            args = json.loads(body)
        else:
            args = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        with self._lock:
            self.calls.append((method, args))

    def start(self) -> SlackTap:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()


@dataclass
class Deployment:
    """What every ``jit-bot serve`` process of one test shares: database, IdP, Slack, keys, policy."""

    tmp_path: Path
    slack: SlackStandIn
    idp: DevIdP
    engine: Engine
    public_port: int
    env: dict[str, str]
    secrets: list[str]
    processes: list[ServeProcess] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def start(self, name: str, port: int | None = None, **env: str) -> ServeProcess:
        port_env = {"JIT_HTTP_PORT": str(port or self.public_port)}
        process = ServeProcess(self.tmp_path, {**self.env, **env, **port_env}, name=name)
        self.processes.append(process)
        return process

    def sender(self, process: ServeProcess) -> SlackRequests:
        http = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32))
        return SlackRequests.for_standin(process.base_url, self.slack, http=http)

    @contextlib.contextmanager
    def dumped_on_failure(self) -> Iterator[None]:
        """On failure, put every process's output (and the IdP's log) into the test report."""
        try:
            yield
        except BaseException:
            for process in self.processes:
                sys.stderr.write(f"\n===== {process.name} (exit {process.process.poll()}) =====\n{process.output()}")
            with contextlib.suppress(OSError):
                sys.stderr.write(f"\n===== dev IdP =====\n{self.idp.log_path.read_text()[-5000:]}")
            raise

    def assert_no_secrets_in_output(self, *, tokens_expected: bool = True) -> None:
        if tokens_expected:
            assert self.tokens, "the test never learned a token, so it cannot check that none leaked"
        for process in self.processes:
            output = process.output()
            for n, secret in enumerate([*self.secrets, *self.tokens]):
                assert secret not in output, f"secret #{n} appears in the output of {process.name}"


@pytest.fixture
def deployment(tmp_path: Path, slack: SlackStandIn, database_url: str) -> Iterator[Deployment]:
    public_port = free_port()
    public_url = f"http://127.0.0.1:{public_port}"
    idp = dev_idp_trusting(public_url)
    idp.start()
    key_file = tmp_path / "signing-key.pem"
    pem = generate_signing_key().pem()
    key_file.write_bytes(pem)
    encryption_key = Fernet.generate_key().decode()
    # The tests mint hundreds of grants for one requester, all pending at once before the approvals.
    policy_file = write_policy(tmp_path, policy_data(**lifted_quota(1000)))
    env = serve_env(
        slack,
        database_url,
        public_port,
        JIT_PUBLIC_URL=public_url,
        JIT_POLICY_FILE=str(policy_file),
        **as_env(idp_values(idp.issuer, encryption_key=encryption_key, signing_key_file=key_file)),
    )
    # The private key's base64 body lines, each long enough to be unmistakable if it were ever printed.
    key_lines = [line for line in pem.decode().splitlines() if len(line) >= 40]
    engine = make_engine(database_url)
    found = Deployment(
        tmp_path=tmp_path,
        slack=slack,
        idp=idp,
        engine=engine,
        public_port=public_port,
        env=env,
        secrets=[BOT_TOKEN, SIGNING_SECRET, IDP_CLIENT_SECRET, encryption_key, *key_lines],
    )
    try:
        yield found
    finally:
        for process in found.processes:
            process.close()
        idp.close()
        engine.dispose()


# --- making grants the way people do --------------------------------------------------------------


def cards_posted(slack: SlackStandIn) -> dict[str, tuple[str, str]]:
    return {c.request_id: (c.channel, c.ts) for c in all_cards_posted(slack) if c.channel == APPROVERS_CHANNEL}


def rows(engine: Engine, ids: list[str]) -> dict[str, tuple[AccessRequest, Grant | None]]:
    # One statement, so both rows come from one snapshot: a revocation commits the grant and its
    # request together, and two reads under READ COMMITTED could see one before and one after.
    with Session(engine) as session:
        pairs = session.exec(
            select(AccessRequest, Grant)
            .join(Grant, col(Grant.request_id) == col(AccessRequest.id), isouter=True)
            .where(col(AccessRequest.id).in_(ids))
        ).all()
        return {r.id: (r, g) for r, g in pairs}


def statuses(engine: Engine, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    return {rid: (r.status, g.status if g else None) for rid, (r, g) in rows(engine, ids).items()}


def mint(dep: Deployment, sender: SlackRequests, durations: list[str], *, threads: int) -> list[str]:
    """``/jit request`` for each duration, an approver clicks Approve on each card, and wait for ``active``."""
    before = set(cards_posted(dep.slack))

    def slash(n_duration: tuple[int, str]) -> None:
        n, duration = n_duration
        response, _key, _trigger = sender.slash(REQUESTER, f"request prod-db read {duration} drill {n}")
        assert response.status_code == 200, response.text

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(slash, enumerate(durations)))
    cards = wait_until(
        lambda: (
            (new := {k: v for k, v in cards_posted(dep.slack).items() if k not in before})
            and len(new) == len(durations)
            and new
        ),
        timeout=30 + len(durations) / 5,
        what=f"{len(durations)} approval cards",
    )
    ids = sorted(cards)
    # Votes update the card, so its coordinates must be stored before the click.
    wait_until(
        lambda: all(r.card_ts is not None for r, _g in rows(dep.engine, ids).values()),
        timeout=10,
        what="card coordinates in the database",
    )

    def approve(request_id: str) -> None:
        channel, ts = cards[request_id]
        response, _key = sender.click(APPROVER_1, ActionId.APPROVE, request_id, channel=channel, ts=ts)
        assert response.status_code == 200, response.text

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(approve, ids))

    def settled() -> dict[str, tuple[str, str | None]] | None:
        now = statuses(dep.engine, ids)
        return now if all(s in ("active", "failed", "revoked") for s, _g in now.values()) else None

    final = wait_until(settled, timeout=30 + len(ids) / 5, what="every approved request to be minted")
    # Revoked is fine too: in a big batch the first grants may run out while the last are minted.
    assert {s for s, _g in final.values()} <= {"active", "revoked"}, Counter(s for s, _g in final.values())
    return ids


class Picker:
    """The requester, fetching each pickup link once (as JSON) as soon as it arrives in a DM.

    Runs beside the minting, so a grant's token is fetched within moments of its activation however long
    the whole batch takes to mint.
    """

    def __init__(self, dep: Deployment, *, threads: int) -> None:
        self._dep = dep
        self._pool = ThreadPoolExecutor(threads)
        self._http = httpx.Client(timeout=15, limits=httpx.Limits(max_connections=threads * 2))
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.tokens: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            for dm in dms_to(self._dep.slack, REQUESTER, accepted=False):
                link, request = PICKUP_LINK.search(dm), PICKUP_REQUEST.search(dm)
                if link and request and request.group(1) not in self._seen:
                    self._seen.add(request.group(1))
                    self._pool.submit(self._fetch, request.group(1), link.group(1))

    def _fetch(self, request_id: str, url: str) -> None:
        try:
            assert url.startswith(f"{self._dep.public_url}/pickup/"), url
            answer = self._http.get(url, headers={"Accept": "application/json"})
            outcome = (True, str(answer.json()["access_token"])) if answer.status_code == 200 else (False, answer.text)
        except Exception as exc:  # reported by wait(), not lost in the pool
            outcome = (False, repr(exc))
        with self._lock:
            if outcome[0]:
                self.tokens[request_id] = outcome[1]
                self._dep.tokens.append(outcome[1])
            else:
                self.refused[request_id] = outcome[1]

    def wait(self, ids: list[str], timeout: float = 20) -> dict[str, str]:
        def done() -> bool:
            with self._lock:
                return set(ids) <= set(self.tokens) | set(self.refused)

        wait_until(done, timeout=timeout, what="a picked-up token for every grant")
        with self._lock:
            assert {rid: self.refused[rid] for rid in ids if rid in self.refused} == {}, "pickups refused"
            tokens = {rid: self.tokens[rid] for rid in ids}
        assert len(set(tokens.values())) == len(ids), "every grant has its own token"
        return tokens

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True)
        self._http.close()


def introspect(idp: DevIdP, token: str) -> dict[str, Any]:
    endpoint = httpx.get(idp.discovery_url, timeout=5).json()["introspection_endpoint"]
    # RFC 6749 2.3.1: client id and secret are form-encoded before they go into HTTP Basic.
    auth = (quote(IDP_CLIENT_ID, safe=""), quote(IDP_CLIENT_SECRET, safe=""))
    answer = httpx.post(endpoint, data={"token": token}, auth=auth, timeout=5)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def revoked_updates(calls: list[tuple[str, dict[str, Any]]], request_id: str) -> int:
    return sum(
        1
        for method, args in calls
        if method == "chat.update"
        and str(args.get("text", "")).startswith(f"Access request {request_id}:")
        and "Revoked" in str(args.get("text"))
    )


def revoked_dms(slack: SlackStandIn, request_id: str) -> int:
    dms = dms_to(slack, REQUESTER, f"`{request_id}`", accepted=False)
    return sum(1 for text in dms if "revoked at the IdP" in text)


def audit_summaries(slack: SlackStandIn, request_id: str) -> int:
    return sum(
        1
        for c in slack.calls_to("chat.postMessage")
        if c.args.get("channel") == AUDIT_CHANNEL and str(c.args.get("text")).startswith(f"[revoked] `{request_id}`")
    )


def revoked_events(engine: Engine, ids: list[str]) -> Counter[str]:
    with Session(engine) as session:
        events = session.exec(
            select(AuditEvent).where(col(AuditEvent.request_id).in_(ids), AuditEvent.event_type == "grant_revoked")
        ).all()
        return Counter(str(e.request_id) for e in events)


def revoked_card(dep: Deployment, request_id: str) -> bool:
    request, _grant = rows(dep.engine, [request_id])[request_id]
    card = dep.slack.message(str(request.card_channel), str(request.card_ts))
    return "Revoked" in json.dumps(card["blocks"])


def standin_calls(slack: SlackStandIn) -> list[tuple[str, dict[str, Any]]]:
    return [(c.method, c.args) for c in slack.calls if c.ok]


def assert_clean(process: ServeProcess, code: int) -> None:
    output = process.output()
    assert code == 0, f"{process.name} exited with {code}"
    assert "Finished server process" in output, f"{process.name} did not shut down gracefully"
    assert "Traceback" not in output, f"{process.name} printed a traceback"


# --- the tests ------------------------------------------------------------------------------------


def test_grants_expired_while_down_are_revoked_by_the_restarted_process(deployment: Deployment) -> None:
    dep = deployment
    with dep.dumped_on_failure():
        first = dep.start("first")
        first.wait_healthy()
        sender = dep.sender(first)
        picker = Picker(dep, threads=5)
        try:
            ids = mint(dep, sender, ["6s", "6s", "7s", "7s", "8s"], threads=5)
            tokens = picker.wait(ids)
        finally:
            picker.close()
            sender.http.close()
        assert all(introspect(dep.idp, token)["active"] is True for token in tokens.values())

        assert statuses(dep.engine, ids) == dict.fromkeys(ids, ("active", "active")), "all live at the crash"
        first.kill()

        expiries = {rid: g.expires_at for rid, (_r, g) in rows(dep.engine, ids).items() if g is not None}
        time.sleep(max(0.0, (max(expiries.values()) - datetime.now(UTC)).total_seconds()) + 1.0)
        # Nobody was around to revoke them: the restart has to.
        assert statuses(dep.engine, ids) == dict.fromkeys(ids, ("active", "active"))
        assert dep.idp.stats()["revocations"] == {}

        t0 = datetime.now(UTC)
        second = dep.start("second")

        def all_revoked() -> dict[str, tuple[AccessRequest, Grant | None]] | None:
            now = rows(dep.engine, ids)
            return now if all(g is not None and g.status == "revoked" for _r, g in now.values()) else None

        # Poll longer than the promise, so a slow revocation fails on the lag it had, not on a timeout.
        done = wait_until(all_revoked, timeout=30, what="every grant to be revoked after the restart")
        lags = {}
        for request_id, (request, grant) in done.items():
            assert grant is not None and grant.revoked_at is not None
            assert request.status == "revoked"
            assert grant.revoked_at >= expiries[request_id], "never revoked before its expiry"
            assert grant.revoked_at >= t0, "revoked by the restarted process, not before the crash"
            lags[request_id] = (grant.revoked_at - t0).total_seconds()
            assert grant.token_ciphertext is None, "the stored token is wiped"
        # How soon is measured, not asserted: it includes the interpreter's start, which on a loaded
        # machine alone takes seconds. The figure is printed (pytest -s shows it).
        sys.stdout.write(f"\nrevoked {min(lags.values()):.2f}s to {max(lags.values()):.2f}s after the restart\n")

        # Exactly one revocation per token at the IdP, and the IdP agrees they are dead.
        assert dep.idp.stats()["revocations"] == {sha256(token): 1 for token in tokens.values()}
        assert all(introspect(dep.idp, token) == {"active": False} for token in tokens.values())

        # Cards say Revoked; the requester is told once, the audit channel once, the audit trail once.
        second.wait_healthy()
        wait_until(lambda: all(revoked_dms(dep.slack, r) for r in ids), timeout=10, what="the 'revoked' DMs")
        wait_until(lambda: all(audit_summaries(dep.slack, r) for r in ids), timeout=10, what="the audit summaries")
        # Card updates share the approver channel, which the bot paces the way Slack asks (about one a second).
        wait_until(lambda: all(revoked_card(dep, r) for r in ids), timeout=20, what="every card to say Revoked")
        time.sleep(2.5)  # a full sweep interval: a duplicate announcement would show up now
        calls = standin_calls(dep.slack)
        for request_id in ids:
            request, _grant = rows(dep.engine, [request_id])[request_id]
            card = dep.slack.message(str(request.card_channel), str(request.card_ts))
            assert "Revoked" in json.dumps(card["blocks"]), card
            assert "Revoke now" not in json.dumps(card["blocks"]), "no button on an ended grant"
            assert revoked_updates(calls, request_id) == 1
            assert revoked_dms(dep.slack, request_id) == 1
            assert audit_summaries(dep.slack, request_id) == 1
        assert revoked_events(dep.engine, ids) == Counter(dict.fromkeys(ids, 1))
        assert dep.slack.rejected() == []

        assert_clean(second, second.terminate())
        assert not LOG_LEVEL.search(second.output()), "the restarted process logged an error"
        dep.assert_no_secrets_in_output()


REPLICA_GRANTS = 200
# 200 grants expiring within a few seconds drain at about 25 a second (README, revocation_lag.py).
REPLICA_LAG_BOUND = timedelta(seconds=20)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_replicas_revoke_each_grant_exactly_once(deployment: Deployment) -> None:
    dep = deployment
    taps = {name: SlackTap(dep.slack.base_url).start() for name in ("A", "B")}
    try:
        with dep.dumped_on_failure():
            # One after the other: see test_replicas_started_together_on_a_fresh_database for why.
            replica_a = dep.start("replica-A", SLACK_API_URL=taps["A"].api_url)
            replica_a.wait_healthy()
            replica_b = dep.start("replica-B", free_port(), SLACK_API_URL=taps["B"].api_url)
            replica_b.wait_healthy()

            # Half the grants are made through each replica, so each arms the timers of its own.
            senders = [dep.sender(replica_a), dep.sender(replica_b)]
            picker = Picker(dep, threads=16)
            started = time.monotonic()
            try:
                half = REPLICA_GRANTS // 2
                ids = [
                    *mint(dep, senders[0], ["20s"] * half, threads=16),
                    *mint(dep, senders[1], ["20s"] * (REPLICA_GRANTS - half), threads=16),
                ]
                minted_in = time.monotonic() - started
                tokens = picker.wait(ids)
            finally:
                picker.close()
                for sender in senders:
                    sender.http.close()
            expiries = [g.expires_at for _r, g in rows(dep.engine, ids).values() if g is not None]

            def all_revoked() -> bool:
                return set(statuses(dep.engine, ids).values()) == {("revoked", "revoked")}

            wait_until(all_revoked, timeout=60, what="all grants revoked", interval=0.2)
            wait_until(lambda: all(audit_summaries(dep.slack, r) for r in ids), timeout=20, what="the summaries")
            time.sleep(2.5)  # a full sweep interval on both replicas: a second revocation would show up now

            revocations = dep.idp.stats()["revocations"]
            assert sum(revocations.values()) == REPLICA_GRANTS
            assert revocations == {sha256(token): 1 for token in tokens.values()}
            assert revoked_events(dep.engine, ids) == Counter(dict.fromkeys(ids, 1))
            calls = standin_calls(dep.slack)
            for request_id in ids:
                assert revoked_updates(calls, request_id) == 1, request_id
                assert revoked_dms(dep.slack, request_id) == 1, request_id
                assert audit_summaries(dep.slack, request_id) == 1, request_id
            for _request, grant in rows(dep.engine, ids).values():
                assert grant is not None and grant.revoked_at is not None and grant.token_ciphertext is None
                assert grant.revoked_at >= grant.expires_at
                # A batch this size expiring within seconds queues behind the workers: bounded, not instant.
                assert grant.revoked_at - grant.expires_at < REPLICA_LAG_BOUND
            assert dep.slack.rejected() == []

            # Who did the work: each replica's Slack calls went through its own tap. A revocation's card is
            # queued in its transaction and its own replica's outbox is woken at once (the other one only
            # polls), so the split is each replica's share of the revocations. How even it is depends on
            # timing; that both did some is what two replicas are for.
            split = {name: sum(revoked_updates(tap.calls, rid) for rid in ids) for name, tap in taps.items()}
            assert sum(split.values()) == REPLICA_GRANTS
            assert split["A"] > 0 and split["B"] > 0, split
            spread = (max(expiries) - min(expiries)).total_seconds()
            sys.stdout.write(
                f"\n{REPLICA_GRANTS} grants minted in {minted_in:.1f}s, expiring within {spread:.1f}s; "
                f"revocations announced by replica A: {split['A']}, replica B: {split['B']}\n"
            )

            code_a, code_b = replica_a.terminate(), replica_b.terminate()
            assert_clean(replica_a, code_a)
            assert_clean(replica_b, code_b)
            for replica in (replica_a, replica_b):
                assert not LOG_LEVEL.search(replica.output()), f"{replica.name} logged an error"
            dep.assert_no_secrets_in_output()
    finally:
        for tap in taps.values():
            tap.stop()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_replicas_started_together_on_a_fresh_database(deployment: Deployment) -> None:
    """A Deployment with ``replicas: 2`` rolls out both pods at once, and each migrates before serving."""
    dep = deployment
    with dep.dumped_on_failure(), dep.engine.connect() as gate:
        # Make the race certain instead of likely: an uncommitted alembic_version table is invisible to both
        # replicas' "does it exist?" check, and blocks their CREATE TABLE until the gate rolls back. (With
        # migrations serialised, the second replica waits on that lock instead; both count as waiting.)
        gate.begin()
        gate.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        replicas = [dep.start("replica-A"), dep.start("replica-B", free_port())]
        with dep.engine.connect() as watcher:

            def both_waiting() -> bool:
                for replica in replicas:
                    assert replica.process.poll() is None, f"{replica.name} exited early"
                waiting = watcher.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
                watcher.rollback()  # pg_stat_activity is a snapshot taken once per transaction
                return waiting == len(replicas)

            wait_until(both_waiting, timeout=30, what="both replicas to be migrating")
        gate.rollback()
        for replica in replicas:
            replica.wait_healthy()
        for replica in replicas:
            assert_clean(replica, replica.terminate())
        dep.assert_no_secrets_in_output(tokens_expected=False)
