"""`jit-bot audit export` (for a SIEM: every event with its seq and link, streamed) and `jit-bot audit
verify --expect-head` (a head published earlier, as a digest does, catches a cut tail or a rewrite)."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from bot.cli import _moment
from bot.store.audit import GENESIS, append_event, bind_audit_key, canonical_event, event_link, export_events
from bot.store.db import make_engine, migrate, read_scope, session_scope
from tests.processes import assert_no_traceback, run_cli
from tests.test_cli import append_events, messages
from tests.world import AUDIT_KEY, REQUESTER

KEY = base64.urlsafe_b64decode(AUDIT_KEY)
# append_events writes event n at this moment plus n seconds.
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def _env(database_url: str) -> dict[str, str]:
    return {"JIT_AUDIT_KEY": AUDIT_KEY, "JIT_DATABASE_URL": database_url}


def _links(database_url: str) -> dict[int, str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(text("SELECT seq, hash FROM audit_event ORDER BY seq")).all())  # type: ignore[arg-type]
    finally:
        engine.dispose()


def _execute(database_url: str, *statements: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def _jsonl(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


# --- export -----------------------------------------------------------------------------------------


def test_export_jsonl_carries_every_event_with_what_a_siem_needs_to_check_the_chain(
    tmp_path: Path, database_url: str
) -> None:
    append_events(database_url, 5)

    result = run_cli(tmp_path, "audit", "export", env=_env(database_url))

    assert result.returncode == 0, result.stderr
    events = _jsonl(result.stdout)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert {e["seq"]: e["hash"] for e in events} == _links(database_url)
    assert events[0]["at"] == "2026-11-27T09:00:00Z"
    assert events[2]["details"] == {"resource": "prod-db", "scopes": ["read"], "n": 2}
    assert (events[0]["event_type"], events[0]["actor"], events[0]["request_id"]) == (
        "request.submitted",
        REQUESTER,
        "R000000001",
    )
    # Someone holding the key can re-link the exported lines themselves: the export is the chain.
    prev = GENESIS
    for exported in events:
        at = datetime.fromisoformat(exported["at"].replace("Z", "+00:00"))
        canonical = canonical_event(
            seq=exported["seq"],
            at=at,
            event_type=exported["event_type"],
            actor=exported["actor"],
            request_id=exported["request_id"],
            details=exported["details"],
        )
        assert exported["prev_hash"] == prev
        assert event_link(KEY, prev, canonical) == exported["hash"]
        prev = exported["hash"]
    assert "exported 5 event(s)" in result.stderr


def test_export_csv_has_a_header_and_the_details_as_json(tmp_path: Path, database_url: str) -> None:
    append_events(database_url, 3)

    result = run_cli(tmp_path, "audit", "export", "--format", "csv", env=_env(database_url))

    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["seq", "at", "event_type", "actor", "request_id", "details", "prev_hash", "hash"]
    assert [int(row["seq"]) for row in rows] == [1, 2, 3]
    assert json.loads(rows[1]["details"]) == {"resource": "prod-db", "scopes": ["read"], "n": 1}
    assert {int(row["seq"]): row["hash"] for row in rows} == _links(database_url)


def test_export_window_on_the_command_line(tmp_path: Path, database_url: str) -> None:
    append_events(database_url, 5)

    result = run_cli(
        tmp_path,
        "audit",
        "export",
        "--since",
        "2026-11-27T10:00:01+01:00",  # an offset is converted: 09:00:01 UTC
        "--until",
        "2026-11-27T09:00:03Z",  # exclusive
        env=_env(database_url),
    )

    assert result.returncode == 0, result.stderr
    assert [e["seq"] for e in _jsonl(result.stdout)] == [2, 3]


@pytest.mark.parametrize(
    ("since", "until", "seqs"),
    [
        pytest.param(START + timedelta(seconds=2), None, [3, 4, 5], id="since-is-inclusive"),
        pytest.param(None, START + timedelta(seconds=2), [1, 2], id="until-is-exclusive"),
        pytest.param(START + timedelta(seconds=1), START + timedelta(seconds=3), [2, 3], id="both"),
        pytest.param(START + timedelta(days=1), None, [], id="after-the-last"),
        pytest.param(None, None, [1, 2, 3, 4, 5], id="everything"),
    ],
)
def test_export_window(database_url: str, since: datetime | None, until: datetime | None, seqs: list[int]) -> None:
    append_events(database_url, 5)
    engine = make_engine(database_url)
    try:
        with read_scope(engine) as session:
            exported = [e.seq for e in export_events(session=session, since=since, until=until, batch=2)]
    finally:
        engine.dispose()
    assert exported == seqs


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        pytest.param("2026-11-28", datetime(2026, 11, 28, tzinfo=UTC), id="a-date-is-utc-midnight"),
        pytest.param("2026-11-27T10:00:01+01:00", datetime(2026, 11, 27, 9, 0, 1, tzinfo=UTC), id="an-offset"),
        pytest.param("2026-11-27T09:00", datetime(2026, 11, 27, 9, 0, tzinfo=UTC), id="no-zone-is-utc"),
    ],
)
def test_what_since_and_until_mean(text: str, moment: datetime) -> None:
    assert _moment(text, "--since") == moment


@pytest.mark.parametrize(
    ("window", "said"),
    [
        pytest.param(
            ["--since", "yesterday"],
            "--since: 'yesterday' is not a span like 30d, a date like 2026-12-01 or a time like 2026-12-01T09:00Z",
            id="not-a-time",
        ),
        pytest.param(
            ["--since", "2026-11-28", "--until", "2026-11-27"], "--since must be before --until", id="backwards"
        ),
    ],
)
def test_export_with_a_bad_window_is_one_line_and_prints_nothing(tmp_path: Path, window: list[str], said: str) -> None:
    database_url = f"sqlite:///{tmp_path}/jit.db"  # refused before the database is read
    append_events(database_url, 2)

    result = run_cli(tmp_path, "audit", "export", *window, env=_env(database_url))

    assert result.returncode == 2
    assert result.stdout == ""
    assert_no_traceback(result.stderr)
    assert messages(result.stderr) == [f"jit-bot: {said}"]


def test_export_reads_in_batches_by_seq_so_memory_does_not_grow_with_the_trail(database_url: str) -> None:
    engine = bind_audit_key(make_engine(database_url), KEY)
    migrate(engine)
    with session_scope(engine) as session:
        for n in range(25):
            append_event(
                session=session,
                at=START + timedelta(seconds=n),
                event_type="request.voted",
                actor=REQUESTER,
                request_id=None,
                details={"n": n},
            )
    selects: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM audit_event" in statement:
            selects.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with read_scope(engine) as session:
            exported = export_events(session=session, since=None, until=None, batch=10)
            first = next(exported)
            assert (first.seq, len(selects)) == (1, 1), "the first batch is read before the rest is asked for"
            rest = list(exported)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
        engine.dispose()
    assert [e.seq for e in [first, *rest]] == list(range(1, 26))
    assert len(selects) == 4  # 10 + 10 + 5, then an empty batch ends it
    assert all("LIMIT" in statement.upper() for statement in selects)


# --- verify --expect-head ---------------------------------------------------------------------------


def test_the_published_head_verifies_and_still_does_once_the_trail_has_grown(tmp_path: Path, database_url: str) -> None:
    append_events(database_url, 3)
    head = f"3:{_links(database_url)[3]}"

    now = run_cli(tmp_path, "audit", "verify", "--expect-head", head, env=_env(database_url))
    assert now.returncode == 0, now.stderr
    assert now.stdout == "audit trail intact: 3 events, holding the expected head 3\n"

    append_events(database_url, 2)
    later = run_cli(tmp_path, "audit", "verify", "--expect-head", head, env=_env(database_url))
    assert later.returncode == 0, later.stderr
    assert later.stdout == "audit trail intact: 5 events, holding the expected head 3\n"


def test_a_tail_cut_off_with_the_head_row_fixed_to_match_is_caught_by_the_published_head(
    tmp_path: Path, database_url: str
) -> None:
    append_events(database_url, 5)
    links = _links(database_url)
    # Someone with database access (not the key) removes the last two events and points the head
    # row at event 3: the chain itself still verifies.
    _execute(
        database_url,
        "DELETE FROM audit_event WHERE seq > 3",
        f"UPDATE audit_head SET seq = 3, hash = '{links[3]}' WHERE id = 1",
    )
    plain = run_cli(tmp_path, "audit", "verify", env=_env(database_url))
    assert plain.returncode == 0, "without a published head, a cut tail is invisible"

    checked = run_cli(tmp_path, "audit", "verify", "--expect-head", f"5:{links[5]}", env=_env(database_url))

    assert checked.returncode == 1
    assert checked.stdout == ""
    assert messages(checked.stderr) == [
        "audit trail does NOT hold the expected head 5: the trail ends at event 3, before the expected head 5: "
        "events were removed"
    ]


def test_a_head_rewritten_with_the_key_is_caught_by_the_published_head(tmp_path: Path, database_url: str) -> None:
    append_events(database_url, 3)
    links = _links(database_url)
    # Someone with the key too replaces event 3 with another one, correctly linked.
    _execute(
        database_url,
        "DELETE FROM audit_event WHERE seq = 3",
        f"UPDATE audit_head SET seq = 2, hash = '{links[2]}' WHERE id = 1",
    )
    engine = bind_audit_key(make_engine(database_url), KEY)
    try:
        with session_scope(engine) as session:
            append_event(
                session=session,
                at=START + timedelta(seconds=2),
                event_type="request.voted",
                actor="U0SOMEONE1",
                request_id="R000000001",
                details={"resource": "prod-db", "scopes": ["read"], "n": 2},
            )
    finally:
        engine.dispose()
    assert run_cli(tmp_path, "audit", "verify", env=_env(database_url)).returncode == 0

    checked = run_cli(tmp_path, "audit", "verify", "--expect-head", f"3:{links[3]}", env=_env(database_url))

    assert checked.returncode == 1
    (said,) = messages(checked.stderr)
    assert said.startswith("audit trail does NOT hold the expected head 3: event 3's link is ")
    assert said.endswith(f", not the expected {links[3][:16]}…: the trail was rewritten")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("3", id="no-hash"),
        pytest.param("3:abc", id="short-hash"),
        pytest.param("0:" + "a" * 64, id="seq-zero"),
        pytest.param("x:" + "a" * 64, id="seq-not-a-number"),
    ],
)
def test_a_malformed_expected_head_is_one_line(tmp_path: Path, value: str) -> None:
    database_url = f"sqlite:///{tmp_path}/jit.db"  # refused before the database is read
    append_events(database_url, 1)

    result = run_cli(tmp_path, "audit", "verify", "--expect-head", value, env=_env(database_url))

    assert result.returncode == 2
    assert_no_traceback(result.stderr)
    assert messages(result.stderr) == [
        f"jit-bot: --expect-head: '{value}' is not SEQ:HASH (an event number, a colon, 64 hex digits)"
    ]
