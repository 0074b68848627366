"""verify_chain's two paths: the stored text spliced into the canonical form (events written
canonically), and the full decode (events whose stored text is written otherwise, by an older
version). Both must verify a genuine trail and both must catch an edit, on both databases."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text, update
from sqlmodel import Session

import bot.store.audit as audit
from bot.domain.audit import AuditEventType
from bot.services.audit import record
from bot.store.audit import bind_audit_key, verify_chain
from bot.store.db import session_scope
from bot.store.models import AuditEvent
from bot.store.types import canonical_json
from tests.world import AUDIT_KEY

KEY = base64.urlsafe_b64decode(AUDIT_KEY)
START = datetime(2026, 6, 1, 9, 30, tzinfo=UTC)
# Details that a serializer can write in more than one way: nested keys out of order, non-ASCII,
# quotes and backslashes, a whole second (no microseconds) and a time with them.
DETAILS: list[dict[str, Any]] = [
    {"zeta": 1, "alpha": {"b": [1, 2, {"y": None, "x": True}], "a": 'ü ☃ "q" \\'}},
    {"reason": 'INC-1: "now", please', "scopes": ["write", "read"]},
    {},
]


def _write(engine: Engine, count: int, *, first: int = 0) -> None:
    keyed = bind_audit_key(engine, KEY)
    with session_scope(keyed) as session:
        for n in range(first, first + count):
            record(
                AuditEventType.REQUEST_SUBMITTED,
                session=session,
                at=START + timedelta(seconds=n, microseconds=0 if n % 2 else 123456),
                actor=f"U0ÄCTOR{n}",
                request_id=None if n % 3 == 0 else f"R{n:09d}",
                **DETAILS[n % len(DETAILS)],
                n=n,
            )


def _older_engine(engine: Engine) -> Engine:
    """An engine that writes JSON as SQLAlchemy does by default (json.dumps: spaces after separators),
    as every version before canonical JSON columns did."""
    return create_engine(engine.url, json_serializer=json.dumps)


def _paths(engine: Engine) -> list[bool]:
    """Per event, in seq order: did the spliced stored text prove it (True) or did it take the full path?"""
    with Session(engine) as session:
        return [canonical is None for _seq, _prev, _link, canonical in audit._stored_links(session=session, key=KEY)]


def _verify(engine: Engine) -> audit.ChainReport:
    with Session(engine) as session:
        return verify_chain(session=session, key=KEY)


def _stored_details_text(engine: Engine, seq: int) -> str:
    cast = "details::text" if engine.dialect.name == "postgresql" else "details"
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT {cast} FROM audit_event WHERE seq = :seq"), {"seq": seq}).scalar_one()


def _edit_details(engine: Engine, seq: int, change: dict[str, Any]) -> None:
    """Change a detail with the engine's own serializer (the text stays as that engine writes it)."""
    with Session(engine) as session:
        details = dict(session.get(AuditEvent, seq).details)  # type: ignore[union-attr]
        details.update(change)
        session.execute(update(AuditEvent).where(AuditEvent.seq == seq).values(details=details))  # type: ignore[arg-type]
        session.commit()


def test_events_are_stored_as_their_canonical_json_and_verify_on_the_fast_path(engine: Engine) -> None:
    _write(engine, 6)
    for seq in range(1, 7):
        with Session(engine) as session:
            details = session.get(AuditEvent, seq).details  # type: ignore[union-attr]
        assert _stored_details_text(engine, seq) == canonical_json(details)
    assert _paths(engine) == [True] * 6
    report = _verify(engine)
    assert (report.intact, report.events, report.unkeyed) == (True, 6, 0)


def test_events_an_older_version_stored_otherwise_verify_through_the_full_path(engine: Engine) -> None:
    older = _older_engine(engine)
    try:
        _write(older, 4)
    finally:
        older.dispose()
    _write(engine, 3, first=4)
    assert _stored_details_text(engine, 1) != canonical_json(json.loads(_stored_details_text(engine, 1)))
    assert _paths(engine) == [False] * 4 + [True] * 3
    report = _verify(engine)
    assert (report.intact, report.events, report.unkeyed) == (True, 7, 0)


def test_a_time_stored_in_another_text_form_verifies_through_the_full_path(tmp_path: Any) -> None:
    """SQLite keeps whatever text it was given; SQLAlchemy reads any ISO form back as the same time."""
    from bot.store.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'jit.db'}")
    migrate(engine)
    try:
        _write(engine, 3)
        with engine.begin() as connection:
            connection.execute(text("UPDATE audit_event SET at = '2026-06-01T11:30:01+02:00' WHERE seq = 2"))
        assert _paths(engine) == [True, False, True]
        assert _verify(engine).intact
        with engine.begin() as connection:
            connection.execute(text("UPDATE audit_event SET at = '2026-06-01 09:30:01.000001' WHERE seq = 2"))
        report = _verify(engine)
        assert (report.first_bad_seq, report.problem) == (
            2,
            "event 2 was altered after it was written (or the key is wrong)",
        )
    finally:
        engine.dispose()


@pytest.mark.parametrize("older_text", [False, True], ids=["canonical-text", "older-text"])
def test_an_edited_detail_is_caught_on_either_path(engine: Engine, older_text: bool) -> None:
    writer = _older_engine(engine) if older_text else engine
    try:
        _write(writer, 5)
        _edit_details(writer, 3, {"n": 30})
    finally:
        if older_text:
            writer.dispose()
    text_now = _stored_details_text(engine, 3)
    assert (text_now == canonical_json(json.loads(text_now))) is not older_text
    report = _verify(engine)
    assert (report.intact, report.events, report.first_bad_seq) == (False, 2, 3)
    assert report.problem == "event 3 was altered after it was written (or the key is wrong)"


@pytest.mark.parametrize(
    "column, value",
    [("actor", "U0SOMEONEELSE"), ("event_type", "grant_revoked"), ("request_id", None), ("request_id", "R0")],
)
def test_an_edited_column_is_caught(engine: Engine, column: str, value: str | None) -> None:
    _write(engine, 4)
    with Session(engine) as session:
        session.execute(update(AuditEvent).where(AuditEvent.seq == 2).values({column: value}))  # type: ignore[arg-type]
        session.commit()
    report = _verify(engine)
    assert (report.first_bad_seq, report.problem) == (
        2,
        "event 2 was altered after it was written (or the key is wrong)",
    )


def test_a_time_moved_by_a_microsecond_is_caught(engine: Engine) -> None:
    _write(engine, 3)
    with Session(engine) as session:
        at = session.get(AuditEvent, 2).at  # type: ignore[union-attr]
        session.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(at=at + timedelta(microseconds=1)))  # type: ignore[arg-type]
        session.commit()
    report = _verify(engine)
    assert (report.first_bad_seq, report.problem) == (
        2,
        "event 2 was altered after it was written (or the key is wrong)",
    )


def test_details_text_that_moves_a_field_into_another_is_caught(tmp_path: Any) -> None:
    """Stored text is spliced, never trusted: text that takes in the next field of the canonical form
    (the request id moved into details, its column emptied) must not verify. SQLite keeps any text
    (PostgreSQL's json refuses text that is not JSON)."""
    from bot.store.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'jit.db'}")
    migrate(engine)
    try:
        _write(engine, 3)
        stored = _stored_details_text(engine, 2)
        forged = stored + ',"event_type":"request_submitted","request_id":"R000000001"'
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE audit_event SET details = :details, request_id = NULL WHERE seq = 2"), {"details": forged}
            )
        with Session(engine) as session, pytest.raises(ValueError):
            # Not JSON: the full path cannot decode it either, as before (verify never passes it).
            verify_chain(session=session, key=KEY)
        with engine.begin() as connection:
            connection.execute(text("UPDATE audit_event SET details = :details WHERE seq = 2"), {"details": stored})
        report = _verify(engine)
        assert (report.first_bad_seq, report.problem) == (
            2,
            "event 2 was altered after it was written (or the key is wrong)",
        )
    finally:
        engine.dispose()


def test_batches_mixing_both_paths_verify_and_report_the_first_bad_event(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small batches, so an older trail's batches go to the full path (and back to the fast one once
    the events are canonical), and an edit in either kind of batch is found at its seq."""
    monkeypatch.setattr(audit, "_VERIFY_BATCH", 3)
    older = _older_engine(engine)
    try:
        _write(older, 14)
    finally:
        older.dispose()
    _write(engine, 30, first=14)
    paths = _paths(engine)
    assert paths[:14] == [False] * 14
    assert paths[-3:] == [True] * 3
    report = _verify(engine)
    assert (report.intact, report.events) == (True, 44)

    _edit_details(engine, 40, {"n": 0})
    report = _verify(engine)
    assert (report.events, report.first_bad_seq) == (39, 40)

    older = _older_engine(engine)
    try:
        _edit_details(older, 8, {"n": 0})
    finally:
        older.dispose()
    report = _verify(engine)
    assert (report.events, report.first_bad_seq) == (7, 8)
