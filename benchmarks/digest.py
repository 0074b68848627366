"""The daily digest at scale: its figures and the audit verify over a million audit events.

``--events`` audit events (default 1,000,000) for ``--requests`` requests (default 100,000) spread over
``--days`` days (default 100), with votes and grants in proportion (about 70 % approved by people, a
fifth of those by two votes, 8 % auto-approved, 10 % denied, 6 % expired, 4 % cancelled, 2 % of
approvals failing to mint; 80 % of tokens picked up), are written in bulk with SQLAlchemy Core
(no ORM) into a SQLite file and into a scratch database on the PostgreSQL server of
``--postgres-url`` (default ``JIT_TEST_POSTGRES_URL``; ``--postgres-url ''`` skips it). Each event is
linked into the keyed chain with ``bot.store.audit.event_link``, so the trail verifies. Events beyond
what the requests' own lives make are ``unauthorized_attempt``s spread over the requests.

Then, on each database:
- ``*_digest_s``: the digest's figures for a day near the end (``read_figures``: every count over 8
  days, the top lists, the histogram, the anomalies over 7 days), median of ``--runs`` (default 3);
- ``*_verify_s``: ``verify_chain`` over the whole trail (what the digest's ``audit_head`` runs), once;
- ``export_peak_rss_mb``: the peak RSS of ``jit-bot audit export`` (a subprocess, stdout to /dev/null)
  over the same events, from ``os.wait4``'s rusage of that child; the larger of the two databases
  (each is in ``*_export_peak_rss_mb``).

    .venv/bin/python benchmarks/digest.py [--events 1000000] [--requests 100000] [--days 100]
        [--postgres-url postgresql+psycopg://...] [--runs 3]

Prints one JSON line (stdout): sqlite_digest_s, sqlite_verify_s, postgres_digest_s, postgres_verify_s,
export_peak_rss_mb, and the details above; progress goes to stderr. Targets on 2 cores: digest < 3 s,
verify < 10 s, export < 200 MB. Writing the data takes most of the time (several minutes).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import Engine, insert, update  # noqa: E402

from bot.domain.audit import AuditEventType as E  # noqa: E402
from bot.domain.digest import plan_digest  # noqa: E402
from bot.domain.policy import DigestOptions  # noqa: E402
from bot.store.audit import GENESIS, bind_audit_key, canonical_event, event_link  # noqa: E402
from bot.store.db import make_engine, migrate, read_scope  # noqa: E402
from bot.store.digest import audit_anchor, read_figures  # noqa: E402
from bot.store.models import AccessRequest, AuditEvent, AuditHead, Grant, Vote  # noqa: E402
from bot.store.transitions import BOT_ACTOR  # noqa: E402
from tests.processes import JIT_BOT, base_env  # noqa: E402
from tests.world import AUDIT_KEY, fresh_postgres_database  # noqa: E402

KEY = base64.urlsafe_b64decode(AUDIT_KEY)
OPTIONS = DigestOptions(timezone="Europe/Berlin")
START = datetime(2026, 6, 1, tzinfo=UTC)
BATCH = 20_000
RESOURCES = [(f"svc-{n:02d}", ["read", "write", "admin"][: 1 + n % 3]) for n in range(15)]
REQUESTERS = [f"U0REQ{n:05d}" for n in range(200)]
APPROVERS = [f"U0APR{n:05d}" for n in range(20)]


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@dataclass
class Writer:
    """Buffers rows and writes them with Core executemany in batches, requests before what refers to them."""

    engine: Engine
    seq: int = 0
    link: str = GENESIS
    requests: list[dict[str, Any]] = field(default_factory=list)
    votes: list[dict[str, Any]] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, kind: E, request_id: str, at: datetime, actor: str = BOT_ACTOR, **details: Any) -> None:
        self.seq += 1
        canonical = canonical_event(
            seq=self.seq, at=at, event_type=kind.value, actor=actor, request_id=request_id, details=details
        )
        previous, self.link = self.link, event_link(KEY, self.link, canonical)
        self.events.append(
            {
                "seq": self.seq,
                "at": at,
                "event_type": kind.value,
                "actor": actor,
                "request_id": request_id,
                "details": details,
                "prev_hash": previous,
                "hash": self.link,
            }
        )

    def flush(self, *, force: bool = False) -> None:
        if not force and len(self.events) < BATCH:
            return
        with self.engine.begin() as connection:
            for model, rows in ((AccessRequest, self.requests), (Vote, self.votes), (Grant, self.grants)):
                if rows:
                    connection.execute(insert(model.__table__), rows)  # type: ignore[attr-defined]
            if self.events:
                connection.execute(insert(AuditEvent.__table__), self.events)  # type: ignore[attr-defined]
            connection.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=self.seq, hash=self.link))
        self.requests, self.votes, self.grants, self.events = [], [], [], []


def one_request(writer: Writer, rng: random.Random, n: int, created: datetime) -> None:
    request_id = f"R{n:09d}"
    requester = rng.choice(REQUESTERS)
    resource, offered = rng.choice(RESOURCES)
    scopes = offered[: rng.randint(1, len(offered))]
    minutes = rng.choice([15, 30, 60, 120])
    fate = rng.random()
    auto = 0.70 <= fate < 0.78
    writer.requests.append(
        {
            "id": request_id,
            "requester_slack_id": requester,
            "requester_subject": requester.lower(),
            "resource": resource,
            "audience": f"https://{resource}.internal.example",
            "scopes": " ".join(scopes),
            "duration_seconds": minutes * 60,
            "reason": "INC-1234 checking",
            "approvals_required": 0 if auto else 1,
            "approver_channel": "C0APPROVERS",
            "status": "revoked",
            "created_at": created,
            "updated_at": created,
        }
    )
    writer.event(E.REQUEST_SUBMITTED, request_id, created, requester, resource=resource, scopes=scopes)
    card = created + timedelta(seconds=rng.uniform(0.3, 3))
    writer.event(E.CARD_POSTED, request_id, card, channel="C0APPROVERS", ts=f"{card.timestamp():.6f}")
    decided = card + timedelta(seconds=rng.expovariate(1 / 240))
    approvers = rng.sample(APPROVERS, 2)
    if fate < 0.78:
        voters = [] if auto else approvers[: 2 if rng.random() < 0.2 else 1]
        for index, voter in enumerate(voters):
            at = decided + timedelta(seconds=30 * index)
            writer.votes.append(
                {"request_id": request_id, "voter_slack_id": voter, "choice": "approve", "created_at": at}
            )
            writer.event(E.VOTE_CAST, request_id, at, voter, choice="approve")
        decided = created if auto else decided + timedelta(seconds=30 * (len(voters) - 1))
        writer.event(E.REQUEST_APPROVED, request_id, decided, voters[-1] if voters else BOT_ACTOR)
        writer.event(E.MINT_STARTED, request_id, decided + timedelta(milliseconds=50))
        if rng.random() < 0.02:
            writer.event(E.MINT_FAILED, request_id, decided + timedelta(seconds=1), error="invalid_target")
            return
        issued = decided + timedelta(milliseconds=300)
        writer.event(E.TOKEN_RECEIVED, request_id, issued)
        writer.event(E.GRANT_ACTIVE, request_id, issued, granted_scopes=scopes)
        picked = issued + timedelta(seconds=rng.uniform(5, 600)) if rng.random() < 0.8 else None
        if picked is not None:
            writer.event(E.TOKEN_PICKED_UP, request_id, picked)
        expires = issued + timedelta(minutes=minutes)
        writer.event(E.GRANT_REVOKED, request_id, expires + timedelta(milliseconds=400))
        writer.grants.append(
            {
                "request_id": request_id,
                "status": "revoked",
                "audience": f"https://{resource}.internal.example",
                "granted_scopes": " ".join(scopes),
                "token_type": "Bearer",
                "token_fingerprint": "sha256:00",
                "issued_at": issued,
                "expires_at": expires,
                "picked_up_at": picked,
                "revoked_at": expires + timedelta(milliseconds=400),
                "attempts": 0,
                "in_attempt": False,
            }
        )
    elif fate < 0.88:
        voter = approvers[0]
        writer.votes.append(
            {"request_id": request_id, "voter_slack_id": voter, "choice": "deny", "created_at": decided}
        )
        writer.event(E.VOTE_CAST, request_id, decided, voter, choice="deny")
        writer.event(E.REQUEST_DENIED, request_id, decided, voter, reason="not now")
    elif fate < 0.94:
        writer.event(E.REQUEST_EXPIRED, request_id, created + timedelta(minutes=30))
    else:
        writer.event(E.REQUEST_CANCELLED, request_id, created + timedelta(minutes=2), requester)


def write_trail(engine: Engine, *, events: int, requests: int, days: int) -> int:
    """Returns how many events were written (exactly ``events`` unless the requests alone make more)."""
    rng = random.Random(11)
    writer = Writer(engine)
    spacing = timedelta(days=days) / requests
    began = time.perf_counter()
    for n in range(requests):
        created = START + spacing * n
        one_request(writer, rng, n, created)
        # Spread the events the requests' own lives do not make evenly over them.
        while writer.seq < events * (n + 1) // requests:
            writer.event(E.UNAUTHORIZED_ATTEMPT, f"R{n:09d}", created + timedelta(seconds=5), rng.choice(REQUESTERS))
        writer.flush()
        if n and n % 20_000 == 0:
            say(f"  {n} requests, {writer.seq} events ({time.perf_counter() - began:.0f} s)")
    writer.flush(force=True)
    return writer.seq


def digest_seconds(engine: Engine, day: date, runs: int) -> tuple[float, dict[str, int]]:
    times = []
    counts: dict[str, int] = {}
    for _ in range(runs):
        plan = plan_digest(day, OPTIONS, now=datetime.now(UTC))
        began = time.perf_counter()
        with read_scope(engine) as session:
            figures = read_figures(session=session, plan=plan)
        times.append(time.perf_counter() - began)
        counts = dict(figures.daily[-1])
    return statistics.median(times), counts


def verify_seconds(engine: Engine) -> tuple[float, int, bool]:
    began = time.perf_counter()
    with read_scope(engine) as session:
        anchor = audit_anchor(session=session, key=KEY)
    return time.perf_counter() - began, anchor.seq, anchor.verified


def export_peak_rss_mb(database_url: str, workdir: Path) -> tuple[float, float]:
    """The peak RSS of `jit-bot audit export` over the whole trail, and how long it took."""
    env = {**base_env(workdir), "JIT_DATABASE_URL": database_url, "JIT_AUDIT_KEY": AUDIT_KEY}
    began = time.perf_counter()
    process = subprocess.Popen([str(JIT_BOT), "audit", "export"], cwd=workdir, env=env, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"jit-bot audit export exited {process.returncode}")
    return usage.ru_maxrss / 1024, elapsed  # ru_maxrss is in KiB on Linux


def measure(name: str, database_url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    engine = bind_audit_key(make_engine(database_url), KEY)
    try:
        migrate(engine)
        say(f"{name}: writing {args.requests} requests and {args.events} events")
        began = time.perf_counter()
        written = write_trail(engine, events=args.events, requests=args.requests, days=args.days)
        load_s = time.perf_counter() - began
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE")
        else:
            with engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE")
        day = (START + timedelta(days=args.days - 5)).date()
        say(f"{name}: {written} events written in {load_s:.0f} s; the digest of {day}")
        digest_s, counts = digest_seconds(engine, day, args.runs)
        say(f"{name}: digest {digest_s:.3f} s ({counts}); verifying the chain")
        verify_s, head, verified = verify_seconds(engine)
        if not verified or head != written:
            raise SystemExit(f"{name}: the trail did not verify (head {head}, written {written})")
        say(f"{name}: verify {verify_s:.1f} s; exporting")
        rss_mb, export_s = export_peak_rss_mb(database_url, workdir)
        say(f"{name}: export {export_s:.1f} s, peak RSS {rss_mb:.0f} MB")
    finally:
        engine.dispose()
    return {
        f"{name}_digest_s": round(digest_s, 3),
        f"{name}_verify_s": round(verify_s, 2),
        f"{name}_export_peak_rss_mb": round(rss_mb, 1),
        f"{name}_export_s": round(export_s, 1),
        f"{name}_load_s": round(load_s, 1),
        f"{name}_day_requested": counts.get("requested", 0),
    }


def databases(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[str, str]]:
    yield "sqlite", f"sqlite:///{workdir / 'digest.db'}"
    if args.postgres_url:
        with fresh_postgres_database(args.postgres_url, prefix="jit_bench") as url:
            yield "postgres", url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=100, help="the days the requests are spread over (at least 10)")
    parser.add_argument("--runs", type=int, default=3, help="digest runs per database (the median is reported)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("JIT_TEST_POSTGRES_URL", ""),
        help="PostgreSQL server to create a scratch database on (default JIT_TEST_POSTGRES_URL; '' skips it)",
    )
    args = parser.parse_args()
    if args.days < 10:
        parser.error("--days must be at least 10: the digest looks at a day and the 7 before it")
    result: dict[str, Any] = {"events": args.events, "requests": args.requests, "days": args.days}
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        for name, url in databases(args, workdir):
            result |= measure(name, url, args, workdir)
    rss = [value for key, value in result.items() if key.endswith("_export_peak_rss_mb")]
    result["export_peak_rss_mb"] = max(rss)
    result["targets_met"] = {
        "digest_under_3s": all(v < 3 for k, v in result.items() if k.endswith("_digest_s")),
        "verify_under_10s": all(v < 10 for k, v in result.items() if k.endswith("_verify_s")),
        "export_under_200mb": result["export_peak_rss_mb"] < 200,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
