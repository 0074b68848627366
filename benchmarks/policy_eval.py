"""Policy evaluation: the time ``decide`` takes for one request against a policy of ``--rules`` YAML
rules whose deciding rule is the last one, so every rule before it is evaluated (each with several
conditions, hours in a time zone and a regular expression among them), as the policy file is parsed
and validated at start.

    .venv/bin/python benchmarks/policy_eval.py [--rules 200] [--requests 5000]

Then ``--replay`` recorded requests (default 100,000) are written to a fresh SQLite database and
replayed as ``jit-bot policy replay`` does (streamed from the database, decided again, changes
counted) with the example policy of examples/policy-rules.yml; the time of that read-and-decide is
``replay_100k_s`` (the writing is not counted).

With a Rego rule: the same policy with its last rule replaced by one a Rego module decides (group
membership, scopes, a regular expression and the Berlin wall clock), evaluated by the bot's own
engine (a worker process: the time includes the round trip to it), for ``--requests`` requests.

Prints one JSON line: rules, requests, rules_p50_ms, rules_p99_ms, rego_p50_ms, rego_p99_ms,
replay_requests, replay_100k_s, replay_changed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bot.domain.policy import Policy  # noqa: E402
from bot.domain.policy_fields import RegoModule  # noqa: E402
from bot.domain.rules import AccessRequest, Effect, decide  # noqa: E402


def policy_with(rule_count: int) -> Policy:
    resources = [
        {
            "name": f"svc-{i}",
            "audience": f"https://svc-{i}.internal.example",
            "scopes": ["read", "write", "admin"],
            "max_duration": "4h",
            "approver_channel": "C0APPROVE",
            "approvers": ["U0BOB", "U0CAROL"],
        }
        for i in range(20)
    ]
    # Rules that look like real ones but never match the benchmark's request (it asks for svc-0 at
    # 10:00 on a Tuesday, for read, with a ticket in the reason, and is in no usergroup).
    decoys = [
        {
            "name": f"decoy-{i}",
            "when": {
                "requester_in": ["oncall"],
                "resources": [f"svc-{i % 20}", "svc-1*"],
                "scopes_within": ["read"],
                "max_duration": "1h",
                "hours": {
                    "days": ["mon", "tue", "wed", "thu", "fri"],
                    "from": "08:00",
                    "to": "20:00",
                    "timezone": "Europe/Berlin",
                },
                "reason_matches": r"\b(INC|CHG)-\d+\b",
            },
            "effect": "auto_approve",
        }
        for i in range(rule_count - 1)
    ]
    last = {"name": "the-last", "when": {"resources": ["svc-0"], "scopes_within": ["read"]}, "effect": "require"}
    data: dict[str, Any] = {
        "resources": resources,
        "groups": {"oncall": ["S0ONCALL"]},
        "rules": [*decoys, last],
    }
    return Policy.model_validate(data)


# What a real module asks: who, what, why and when (business hours in Berlin).
REGO_MODULE = """package jit

import rego.v1

decision := {"effect": "require", "approvals": 1, "approvers": ["U0BOB"]} if {
	input.resource.name == "svc-0"
	every scope in input.request.scopes {
		scope in {"read"}
	}
	regex.match(`\\b(INC|CHG)-\\d+\\b`, input.request.reason)
	[hour, _, _] := time.clock([input.now_ns, "Europe/Berlin"])
	hour >= 8
	hour < 20
}
"""


def with_rego_last(policy: Policy) -> Policy:
    data = policy.model_dump(mode="python", by_alias=True, exclude_none=True)
    data["rules"] = [*data["rules"][:-1], {"name": "the-last", "rego": RegoModule("bench.rego", REGO_MODULE)}]
    return Policy.model_validate(data)


def timed_decisions(policy: Policy, count: int, rego: Any = None) -> list[float]:
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # a Tuesday, 10:00 in Berlin
    rng = random.Random(7)
    samples = []
    for _ in range(count):
        request = AccessRequest(
            resource="svc-0",
            scopes=("read",),
            duration=timedelta(minutes=rng.choice([15, 30, 45])),
            reason=f"looking into INC-{rng.randrange(10_000)}",
            requester="U0ALICE",
            subject="alice",
        )
        now = start + timedelta(seconds=rng.randrange(3600))
        began = time.perf_counter()
        decision = decide(policy, request, usergroups=frozenset(), now=now, recent_auto_approvals={}, rego=rego)
        samples.append((time.perf_counter() - began) * 1000)
        if decision.effect is not Effect.REQUIRE or decision.rule != "the-last":
            raise SystemExit(f"the benchmark's request was decided by {decision.rule}: {decision.reason}")
    samples.sort()
    return samples


def p99(samples: list[float]) -> float:
    return round(samples[int(len(samples) * 0.99) - 1], 3)


def replay_seconds(count: int) -> tuple[float, int]:
    import tempfile

    import yaml
    from sqlalchemy import insert

    from bot.domain.replay import replay
    from bot.store import requests as request_store
    from bot.store.db import make_engine, migrate, read_scope
    from bot.store.models import AccessRequest as Row

    policy = Policy.model_validate(yaml.safe_load((REPO_ROOT / "examples" / "policy-rules.yml").read_text()))
    rng = random.Random(3)
    start = datetime.now(UTC) - timedelta(days=29)
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{folder}/replay.db")
        migrate(engine)
        rows = []
        for i in range(count):
            resource, scopes = rng.choice([("prod-db", "read"), ("prod-db", "read write"), ("billing-api", "refund")])
            when = start + timedelta(seconds=i * 25)
            rows.append(
                {
                    "id": f"R{i:09d}",
                    "requester_slack_id": rng.choice(["U0ALICE", "U0BOB", "U0CAROL"]),
                    "requester_subject": "someone",
                    "resource": resource,
                    "audience": "https://x.internal.example",
                    "scopes": scopes,
                    "duration_seconds": rng.choice([900, 1800, 3600]),
                    "reason": rng.choice(["INC-1234", "checking", "CHG-5 deploy"]),
                    "approvals_required": 1,
                    "approver_channel": "C0DBAPPROVE",
                    "status": rng.choice(["revoked", "denied", "expired"]),
                    "created_at": when,
                    "updated_at": when,
                }
            )
        with engine.begin() as connection:
            connection.execute(insert(Row), rows)
        began = time.perf_counter()
        with read_scope(engine) as session:
            recorded = request_store.recorded_since(session=session, since=start - timedelta(days=1))
            result = replay(policy, recorded, usergroups={"U0ALICE": frozenset({"S0ONCALL"})})
        elapsed = time.perf_counter() - began
        engine.dispose()
        if result.requests != count:
            raise SystemExit(f"replayed {result.requests} of {count}")
        return elapsed, len(result.changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--replay", type=int, default=100_000, help="recorded requests to replay (0: skip)")
    args = parser.parse_args()

    from bot.rego.engine import engine_for

    policy = policy_with(args.rules)
    samples = timed_decisions(policy, args.requests)
    rego_policy = with_rego_last(policy)
    engine = engine_for(rego_policy)
    try:
        timed_decisions(rego_policy, 50, engine)  # the worker's first queries compile the module
        rego_samples = timed_decisions(rego_policy, args.requests, engine)
    finally:
        if engine is not None:
            engine.close()
    replay_s, changed = replay_seconds(args.replay) if args.replay else (None, None)
    print(
        json.dumps(
            {
                "rules": args.rules,
                "requests": args.requests,
                "rules_p50_ms": round(statistics.median(samples), 3),
                "rules_p99_ms": p99(samples),
                "rego_p50_ms": round(statistics.median(rego_samples), 3),
                "rego_p99_ms": p99(rego_samples),
                "replay_requests": args.replay,
                "replay_100k_s": round(replay_s * 100_000 / args.replay, 2) if replay_s is not None else None,
                "replay_changed": changed,
            }
        )
    )


if __name__ == "__main__":
    main()
