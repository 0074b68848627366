"""Mint latency: Approve click -> token exchanged at the dev IdP -> stored encrypted -> card updated.

Starts the app as the tests do (in-process uvicorn on loopback, the Slack Web API stand-in, the dev
IdP from devidp/ as a subprocess), creates ``--grants`` pending requests, then approves them one at a
time (or ``--concurrency`` at a time) and measures, for each, the wall time from sending the signed
Approve click to the moment the stand-in receives the ``chat.update`` that shows the card as Active.
That span covers the guarded transition, the subject assertion, the RFC 8693 exchange (including the
IdP fetching the bot's JWKS), the checks on the answer, the encrypted insert and the card update.

    .venv/bin/python benchmarks/mint_latency.py [--grants 200] [--concurrency 1] [--database-url URL]

Prints one JSON line: grants, p50_ms, p99_ms, max_ms, exchanges (as counted by the IdP), errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cryptography.fernet import Fernet  # noqa: E402

from benchmarks.common import bot_in_process, workspace  # noqa: E402
from bot.demo.devidp import DevIdP  # noqa: E402
from bot.demo.slack_api import Call  # noqa: E402
from bot.idp.keys import generate_signing_key  # noqa: E402
from bot.services.delivery import DeliveryPolicy  # noqa: E402
from bot.slack.ids import ActionId  # noqa: E402
from tests.harness import free_socket  # noqa: E402
from tests.testbot import Bot, card_of  # noqa: E402
from tests.world import (  # noqa: E402
    APPROVER_1,
    CARD_ID,
    REQUESTER,
    dev_idp_trusting,
    idp_values,
    lifted_quota,
    make_policy,
    scratch_database,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grants", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    workdir = Path(tempfile.mkdtemp(prefix="jit-mint-bench-"))
    with scratch_database(args.database_url, workdir) as url:
        return run(args, workdir, url)


def run(args: argparse.Namespace, workdir: Path, database_url: str) -> int:
    key_file = workdir / "signing-key.pem"
    key_file.write_bytes(generate_signing_key().pem())
    total = args.grants + 5  # a few to warm up the IdP, the JWKS path and the connection pools
    # All requests are pending at once, so the per-requester quota is lifted; and the stand-in does
    # not rate-limit, so neither does the bot: this measures the bot, not Slack's pace.
    policy = make_policy(**lifted_quota(total))
    unpaced = DeliveryPolicy(channel_burst=100_000, channel_per_second=100_000.0)
    sock = free_socket()
    public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    idp = dev_idp_trusting(public_url).start()
    try:
        with (
            workspace() as slack,
            bot_in_process(
                slack,
                database_url,
                policy,
                unpaced,
                sock=sock,
                **idp_values(idp.issuer, encryption_key=Fernet.generate_key().decode(), signing_key_file=key_file),
            ) as bot,
        ):
            return measure(args, bot, idp, total)
    finally:
        idp.close()


def measure(args: argparse.Namespace, bot: Bot, idp: DevIdP, total: int) -> int:
    slack, send = bot.slack, bot.send
    cards: dict[str, tuple[str, str]] = {}
    active_at: dict[str, float] = {}
    done: dict[str, threading.Event] = {}
    lock = threading.Lock()

    def observe(call: Call) -> None:
        text = str(call.args.get("text", ""))
        match = CARD_ID.search(text)
        if not call.ok or match is None:
            return
        request_id = match.group(1)
        with lock:
            if card := card_of(call):
                cards[request_id] = (card.channel, card.ts)
            elif call.method == "chat.update" and "Active" in text and request_id not in active_at:
                active_at[request_id] = time.perf_counter()
                if request_id in done:
                    done[request_id].set()

    slack.observers.append(observe)
    for n in range(total):
        send.slash(REQUESTER, f"request prod-db read 30m bench {n}")
    deadline = time.monotonic() + 60
    while len(cards) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    if len(cards) < total:
        print(f"only {len(cards)} of {total} cards were posted", file=sys.stderr)
        return 1
    ids = list(cards)
    latencies: list[float] = []
    errors = 0

    def approve(request_id: str, measured: bool) -> None:
        nonlocal errors
        with lock:
            event = done.setdefault(request_id, threading.Event())
        channel, ts = cards[request_id]
        started = time.perf_counter()
        response, _ = send.click(APPROVER_1, ActionId.APPROVE, request_id, channel=channel, ts=ts)
        if response.status_code != 200 or not event.wait(timeout=20):
            errors += 1
            return
        if measured:
            latencies.append((active_at[request_id] - started) * 1000)

    for request_id in ids[:5]:
        approve(request_id, measured=False)
    exchanges_before = idp.stats()["exchanges"]
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        list(pool.map(lambda rid: approve(rid, measured=True), ids[5:]))
    exchanges = idp.stats()["exchanges"] - exchanges_before
    result = {
        "grants": args.grants,
        "concurrency": args.concurrency,
        "database": bot.engine.dialect.name,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "exchanges": exchanges,
        "errors": errors,
    }
    print(json.dumps(result))
    return 0 if errors == 0 and exchanges == args.grants else 1


if __name__ == "__main__":
    sys.exit(main())
