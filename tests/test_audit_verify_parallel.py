"""verify_chain over two processes (a long trail, a read-only session) must give exactly the report of
one process: the same first bad event, the same problem, the same unkeyed prefix, tip and watched link,
wherever the trail is cut, edited or relinked, in either range or across the boundary between them."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, text, update
from sqlmodel import Session, col, select

import bot.store.audit as audit
from bot.domain.audit import AuditEventType
from bot.services.audit import record
from bot.store.audit import (
    GENESIS,
    bind_audit_key,
    canonical_row,
    event_link,
    legacy_event_link,
    verify_chain,
)
from bot.store.db import read_scope, session_scope
from bot.store.models import AuditEvent, AuditHead
from tests.world import AUDIT_KEY

KEY = base64.urlsafe_b64decode(AUDIT_KEY)
START = datetime(2026, 6, 1, 9, 30, tzinfo=UTC)
EVENTS = 12  # this process checks 1 to 6 (_FIRST_SHARE), the other 7 to 12


def _write(engine: Engine) -> None:
    with session_scope(bind_audit_key(engine, KEY)) as session:
        for n in range(EVENTS):
            record(
                AuditEventType.VOTE_CAST,
                session=session,
                at=START + timedelta(seconds=n),
                actor=f"U0VOTER{n}",
                request_id=f"R{n:09d}",
                choice="approve",
                n=n,
            )


def _relink(engine: Engine, unkeyed: Callable[[int], bool]) -> None:
    """Re-link every event, without the key where ``unkeyed(seq)``, as an old trail (or a rewrite) is."""
    with Session(engine) as session:
        link = GENESIS
        for event in session.exec(select(AuditEvent).order_by(col(AuditEvent.seq))).all():
            canonical = canonical_row(event)
            new = legacy_event_link(link, canonical) if unkeyed(event.seq) else event_link(KEY, link, canonical)
            session.execute(update(AuditEvent).where(col(AuditEvent.seq) == event.seq).values(prev_hash=link, hash=new))
            link = new
        session.execute(update(AuditHead).where(col(AuditHead.id) == 1).values(hash=link))
        session.commit()


def _alter(seq: int) -> Callable[[Engine], None]:
    def change(engine: Engine) -> None:
        with Session(engine) as session:
            session.execute(update(AuditEvent).where(col(AuditEvent.seq) == seq).values(actor="U0SOMEONE"))
            session.commit()

    return change


def _delete(seq: int) -> Callable[[Engine], None]:
    def change(engine: Engine) -> None:
        with Session(engine) as session:
            session.execute(delete(AuditEvent).where(col(AuditEvent.seq) == seq))
            session.commit()

    return change


def _unlink(seq: int) -> Callable[[Engine], None]:
    def change(engine: Engine) -> None:
        with Session(engine) as session:
            session.execute(update(AuditEvent).where(col(AuditEvent.seq) == seq).values(prev_hash="f" * 64))
            session.commit()

    return change


CHANGES: dict[str, Callable[[Engine], None]] = {
    "intact": lambda _engine: None,
    "altered-in-the-first-range": _alter(3),
    "altered-first-of-the-second-range": _alter(7),
    "altered-in-the-second-range": _alter(10),
    "last-of-the-first-range-deleted": _delete(6),
    "first-of-the-second-range-deleted": _delete(7),
    "tail-deleted": _delete(12),
    "unlinked-across-the-boundary": _unlink(7),
    "unlinked-in-the-second-range": _unlink(9),
    "unkeyed-prefix-into-the-second-range": lambda engine: _relink(engine, lambda seq: seq <= 8),
    "unkeyed-prefix-in-the-first-range": lambda engine: _relink(engine, lambda seq: seq <= 4),
    "unkeyed-after-keyed-in-the-second-range": lambda engine: _relink(engine, lambda seq: seq <= 2 or seq == 9),
    "unkeyed-after-keyed-across-the-boundary": lambda engine: _relink(engine, lambda seq: seq >= 7),
}


def _in_one_process(engine: Engine, watch: int | None) -> audit.ChainReport:
    with Session(engine) as session:  # not read-only: verify_chain stays in this process
        return verify_chain(session=session, key=KEY, watch=watch)


def _in_two_processes(engine: Engine, watch: int | None) -> audit.ChainReport:
    with read_scope(engine) as session:
        if engine.dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        assert audit._parallel_split(session) == (6, max(session.exec(select(col(AuditEvent.seq))).all()))
        return verify_chain(session=session, key=KEY, watch=watch)


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_two_processes_report_what_one_does(engine: Engine, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    monkeypatch.setattr(audit, "_PARALLEL_FROM", 2)
    _write(engine)
    CHANGES[change](engine)
    # Watching an event of the second range: its link comes from the other process.
    for watch in (9, 3) if change == "intact" else (9,):
        alone = _in_one_process(engine, watch)
        assert _in_two_processes(engine, watch) == alone
    if change == "intact":
        assert alone.intact and alone.events == EVENTS and alone.watched_hash is not None


def test_a_short_trail_or_a_session_that_may_write_or_see_anew_stays_in_one_process(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(engine)
    with read_scope(engine) as session:
        if engine.dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        assert audit._parallel_split(session) is None  # 12 events
    monkeypatch.setattr(audit, "_PARALLEL_FROM", 2)
    with Session(engine) as session:
        assert audit._parallel_split(session) is None  # a session that may have written what others cannot see
    if engine.dialect.name == "postgresql":
        with read_scope(engine) as session:
            assert audit._parallel_split(session) is None  # READ COMMITTED: each statement sees anew


def test_an_edit_in_the_first_range_is_the_report_even_when_the_second_range_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Details that are not JSON at all (SQLite keeps any text) in the second range do not hide an edit
    in the first. (One process raises here, as it always has: it decodes the batch that holds both.)"""
    from bot.store.db import make_engine, migrate

    monkeypatch.setattr(audit, "_PARALLEL_FROM", 2)
    engine = make_engine(f"sqlite:///{tmp_path / 'jit.db'}")
    migrate(engine)
    try:
        _write(engine)
        _alter(3)(engine)
        with engine.begin() as connection:
            connection.execute(text("UPDATE audit_event SET details = 'not json' WHERE seq = 10"))
        with read_scope(engine) as session:
            report = verify_chain(session=session, key=KEY)
        assert (report.first_bad_seq, report.events) == (3, 2)
        assert report.problem == "event 3 was altered after it was written (or the key is wrong)"
    finally:
        engine.dispose()
