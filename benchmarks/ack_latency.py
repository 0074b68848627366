"""Acknowledgement latency of the served app under concurrent Slack traffic.

Starts the app as the tests do (``build_runtime`` + ``ServedApp`` on loopback, talking to the Slack
Web API stand-in), warms it up, then sends Slack-signed slash commands and Approve / Deny clicks from
``--clients`` concurrent clients, each with its own ``httpx.Client``. Every request's wall time from
send to full response is what Slack waits for: the acknowledgement latency.

    .venv/bin/python benchmarks/ack_latency.py [--requests 1000] [--clients 20] [--database-url URL]

The traffic is about half ``/jit request prod-db read 30m …`` (stores a request and posts a card in the
background), half clicks by approvers on cards that exist (warm-up cards and cards posted earlier in
the run; the first Approve on a card decides it, later clicks are acked and then refused ephemerally;
a Deny on a pending card opens the reason modal), and a few ``/jit help`` and malformed commands.

After the timed part it waits (bounded by ``--drain-timeout``) until the background work for every
request has reached the stand-in, so the figures are for work that really happened.

By default the bot is the real ``jit-bot serve`` in its own process; with ``--in-process`` it is
served in this process as the tests serve it, on a socket bound as ``jit-bot serve`` binds its own
(TCP_NODELAY on every connection), and everything (app, stand-in, clients) shares one process and its
GIL, as in the tests. ``cpu_cores``
(process CPU during the timed part) and ``gc_max_pause_ms`` (longest stop-the-world collection) are
printed to help read the latencies.

Prints exactly one JSON line on stdout; everything else goes to stderr. Exits 1 if any request was
not answered with HTTP 200 or the background work did not drain.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from benchmarks.common import BENCH_POLICY, bot_in_process, workspace  # noqa: E402
from bot.demo.signing import signed_headers  # noqa: E402
from bot.demo.slack_api import SlackStandIn  # noqa: E402
from bot.services.delivery import DeliveryPolicy  # noqa: E402
from bot.slack.ids import ActionId  # noqa: E402
from tests.harness import SlackRequests  # noqa: E402
from tests.processes import ServeProcess, free_port, write_policy  # noqa: E402
from tests.testbot import Card, card_of  # noqa: E402
from tests.world import APPROVER_1, APPROVER_2, REQUESTER, SIGNING_SECRET, make_policy, serve_env  # noqa: E402

SUBMITTED_ID = re.compile(r"Request `(R[0-9A-Z]{9})`")

# Share of the timed requests of each kind; the rest of the clicks are Approve.
SLASH_SHARE = 0.475
OTHER_SHARE = 0.05  # /jit help and malformed commands: acked with text, no background work
DENY_SHARE_OF_CLICKS = 0.1
OTHER_COMMANDS = ("help", "request prod-db read 99h too long", "request prod-db sudo 30m no such scope", "frobnicate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="timed requests (default 1000)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="database to use (it is migrated first); default: a SQLite file in a temporary directory",
    )
    parser.add_argument("--warmup", type=int, default=40, help="untimed slash commands whose cards seed the clicks")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to wait for background work")
    parser.add_argument("--seed", type=int, default=1, help="seed for the request mix")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests per second, sent at a steady rate (open loop); default: as fast as the bot answers",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="serve the app inside this process, as the tests do, instead of a `jit-bot serve` subprocess",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.clients < 1 or args.warmup < 1:
        parser.error("--requests, --clients and --warmup must be at least 1")
    return args


# --- the app under test --------------------------------------------------------------------------


@dataclass
class Stack:
    base_url: str
    slack: SlackStandIn
    send: SlackRequests
    backend: str


@contextmanager
def running_stack(database_url: str | None) -> Iterator[Stack]:
    """The stand-in, a migrated database and the served app, as the tests' ``bot`` fixture builds them."""
    with tempfile.TemporaryDirectory(prefix="jit-bench-") as tmp, workspace() as slack:
        url = database_url or f"sqlite:///{Path(tmp) / 'jit.db'}"
        # The stand-in does not rate-limit, so the bot need not pace itself: this measures the bot.
        with bot_in_process(slack, url, make_policy(**BENCH_POLICY), DeliveryPolicy.for_rate(1000)) as bot:
            yield Stack(bot.served.base_url, slack, bot.send, make_url(url).get_backend_name())


@contextmanager
def bot_process(database_url: str | None) -> Iterator[Stack]:
    """The real ``jit-bot serve`` in its own process, as deployed; Slack (the stand-in) and the load
    generator stay in this process, so they do not compete with the bot for its interpreter lock."""
    with tempfile.TemporaryDirectory(prefix="jit-bench-") as tmp, workspace() as slack:
        url = database_url or f"sqlite:///{Path(tmp) / 'jit.db'}"
        policy_file = write_policy(Path(tmp), BENCH_POLICY)
        process = ServeProcess(Path(tmp), serve_env(slack, url, free_port(), JIT_POLICY_FILE=str(policy_file)))
        try:
            process.wait_healthy(timeout=30)
            send = SlackRequests.for_standin(process.base_url, slack)
            try:
                yield Stack(process.base_url, slack, send, make_url(url).get_backend_name())
            finally:
                send.http.close()
        finally:
            process.stop()


# --- what the stand-in has seen ------------------------------------------------------------------


@dataclass
class Tracker:
    """Follows the stand-in's records, incrementally: which cards can be clicked, and what is done.

    A card is clickable once the requester's "sent for approval" reply has arrived: that is sent after
    the card's coordinates are stored, so a vote on it will update the card.

    A submitted request is done when its card is posted and the requester has had that reply. A click
    is done with exactly one of: the card updated (an accepted Approve), the Deny modal opened (an
    accepted Deny), or an ephemeral refusal on the click's response_url.
    """

    slack: SlackStandIn
    slash_keys: set[str] = field(default_factory=set)
    click_keys: set[str] = field(default_factory=set)
    done: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _posted: dict[str, Card] = field(default_factory=dict)
    _replied: set[str] = field(default_factory=set)
    _ready: list[Card] = field(default_factory=list)
    _fresh: deque[Card] = field(default_factory=deque)
    _calls_seen: int = 0
    _responses_seen: int = 0

    def expect(self, key: str, *, click: bool) -> None:
        """Note a response_url key handed out with a request, so its answers can be told apart."""
        with self._lock:
            (self.click_keys if click else self.slash_keys).add(key)

    def poll(self) -> None:
        calls = self.slack.calls
        responses = self.slack.responses
        with self._lock:
            for call in calls[self._calls_seen :]:
                if not call.ok:
                    self.done["slack_errors"] += 1
                elif call.method == "chat.update":
                    self.done["votes_accepted"] += 1
                elif call.method == "views.open":
                    self.done["deny_modals"] += 1
                elif card := card_of(call):
                    self.done["cards"] += 1
                    self._posted[card.request_id] = card
            self._calls_seen = len(calls)
            for response in responses[self._responses_seen :]:
                if response.key in self.click_keys:
                    self.done["clicks_refused"] += 1
                elif response.key in self.slash_keys:
                    self.done["submit_replies"] += 1
                    match = SUBMITTED_ID.search(str(response.payload.get("text", "")))
                    if response.ok and match:
                        self._replied.add(match.group(1))
            self._responses_seen = len(responses)
            for request_id in sorted(self._replied & self._posted.keys()):
                card = self._posted.pop(request_id)
                self._replied.discard(request_id)
                self._ready.append(card)
                self._fresh.append(card)

    def drained(self, sent: Counter[str]) -> bool:
        self.poll()
        with self._lock:
            done = self.done
            clicks_done = done["votes_accepted"] + done["deny_modals"] + done["clicks_refused"]
            return (
                done["cards"] >= sent["slash"]
                and done["submit_replies"] >= sent["slash"]
                and clicks_done >= sent["approve"] + sent["deny"]
            )

    def pick(self, rng: random.Random) -> Card:
        """A card nobody has clicked yet if there is one (the vote path), else any ready card."""
        with self._lock:
            if self._fresh:
                return self._fresh.popleft()
            return rng.choice(self._ready)

    def ready_count(self) -> int:
        with self._lock:
            return len(self._ready)

    @contextmanager
    def following(self, interval: float = 0.02) -> Iterator[None]:
        """Poll in the background, so cards posted during the run become clickable."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval):
                self.poll()

        thread = threading.Thread(target=run, name="bench-tracker", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.poll()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Load:
    """Builds signed requests for one kind of traffic; shared by every client."""

    send: SlackRequests
    tracker: Tracker
    sent: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _serial: int = 0

    def build(self, kind: str, rng: random.Random) -> tuple[str, dict[str, str]]:
        """A signed (body, headers) pair, built before the clock starts."""
        with self._lock:
            self._serial += 1
            serial = self._serial
        if kind == "slash":
            body, key, _trigger = self.send.command_body(REQUESTER, f"request prod-db read 30m bench {serial}")
            self.tracker.expect(key, click=False)
        elif kind == "other":
            body, _key, _trigger = self.send.command_body(REQUESTER, OTHER_COMMANDS[serial % len(OTHER_COMMANDS)])
        else:
            card = self.tracker.pick(rng)
            voter = APPROVER_1 if rng.random() < 0.5 else APPROVER_2
            action = ActionId.APPROVE if kind == "approve" else ActionId.DENY
            payload, key = self.send.click_payload(voter, action, card.request_id, channel=card.channel, ts=card.ts)
            body = self.send.payload_body(payload)
            self.tracker.expect(key, click=True)
        with self._lock:
            self.sent[kind] += 1
        headers = signed_headers(SIGNING_SECRET, body, content_type="application/x-www-form-urlencoded")
        return body, headers


@dataclass
class Sample:
    kind: str
    seconds: float
    status: int | None
    error: str | None = None


def plan(requests: int, rng: random.Random) -> list[str]:
    kinds: list[str] = []
    for _ in range(requests):
        roll = rng.random()
        if roll < OTHER_SHARE:
            kinds.append("other")
        elif roll < OTHER_SHARE + SLASH_SHARE:
            kinds.append("slash")
        else:
            kinds.append("deny" if rng.random() < DENY_SHARE_OF_CLICKS else "approve")
    return kinds


def drive(
    load: Load, url: str, kinds: list[str], clients: int, seed: int, rate: float | None = None
) -> tuple[list[Sample], float, float]:
    """``clients`` threads take the next request from ``kinds`` until none are left.

    Without ``rate`` each client sends as soon as its previous answer arrived (closed loop: the bot's
    full throughput, latency mostly queueing). With ``rate`` request i is sent at i / rate seconds
    (open loop: a steady arrival rate, as traffic from people arrives), by whichever client is free.

    Returns every sample, the wall time from the first send to the last response, and the CPU time
    the whole process used meanwhile.
    """
    samples: list[Sample] = []
    samples_lock = threading.Lock()
    next_index = iter(range(len(kinds)))
    index_lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        mine: list[Sample] = []
        try:
            with httpx.Client(timeout=30) as http:
                start.wait()
                while True:
                    with index_lock:
                        index = next(next_index, None)
                    if index is None:
                        break
                    kind = kinds[index]
                    body, headers = load.build(kind, rng)
                    if rate is not None:
                        time.sleep(max(0.0, epoch[0] + index / rate - time.perf_counter()))
                    began = time.perf_counter()
                    try:
                        response = http.post(url, content=body, headers=headers)
                        elapsed = time.perf_counter() - began
                    except httpx.HTTPError as exc:
                        mine.append(Sample(kind, time.perf_counter() - began, None, f"{type(exc).__name__}: {exc}"))
                        continue
                    error = None
                    if response.status_code != 200:
                        error = f"HTTP {response.status_code}: {response.text[:200]}"
                    mine.append(Sample(kind, elapsed, response.status_code, error))
        finally:  # a client that died still reports what it did; main() counts what is missing
            with samples_lock:
                samples.extend(mine)

    epoch = [0.0]
    threads = [threading.Thread(target=client, args=(n,), name=f"bench-client-{n}") for n in range(clients)]
    for thread in threads:
        thread.start()
    epoch[0] = time.perf_counter() + 0.01
    start.wait()
    began, cpu_began = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    return samples, time.perf_counter() - began, time.process_time() - cpu_began


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else float("nan"),
    }


def warm_up(stack: Stack, load: Load, tracker: Tracker, count: int, timeout: float) -> None:
    """Untimed: ``count`` requests with their cards, a few clicks on them, all background work done."""
    rng = random.Random(0)
    url = f"{stack.base_url}/slack/events"
    with httpx.Client(timeout=30) as http:

        def post(kind: str) -> None:
            body, headers = load.build(kind, rng)
            response = http.post(url, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"warm-up {kind} answered HTTP {response.status_code}: {response.text[:200]}")

        for _ in range(count):
            post("slash")
        for kind in ("other", "other"):
            post(kind)
        if not wait_until(lambda: (tracker.poll(), tracker.ready_count())[1] >= count, timeout):
            raise RuntimeError(f"warm-up: only {tracker.ready_count()} of {count} cards were posted in {timeout}s")
        for kind in ("approve", "approve", "approve", "deny", "approve", "deny"):
            post(kind)
    if not wait_until(lambda: tracker.drained(load.sent), timeout):
        raise RuntimeError(f"warm-up: the background work did not finish in {timeout}s: {dict(tracker.done)}")
    # Cards clicked during warm-up are decided; untouched ones stay first in line for the timed part.


@contextmanager
def gc_pauses() -> Iterator[list[float]]:
    """Durations of the garbage collections that run inside the block (each one stops every thread)."""
    pauses: list[float] = []
    started: list[float] = []

    def callback(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append(time.perf_counter() - started.pop())

    gc.callbacks.append(callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(callback)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    rng = random.Random(args.seed)
    stack_cm = running_stack(args.database_url) if args.in_process else bot_process(args.database_url)
    with stack_cm as stack:
        tracker = Tracker(stack.slack)
        load = Load(send=stack.send, tracker=tracker)
        warm_up(stack, load, tracker, args.warmup, args.drain_timeout)
        sent_before = Counter(load.sent)
        print(f"warm-up done: {tracker.ready_count()} cards; timing {args.requests} requests", file=sys.stderr)

        kinds = plan(args.requests, rng)
        with tracker.following():
            with gc_pauses() as pauses:
                url = f"{stack.base_url}/slack/events"
                samples, wall, cpu_seconds = drive(load, url, kinds, args.clients, args.seed, args.rate)
            drain_began = time.perf_counter()
            drained = wait_until(lambda: tracker.drained(load.sent), args.drain_timeout)
            drain_seconds = time.perf_counter() - drain_began
        done = Counter(tracker.done)
        backend = stack.backend

    errors = [s for s in samples if s.error is not None]
    for sample in errors[:10]:
        print(f"error ({sample.kind}): {sample.error}", file=sys.stderr)
    unsent = len(kinds) - len(samples)  # a client thread that died (its traceback is on stderr)
    timed = load.sent - sent_before
    by_kind = {
        kind: {"n": len(times), **summary(times)}
        for kind in ("slash", "approve", "deny", "other")
        if (times := [s.seconds for s in samples if s.kind == kind])
    }
    result: dict[str, Any] = {
        "requests": len(samples),
        "clients": args.clients,
        **summary([s.seconds for s in samples]),
        "rps": round(len(samples) / wall, 1),
        "offered_rate": args.rate,
        "errors": len(errors) + unsent,
        "database": backend,
        "mix": {kind: timed[kind] for kind in ("slash", "approve", "deny", "other")},
        "by_kind": by_kind,
        # Diagnostics for the timed part: CPU of the whole process (app, stand-in and clients share it)
        # in cores, and the longest stop-the-world garbage collection.
        "cpu_cores": round(cpu_seconds / wall, 2),
        # Only meaningful with --in-process: otherwise it is this load generator's own collector.
        "gc_max_pause_ms": round(max(pauses, default=0.0) * 1000, 1) if args.in_process else None,
        "mode": "in-process" if args.in_process else "jit-bot serve subprocess",
        "background_drained": drained,
        "drain_s": round(drain_seconds, 2),
        # Totals since start, warm-up included: what the background work did at the stand-in.
        "slash_sent": load.sent["slash"],
        "clicks_sent": load.sent["approve"] + load.sent["deny"],
        "cards": done["cards"],
        "votes_accepted": done["votes_accepted"],
        "deny_modals": done["deny_modals"],
        "clicks_refused": done["clicks_refused"],
        "slack_errors": done["slack_errors"],
    }
    print(json.dumps(result), flush=True)
    return 0 if not errors and not unsent and drained else 1


if __name__ == "__main__":
    sys.exit(main())
