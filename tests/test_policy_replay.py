"""`jit-bot policy replay`: recorded requests decided again with a proposed policy, read-only, on
fixtures with known answers (examples/policy-rules.yml against requests made in December 2026)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlmodel import Session

from bot.domain.replay import replay as replay_requests
from bot.store.audit import bind_audit_key
from bot.store.db import make_engine, migrate, read_scope
from bot.store.models import AccessRequest
from bot.store.requests import recorded_since
from tests.processes import assert_no_traceback, run_cli
from tests.world import AUDIT_KEY, REQUESTER, SQLITE_ONLY, make_policy, policy_data

RULES = Path(__file__).resolve().parent.parent / "examples" / "policy-rules.yml"
BERLIN = timedelta(hours=1)  # CET in December


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """Berlin wall-clock time in December 2026, as UTC."""
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC) - BERLIN


# (id, when, resource, scopes, minutes, reason, status): Tuesday 1st, Saturday 5th, Wednesday 2nd.
RECORDED = [
    ("R000000001", at(1, 10), "prod-db", "read", 30, "INC-1234 slow queries", "revoked"),
    ("R000000002", at(5, 11), "prod-db", "read write", 60, "CHG-77 migration", "revoked"),
    ("R000000003", at(2, 11), "prod-db", "write", 60, "CHG-78 index", "denied"),
    ("R000000004", at(3, 12), "billing-api", "refund", 15, "refund CS-991", "revoked"),
    *((f"R00000001{i}", at(8, 9 + i), "prod-db", "read", 15, f"INC-20{i} again", "revoked") for i in range(6)),
]


@pytest.fixture
def recorded(tmp_path: Path, database_url: str) -> dict[str, str]:
    engine = bind_audit_key(make_engine(database_url), __import__("base64").urlsafe_b64decode(AUDIT_KEY))
    migrate(engine)
    with Session(engine) as session:
        for rid, when, resource, scopes, minutes, reason, status in RECORDED:
            session.add(
                AccessRequest(
                    id=rid,
                    requester_slack_id="U0ALICE",
                    requester_subject="alice",
                    resource=resource,
                    audience=f"https://{resource}.internal.example",
                    scopes=scopes,
                    duration_seconds=minutes * 60,
                    reason=reason,
                    approvals_required=1,
                    approver_channel="C0DBAPPROVE",
                    status=status,
                    created_at=when,
                    updated_at=when,
                )
            )
        session.commit()
    engine.dispose()
    (tmp_path / "usergroups.yml").write_text("U0ALICE: [S0ONCALL]\n")
    return {"JIT_DATABASE_URL": database_url}


def replay(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    result = run_cli(tmp_path, "policy", "replay", str(RULES), "--since", "3650d", *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_no_traceback(result.stdout + result.stderr)
    return result.stdout


def test_replay_says_what_each_changed_request_would_have_got(tmp_path: Path, recorded: dict[str, str]) -> None:
    found = json.loads(replay(tmp_path, recorded, "--usergroups", "usergroups.yml", "--format", "json"))

    assert found["requests"] == len(RECORDED)
    changes = {c["request_id"]: (c["before"], c["after"], c["rule"]) for c in found["changes"]}
    assert changes == {
        "R000000001": ("approved", "auto_approve", "oncall-read"),
        "R000000002": ("approved", "deny", "no-write-at-weekends"),
        "R000000003": ("denied", "require", "write-needs-two-dbas"),
        # Five on-call reads on the 8th are auto-approved; the sixth is past the limit: people, as before.
        **{f"R00000001{i}": ("approved", "auto_approve", "oncall-read") for i in range(5)},
    }
    assert found["counts"] == {
        "needed a human would have been auto-approved": 6,
        "was approved would have been denied by a rule": 1,
        "was denied by a person would have needed other approvers": 1,
    }


def test_replay_text_and_unknown_usergroups(tmp_path: Path, recorded: dict[str, str]) -> None:
    text = replay(tmp_path, recorded).splitlines()

    assert text[0] == f"{len(RECORDED)} request(s) since 3650d ago decided again with {RULES}"
    # Without --usergroups nobody is known to be on call: only the rules that need no usergroups change.
    assert "R000000001" not in "\n".join(text)
    assert "1 request(s) that was approved would have been denied by a rule" in text
    assert text[-1].startswith("usergroups were not known (give --usergroups)")


def test_replay_changes_nothing_in_the_database(tmp_path: Path, recorded: dict[str, str], database_url: str) -> None:
    from sqlmodel import select

    engine = make_engine(database_url)
    with Session(engine) as session:
        before = [
            (r.id, r.status, r.updated_at) for r in session.exec(select(AccessRequest).order_by(AccessRequest.id))
        ]
    replay(tmp_path, recorded, "--usergroups", "usergroups.yml")
    with Session(engine) as session:
        after = [(r.id, r.status, r.updated_at) for r in session.exec(select(AccessRequest).order_by(AccessRequest.id))]
    engine.dispose()
    assert after == before


def test_replay_with_a_bad_since_is_one_line(tmp_path: Path, recorded: dict[str, str]) -> None:
    result = run_cli(tmp_path, "policy", "replay", str(RULES), "--since", "forever", env=recorded)
    assert result.returncode == 2
    assert_no_traceback(result.stderr)
    (line,) = result.stderr.splitlines()
    assert line.startswith("jit-bot: --since: ")


def test_what_a_rule_decided_before_counts_as_the_rule_s_not_people_s(tmp_path: Path, database_url: str) -> None:
    """A request a rule auto-approved is not 'a human approved it': replayed with the same rule it is
    unchanged, and with the rule gone it would have needed a human."""
    engine = bind_audit_key(make_engine(database_url), __import__("base64").urlsafe_b64decode(AUDIT_KEY))
    migrate(engine)
    when = at(1, 10)
    with Session(engine) as session:
        session.add(
            AccessRequest(
                id="R00000AUTO",
                requester_slack_id="U0ALICE",
                requester_subject="alice",
                resource="prod-db",
                audience="https://db.internal.example",
                scopes="read",
                duration_seconds=1800,
                reason="INC-1 check",
                approvals_required=0,
                approver_channel="C0DBAPPROVE",
                status="revoked",
                created_at=when,
                updated_at=when,
                decided_at=when,
                decided_by="jit-bot",
                rule="oncall-read",
            )
        )
        session.commit()
    engine.dispose()
    (tmp_path / "usergroups.yml").write_text("U0ALICE: [S0ONCALL]\n")
    env = {"JIT_DATABASE_URL": database_url}

    same = json.loads(replay(tmp_path, env, "--usergroups", "usergroups.yml", "--format", "json"))
    assert (same["requests"], same["changed"]) == (1, 0)

    without = yaml.safe_load(RULES.read_text())
    without["rules"] = [rule for rule in without["rules"] if rule["name"] != "oncall-read"]
    (tmp_path / "proposed.yml").write_text(yaml.safe_dump(without))
    result = run_cli(
        tmp_path,
        "policy",
        "replay",
        "proposed.yml",
        "--since",
        "3650d",
        "--usergroups",
        "usergroups.yml",
        "--format",
        "json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    gone = json.loads(result.stdout)
    assert gone["counts"] == {"was auto-approved would have needed a human": 1}


@SQLITE_ONLY
def test_more_break_glass_time_replays_as_the_bot_decides_it(database_url: str) -> None:
    """A rule that auto-approves extensions never decides one of a break-glass chain in the bot; a
    replay that said it would have reported a change no policy could make."""
    engine = bind_audit_key(make_engine(database_url), __import__("base64").urlsafe_b64decode(AUDIT_KEY))
    migrate(engine)
    when = at(1, 10)
    with Session(engine) as session:
        # The break-glass grant, a person's extension of it, and an extension of that extension.
        for rid, extends, minutes in (
            ("R00000000BG", None, 30),
            ("R00000EXT1", "R00000000BG", 30),
            ("R00000EXT2", "R00000EXT1", 15),
        ):
            session.add(
                AccessRequest(
                    id=rid,
                    requester_slack_id=REQUESTER,
                    requester_subject="alice",
                    resource="prod-db",
                    audience="https://db.internal.example",
                    scopes="read",
                    duration_seconds=minutes * 60,
                    reason="INC-99 primary is down",
                    approvals_required=0 if extends is None else 1,
                    approver_channel="C0DBAPPROVE",
                    status="revoked",
                    created_at=when,
                    updated_at=when,
                    decided_at=when,
                    decided_by="jit-bot" if extends is None else "U0APPROVER1",
                    break_glass=extends is None,
                    extends=extends,
                )
            )
        session.commit()
    policy = make_policy(
        groups={"sre": [REQUESTER]},
        resources=[
            {**policy_data()["resources"][0], "break_glass": {"max_duration": "1h", "allowed": ["sre"]}},
            *policy_data()["resources"][1:],
        ],
        rules=[
            {
                "name": "extend-reads",
                "when": {"extension": True, "resources": ["prod-db"], "scopes_within": ["read"]},
                "effect": "auto_approve",
                "max_total": "3h",
            }
        ],
    )
    with read_scope(engine) as session:
        result = replay_requests(policy, recorded_since(session=session, since=when), usergroups=None)
    engine.dispose()
    assert result.requests == 2  # the break-glass itself is not decided again
    assert result.changes == []
