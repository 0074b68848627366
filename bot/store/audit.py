"""The append-only, keyed, hash-chained audit trail.

Each event's link is ``HMAC-SHA256(JIT_AUDIT_KEY, prev_link + canonical(event))``. The key lives
outside the database, so someone who can write to the database can delete or edit events but
cannot compute the links that would make the edit verify. The key reaches this module bound to
the engine (``bind_audit_key``), so every transaction of the bot appends with it.

Trails written before the key existed start with events linked by plain SHA-256. Verifying reports
them as unkeyed (they prove nothing against someone with database access), and only an operator's
``jit-bot audit rekey`` re-links them: the bot never does it by itself, since an automatic re-keying
would also launder a trail someone had rewritten in the old, keyless form.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Connection, Engine, func, insert, update
from sqlalchemy import event as sa_event
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from bot.domain.audit import FORBIDDEN_DETAIL_KEYS, AuditEventType
from bot.store.db import READ_ONLY_OPTION
from bot.store.models import AuditEvent, AuditForward, AuditHead
from bot.store.types import canonical_json

GENESIS = "0" * 64
AUDIT_KEY_OPTION = "jit_audit_key"
# Set on the engine when JIT_AUDIT_WEBHOOK_URL is: each event then also gets its audit_forward row,
# in the same INSERT round trip, so no event commits without being queued for the receiver.
AUDIT_FORWARD_OPTION = "jit_audit_forward"


class AuditKeyMissing(RuntimeError):
    """An audit event was about to be written without the key that links it."""


def bind_audit_key(engine: Engine, key: bytes) -> Engine:
    """The same engine (same pool), whose connections carry the audit key."""
    return engine.execution_options(**{AUDIT_KEY_OPTION: key})


def bind_audit_forwarding(engine: Engine) -> Engine:
    """The same engine, whose transactions queue every audit event they append for the webhook."""
    return engine.execution_options(**{AUDIT_FORWARD_OPTION: True})


def audit_key_of(connection: Connection) -> bytes:
    key = connection.get_execution_options().get(AUDIT_KEY_OPTION)
    if not isinstance(key, bytes) or not key:
        raise AuditKeyMissing("no audit key is bound to this engine (bot.store.audit.bind_audit_key)")
    return key


def canonical_event(
    *, seq: int, at: datetime, event_type: str, actor: str, request_id: str | None, details: dict[str, Any]
) -> str:
    return canonical_json(
        {
            "seq": seq,
            "at": at.isoformat(timespec="microseconds"),
            "event_type": event_type,
            "actor": actor,
            "request_id": request_id,
            "details": details,
        }
    )


class StoredEvent(Protocol):
    """What a link is computed over, as read back: an ``AuditEvent`` or an ``ExportedEvent``."""

    @property
    def seq(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def event_type(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def details(self) -> dict[str, Any]: ...


def canonical_row(event: StoredEvent) -> str:
    """The canonical form of a stored event (what its link was computed over)."""
    return canonical_event(
        seq=event.seq,
        at=event.at,
        event_type=event.event_type,
        actor=event.actor,
        request_id=event.request_id,
        details=event.details,
    )


def event_link(key: bytes, prev_hash: str, canonical: str) -> str:
    # hmac.digest: the one-shot OpenSSL HMAC, the same value as hmac.new(...).hexdigest() for less.
    return hmac.digest(key, (prev_hash + canonical).encode(), "sha256").hex()


def legacy_event_link(prev_hash: str, canonical: str) -> str:
    """The unkeyed link of trails written before the key existed; only used to upgrade them."""
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


_PENDING = "jit_pending_audit"


def append_event(
    *,
    session: Session,
    at: datetime,
    event_type: str,
    actor: str,
    request_id: str | None,
    details: dict[str, Any],
) -> None:
    """Append one event to the chain, as part of the session's transaction.

    The event is linked and written when the transaction commits, not now: linking takes the
    chain's head row lock, which serialises every writer on PostgreSQL, so it is taken for the last
    moment of a transaction rather than for all the work that follows an event. A transaction that
    rolls back writes nothing. A secret-bearing detail is refused at once.
    """
    leaked = FORBIDDEN_DETAIL_KEYS.intersection(details)
    if leaked:
        raise ValueError(f"refusing to audit secret-bearing keys: {sorted(leaked)}")
    # Round-trip through JSON now, so the link is over exactly what the database will give back.
    stored_details = json.loads(json.dumps(details, sort_keys=True))
    pending: list[dict[str, Any]] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        if not sa_event.contains(session, "before_commit", _write_pending):
            sa_event.listen(session, "before_commit", _write_pending)
            sa_event.listen(session, "after_rollback", _forget_pending)
    pending.append(
        {"at": at, "event_type": event_type, "actor": actor, "request_id": request_id, "details": stored_details}
    )


def _forget_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _write_pending(session: Session) -> None:
    """Link and write the transaction's events (plain SQL: the unit-of-work bookkeeping of ORM
    objects was most of the cost of an event)."""
    pending: list[dict[str, Any]] = session.info.pop(_PENDING, None) or []
    if not pending:
        return
    # The session flushes its objects after before_commit: flush them now, so that their writes are
    # not made while this transaction holds the head row. From here on the statements run on the
    # connection, without the ORM: events never become objects.
    session.flush()
    connection = session.connection()
    key = audit_key_of(connection)
    # FOR UPDATE serialises appenders on PostgreSQL; SQLite's BEGIN IMMEDIATE already did.
    head_seq, head_hash = connection.execute(
        select(AuditHead.seq, AuditHead.hash).where(col(AuditHead.id) == 1).with_for_update()
    ).one()
    seq, link = head_seq, head_hash
    rows = []
    for item in pending:
        seq += 1
        canonical = canonical_event(
            seq=seq,
            at=item["at"],
            event_type=item["event_type"],
            actor=item["actor"],
            request_id=item["request_id"],
            details=item["details"],
        )
        previous, link = link, event_link(key, link, canonical)
        rows.append({**item, "seq": seq, "prev_hash": previous, "hash": link})
    move_head = update(AuditHead).where(col(AuditHead.id) == 1).values(seq=seq, hash=link)
    forward = None
    if connection.get_execution_options().get(AUDIT_FORWARD_OPTION):
        # Due at once: the transaction's last event's moment is "now" on the writer's own clock.
        now = pending[-1]["at"]
        forward = insert(AuditForward).values(
            [
                {"seq": row["seq"], "status": "pending", "attempts": 0, "refusals": 0, "next_attempt_at": now}
                | {"created_at": now}
                for row in rows
            ]
        )
    if connection.dialect.name == "postgresql":
        # One round trip for the events and the head: every round trip here is time the head-row
        # lock is held, and all writers queue on it. (SQLite has no data-modifying WITH; its lock is
        # in-process and its round trips cost nothing.)
        statement = insert(AuditEvent).values(rows).add_cte(move_head.returning(col(AuditHead.id)).cte("moved_head"))
        if forward is not None:
            statement = statement.add_cte(forward.returning(col(AuditForward.seq)).cte("queued_forward"))
        connection.execute(statement)
        return
    connection.execute(insert(AuditEvent), rows)
    connection.execute(move_head)
    if forward is not None:
        connection.execute(forward)


@dataclass(frozen=True)
class ChainReport:
    events: int
    first_bad_seq: int | None
    problem: str | None
    # How many of the first events are linked without the key (a trail from before the key existed,
    # or one someone rewrote without it): they verify as a chain, but not as untouched.
    unkeyed: int = 0
    tip: str = GENESIS
    # The link of the event verify_chain was asked to watch (a head published earlier), if the chain has it.
    watched_hash: str | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


def iter_events(*, session: Session, request_id: str | None = None, batch: int = 1000) -> Iterator[AuditEvent]:
    last = 0
    while True:
        query = select(AuditEvent).where(col(AuditEvent.seq) > last)
        if request_id is not None:
            query = query.where(AuditEvent.request_id == request_id)
        rows = session.exec(query.order_by(col(AuditEvent.seq)).limit(batch)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def first_event_at(*, session: Session, request_id: str, event_type: AuditEventType) -> datetime | None:
    """When the request's first event of this type was recorded (by ix_audit_event_request_id), or None."""
    at = session.exec(
        select(AuditEvent.at)
        .where(AuditEvent.request_id == request_id, AuditEvent.event_type == event_type.value)
        .order_by(col(AuditEvent.seq))
        .limit(1)
    ).first()
    return at


def verify_chain(*, session: Session, key: bytes, watch: int | None = None) -> ChainReport:
    """Recompute every link with the key; an edited, removed, reordered or inserted event breaks the
    chain from there on, and so does a chain rebuilt without the key after its first keyed event.
    A prefix linked without the key is counted in ``unkeyed``, not passed as intact. ``watch``: the
    seq of an event whose link to report (``watched_hash``), to compare with a head published before.

    A long trail read in a read-only session (``read_scope``: what it reads is committed, so another
    connection reads the same) is checked in two processes, each over a range of seqs: each link
    needs only its stored predecessor, so a range is checked on its own, the link across the ranges
    is checked here, and the outcomes are replayed in seq order, giving the report one process would."""
    through = _parallel_split(session)
    if through is None:
        walks = [_walk(session, key=key, after=0, through=None, watch=watch)]
    else:
        middle, last = through
        bind = session.get_bind()
        engine = bind if isinstance(bind, Engine) else bind.engine
        # To the child on its stdin, never on its command line, where any user could read it.
        url = engine.url.render_as_string(hide_password=False)
        # A plain child interpreter, not multiprocessing: its spawn re-runs the caller's __main__.
        worker = subprocess.Popen(
            [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
        )
        assert worker.stdin is not None
        with worker:
            worker.stdin.write(pickle.dumps((list(sys.path), (url, key, middle, last, watch))))
            worker.stdin.close()
            first = _walk(session, key=key, after=0, through=middle, watch=watch)
            # A failure in the first range is the report, whatever the other found (or raised).
            failed = first.codes[-1:] in (bytes([_ALTERED]), bytes([_MISSING]), bytes([_BROKEN]))
            output = worker.stdout.read() if worker.stdout is not None else b""
            if worker.wait() != 0 and not failed:
                raise RuntimeError(f"the audit verify worker exited {worker.returncode}")
            walks = [first] if failed else [first, _Walk(*pickle.loads(output))]
    return _replay(walks, session.get(AuditHead, 1))


_WORKER = (
    "import pickle, sys\n"
    "path, arguments = pickle.load(sys.stdin.buffer)\n"
    "sys.path[:0] = path\n"
    "from bot.store.audit import _walk_elsewhere\n"
    "sys.stdout.buffer.write(pickle.dumps(tuple(_walk_elsewhere(*arguments))))\n"
)
# Below this many events, starting a second process costs more than it saves (at 300,000 on a
# saturated machine, one process was as quick or quicker).
_PARALLEL_FROM = 500_000
# The share of the trail this process checks while the other one starts and checks the rest.
_FIRST_SHARE = 0.55


def _parallel_split(session: Session) -> tuple[int, int] | None:
    """``(middle, last)``: this process checks seqs up to middle, the other after it up to last; None
    for one process: a short trail, a session that may see writes no other connection would, or one
    whose statements each see the database anew (PostgreSQL's READ COMMITTED: the last seq and the
    head row, read at either end, could disagree about events appended meanwhile)."""
    connection = session.connection()
    if not connection.get_execution_options().get(READ_ONLY_OPTION):
        return None
    if connection.dialect.name == "sqlite":
        if connection.engine.url.database in (None, "", ":memory:"):
            return None
    elif connection.get_isolation_level() not in ("REPEATABLE READ", "SERIALIZABLE"):
        return None
    table = AuditEvent.__table__  # type: ignore[attr-defined]
    last = session.execute(core_select(func.max(table.c.seq))).scalar()
    if last is None or last < _PARALLEL_FROM:
        return None
    return int(last * _FIRST_SHARE), last


class _Walk(NamedTuple):
    """One range's outcome: ``codes`` per event from seq ``after + 1`` on, up to and including the first
    that fails whatever came before it (missing, not linked to its predecessor, altered)."""

    after: int
    through: int | None
    codes: bytes
    first_prev: str | None
    tip: str | None
    watched: str | None


_KEYED, _UNKEYED, _ALTERED, _MISSING, _BROKEN = b"kuamb"


def _walk(session: Session, *, key: bytes, after: int, through: int | None, watch: int | None) -> _Walk:
    codes = bytearray()
    expected = after + 1
    first_prev: str | None = None
    prev: str | None = None
    watched: str | None = None
    compare = hmac.compare_digest
    for seq, stored_prev, link, canonical in _stored_links(session=session, key=key, after=after, through=through):
        if seq != expected:
            codes.append(_MISSING)
            break
        if prev is None:
            first_prev = stored_prev  # checked by _replay against the link before the range
        elif stored_prev != prev:
            codes.append(_BROKEN)
            break
        if canonical is None:
            # Its keyed link was recomputed from the stored text and matched (_stored_links).
            codes.append(_KEYED)
        elif compare(event_link(key, stored_prev, canonical), link):
            codes.append(_KEYED)
        elif compare(legacy_event_link(stored_prev, canonical), link):
            codes.append(_UNKEYED)  # passes only before the first keyed event (_replay)
        else:
            codes.append(_ALTERED)
            break
        if seq == watch:
            watched = link
        prev = link
        expected += 1
    return _Walk(after, through, bytes(codes), first_prev, prev, watched)


def _walk_elsewhere(url: str, key: bytes, after: int, through: int, watch: int | None) -> _Walk:
    """_walk in the other process, on a connection of its own."""
    from bot.store.db import make_engine, read_scope

    engine = make_engine(url)
    try:
        with read_scope(engine) as session:
            return _walk(session, key=key, after=after, through=through, watch=watch)
    finally:
        engine.dispose()


def _replay(walks: list[_Walk], head: AuditHead | None) -> ChainReport:
    """The report of the ranges' outcomes taken in seq order, as one walk over the trail makes it."""
    watched: str | None = None
    prev_hash = GENESIS
    count = 0
    unkeyed = 0
    keyed_seen = False
    for walk in walks:
        if count < walk.after:
            # The range before ended early: the trail ends there, or the next event is missing.
            if not walk.codes:
                break
            return ChainReport(count, count + 1, f"event {count + 1} is missing", unkeyed)
        codes = walk.codes
        if codes and codes[0] != _MISSING and walk.first_prev != prev_hash:
            seq = count + 1
            return ChainReport(count, seq, f"event {seq} does not link to event {seq - 1}", unkeyed)
        if codes.count(_KEYED) == len(codes):
            # The whole range keyed (nearly always): nothing to replay one by one.
            keyed_seen = keyed_seen or bool(codes)
            count += len(codes)
        else:
            for code in codes:
                seq = count + 1
                if code == _MISSING:
                    return ChainReport(count, seq, f"event {seq} is missing", unkeyed)
                if code == _BROKEN:
                    return ChainReport(count, seq, f"event {seq} does not link to event {seq - 1}", unkeyed)
                if code == _KEYED:
                    keyed_seen = True
                elif code == _UNKEYED and not keyed_seen:
                    unkeyed += 1
                else:
                    return ChainReport(
                        count, seq, f"event {seq} was altered after it was written (or the key is wrong)", unkeyed
                    )
                count += 1
        if walk.tip is not None:
            prev_hash = walk.tip
        watched = walk.watched or watched
    if head is not None and (head.seq != count or head.hash != prev_hash):
        return ChainReport(
            count,
            count + 1,
            f"the chain ends at event {count} but {head.seq} were written",
            unkeyed,
            prev_hash,
            watched,
        )
    return ChainReport(count, None, None, unkeyed, prev_hash, watched)


# PostgreSQL formats a timestamp as canonical_event does (isoformat, microseconds, "+00:00") itself;
# a year before 1 AD (which Python cannot hold) gives NULL, and so the full path.
_PG_ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'
_RAW_COLUMNS = (
    "event_type, actor, request_id, {details}, prev_hash, hash FROM audit_event"
    " WHERE seq > {p} AND seq <= {p} ORDER BY seq LIMIT {p}"
)
_RAW_SQLITE = "SELECT seq, at, " + _RAW_COLUMNS.format(details="details", p="?")
_RAW_POSTGRES = (
    "SELECT seq, CASE WHEN at >= '0001-01-01 00:00:00+00'::timestamptz"
    f" THEN to_char(at AT TIME ZONE 'UTC', '{_PG_ISO_UTC}') END, "
    + _RAW_COLUMNS.format(details="details::text", p="%s")
)
_VERIFY_BATCH = 5000
_LAST_SEQ = 2**31 - 1  # the seq column is an INTEGER
# After a batch that was mostly not canonical (a trail written before JSON columns were written
# canonically), this many batches go straight to the full path, doubling up to the last.
_FULL_PATH_RUNS = (1, 2, 4, 8, 16, 32, 64)


def _stored_links(
    *, session: Session, key: bytes, after: int = 0, through: int | None = None
) -> Iterator[tuple[int, Any, Any, str | None]]:
    """``(seq, prev_hash, hash, canonical)`` of every stored event in seq order; ``canonical`` is None
    when the event's keyed link, recomputed over its stored ``prev_hash``, matched its ``hash``
    already, else the event's canonical form as ``canonical_row`` makes it, for the caller to check.

    The fast path reads ``at`` and ``details`` as the database's text and splices them into the
    canonical form without decoding anything. That is sound because a match proves the stored event:
    the link is an HMAC with a key the database never holds, over exactly the spliced string, and
    every string ever linked with the key is a canonical_event. In the spliced string, the actor,
    event_type and request_id are JSON string literals (or null), each ending at its first unescaped
    quote, the seq is the stored integer and ``at`` has the canonical's fixed length (32 characters),
    so each stored piece can only sit where that canonical form has it: the stored ``details`` text is
    byte-for-byte its details' canonical JSON, which decodes to those details, and the stored ``at``
    is that time. A mismatch proves nothing (the text may only be written differently, by an older
    version), so those events are read again as typed values and given in full, as before."""
    connection = session.connection()
    sqlite = connection.dialect.name == "sqlite"
    # The driver's own cursor, on the session's connection (so in its transaction and snapshot):
    # plain tuples, without a result object's processing per row, which cost a sixth of a verify.
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    # SQLite holds a time as "YYYY-MM-DD HH:MM:SS.ffffff" (UTC: SQLAlchemy's storage format for
    # UTCDateTime), a JSON value as its text. PostgreSQL's json (not jsonb) keeps the text as it was
    # written; it formats the time itself.
    raw = _RAW_SQLITE if sqlite else _RAW_POSTGRES
    try:
        yield from _checked_batches(
            session, cursor, raw, key=key, sqlite=sqlite, after=after, through=_LAST_SEQ if through is None else through
        )
    finally:
        cursor.close()


def _checked_batches(
    session: Session, cursor: Any, raw: str, *, key: bytes, sqlite: bool, after: int, through: int
) -> Iterator[tuple[int, Any, Any, str | None]]:
    digest = hmac.digest
    compare = hmac.compare_digest
    quote = encode_basestring_ascii
    last = after
    full_path_batches = 0
    runs = 0
    while True:
        if full_path_batches:
            full_path_batches -= 1
            events = _exported_batch(session, after=last, batch=_VERIFY_BATCH, through=through)
            if not events:
                return
            for event in events:
                yield event.seq, event.prev_hash, event.hash, canonical_row(event)
            last = events[-1].seq
            continue
        cursor.execute(raw, (last, through, _VERIFY_BATCH))
        rows = cursor.fetchall()
        if not rows:
            return
        proven: list[bool] = []
        for seq, at, event_type, actor, request_id, details, prev, link in rows:
            try:
                if sqlite:
                    if len(at) != 26 or at[10] != " ":
                        proven.append(False)
                        continue
                    at = at[:10] + "T" + at[11:] + "+00:00"
                elif len(at) != 32:
                    proven.append(False)
                    continue
                message = "".join(
                    (
                        prev,
                        '{"actor":',
                        quote(actor),
                        ',"at":"',
                        at,
                        '","details":',
                        details,
                        ',"event_type":',
                        quote(event_type),
                        ',"request_id":',
                        "null" if request_id is None else quote(request_id),
                        ',"seq":',
                        int.__repr__(seq),
                        "}",
                    )
                )
                proven.append(compare(digest(key, message.encode(), "sha256").hex(), link))
            except TypeError:  # a value of another type than the column's (SQLite keeps what it is given)
                proven.append(False)
        misses = proven.count(False)
        full: dict[int, ExportedEvent] = {}
        if misses:
            first = next(row[0] for row, ok in zip(rows, proven, strict=True) if not ok)
            full = {
                event.seq: event
                for event in _exported_batch(session, after=first - 1, batch=_VERIFY_BATCH, through=rows[-1][0])
            }
        for row, ok in zip(rows, proven, strict=True):
            if ok:
                yield row[0], row[6], row[7], None
            else:
                found = full.get(row[0])
                if found is None:  # gone since the first read (a statement's own snapshot): no proof
                    yield row[0], row[6], row[7], ""
                else:
                    yield found.seq, found.prev_hash, found.hash, canonical_row(found)
        last = rows[-1][0]
        if misses * 2 > len(rows):
            full_path_batches = _FULL_PATH_RUNS[min(runs, len(_FULL_PATH_RUNS) - 1)]
            runs += 1
        else:
            runs = 0


def head_problem(report: ChainReport, seq: int, link: str) -> str | None:
    """Why an intact chain is not the one whose head was published as ``seq:link``, or None.

    The chain may have grown since; it must still hold that event with that link. Fewer events means
    its tail was cut off; another link means it was rewritten from there (with the key, or it would
    not verify at all)."""
    if report.events < seq:
        return f"the trail ends at event {report.events}, before the expected head {seq}: events were removed"
    if report.watched_hash is None or not hmac.compare_digest(report.watched_hash, link):
        shown = (report.watched_hash or "")[:16]
        return f"event {seq}'s link is {shown}…, not the expected {link[:16]}…: the trail was rewritten"
    return None


class ExportedEvent(NamedTuple):
    # A tuple, not a frozen dataclass: made once per event of a verify or an export, whose
    # object.__setattr__ per field cost more than the event's HMAC.
    seq: int
    at: datetime
    event_type: str
    actor: str
    request_id: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


def export_events(
    *, session: Session, since: datetime | None, until: datetime | None, batch: int = 2000, after: int = 0
) -> Iterator[ExportedEvent]:
    """Events in seq order within [since, until), fetched ``batch`` rows at a time by seq (the primary
    key), without the ORM: memory stays flat however long the trail is. ``after``: start past that seq."""
    last = after
    while True:
        rows = _exported_batch(session, after=last, batch=batch, since=since, until=until)
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def _exported_batch(
    session: Session,
    *,
    after: int,
    batch: int,
    through: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[ExportedEvent]:
    """Up to ``batch`` events after seq ``after`` (and up to ``through``), as typed values."""
    table = AuditEvent.__table__  # type: ignore[attr-defined]
    query = core_select(
        table.c.seq,
        table.c.at,
        table.c.event_type,
        table.c.actor,
        table.c.request_id,
        table.c.details,
        table.c.prev_hash,
        table.c.hash,
    ).where(table.c.seq > after)
    if through is not None:
        query = query.where(table.c.seq <= through)
    if since is not None:
        query = query.where(table.c.at >= since)
    if until is not None:
        query = query.where(table.c.at < until)
    return [ExportedEvent(*row) for row in session.execute(query.order_by(table.c.seq).limit(batch)).all()]


def first_event_is_unkeyed(*, session: Session, key: bytes) -> bool:
    """A cheap look at event 1: does this trail still start without the key? (Said at start-up.)"""
    first = session.exec(select(AuditEvent).where(col(AuditEvent.seq) == 1)).first()
    if first is None:
        return False
    canonical = canonical_row(first)
    return not hmac.compare_digest(event_link(key, GENESIS, canonical), first.hash)


def rekey(*, session: Session, key: bytes, at: datetime) -> ChainReport:
    """Re-link an intact trail whose first events are unkeyed, all with the key, and record it.

    Returns the report of the trail as it was (its ``tip`` is the old last link, for the operator to
    compare with a record kept elsewhere). Raises ValueError when the trail is broken or already keyed.
    """
    before = verify_chain(session=session, key=key)
    if not before.intact:
        raise ValueError(f"the audit trail is broken at event {before.first_bad_seq}: {before.problem}")
    if before.unkeyed == 0:
        raise ValueError("every event is already linked with the key; nothing to re-key")
    prev_hash = GENESIS
    for event in list(iter_events(session=session)):
        canonical = canonical_row(event)
        link = event_link(key, prev_hash, canonical)
        session.execute(
            update(AuditEvent).where(col(AuditEvent.seq) == event.seq).values(prev_hash=prev_hash, hash=link)
        )
        prev_hash = link
    session.execute(update(AuditHead).where(col(AuditHead.id) == 1).values(hash=prev_hash))
    session.expire_all()
    append_event(
        session=session,
        at=at,
        event_type=AuditEventType.AUDIT_CHAIN_KEYED.value,
        actor="jit-bot audit rekey",
        request_id=None,
        details={"relinked_events": before.events, "unkeyed_events": before.unkeyed, "previous_tip": before.tip},
    )
    return before
