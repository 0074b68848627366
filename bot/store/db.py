"""Engine and sessions that give the same transactional guarantees on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from bot.store.types import canonical_json

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant shared by every jit-bot process; it names the advisory lock that serialises migrations.
MIGRATION_LOCK_KEY = 0x6A69745F6D696772
# Execution option of engines whose transactions only read (see read_scope).
READ_ONLY_OPTION = "jit_read_only"


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("JIT_DATABASE_URL: in-memory SQLite is not supported; name a file")
        _owner_only_file(Path(parsed.database))
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, json_serializer=canonical_json
        )
        _serialise_sqlite_writers(engine)
        return engine
    # No pool_pre_ping: it was a round trip before every transaction (15 % of the bot's time under
    # load). A connection the server dropped fails one transaction instead, and SQLAlchemy then
    # discards the whole pool. Background writers retry (leases, the outbox, the mint's store
    # retries); a click in that moment gets the bot's error reply and can be repeated.
    # JSON columns are written canonically (see canonical_json): PostgreSQL's json type (not jsonb)
    # keeps the text as given, SQLite's JSON is that text, and verify_chain splices it in as is.
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800, json_serializer=canonical_json)
    _keep_prepared_statements(engine)
    return engine


def _keep_prepared_statements(engine: Engine) -> None:
    """psycopg prepares a statement once it has run five times and keeps 100 per connection; the bot
    has more distinct statements than that (a multi-row INSERT per row count), and evicting one costs
    a DEALLOCATE, so a connection keeps more of them."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if hasattr(dbapi_connection, "prepared_max"):
            dbapi_connection.prepared_max = 1000


def _owner_only_file(path: Path) -> None:
    """The database holds encrypted tokens and the audit trail: create it readable by its owner only.

    SQLite gives the -wal and -shm files the permissions of the database file, so they follow.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s is readable by others (mode %o); it holds tokens and the audit trail", path, mode)
        return
    except FileNotFoundError:
        return  # no such directory: SQLite reports that better when it connects
    os.close(fd)


def _serialise_sqlite_writers(engine: Engine) -> None:
    """Every SQLite transaction that may write takes the write lock up front (BEGIN IMMEDIATE).

    pysqlite's default deferred transactions let two writers both read and then deadlock on the
    upgrade to a write lock; taking the lock first makes guarded updates behave as they do on
    PostgreSQL, where the row lock does the same job. Read-only transactions (read_scope) use a
    plain BEGIN: in WAL mode they read a snapshot without waiting for, or blocking, the writer.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    # Threads of this process queue on a lock instead of SQLite's busy handler, which sleeps and
    # polls; BEGIN IMMEDIATE still guards against other processes. Re-entrant so that a nested
    # transaction on the same thread fails on SQLite's busy timeout rather than hanging forever.
    writer = threading.RLock()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
            connection.info["jit_holds_writer"] = False
            return
        writer.acquire()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writer.release()
            raise
        connection.info["jit_holds_writer"] = True

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _on_end(connection: Any) -> None:
        if not connection.info.pop("jit_holds_writer", False):
            return
        try:
            writer.release()
        except RuntimeError:
            pass  # a rollback of a transaction whose BEGIN failed: nothing is held


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: committed when the block ends, rolled back if it raises."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_scope(engine: Engine) -> Iterator[Session]:
    """A transaction that only reads. On SQLite it takes no write lock, so pages, health probes and
    lookups never queue behind writers (nor make writers queue behind them).

    On PostgreSQL it is a READ ONLY transaction (the server refuses a write in it) that ends with
    COMMIT: psycopg forgets every prepared statement of a connection that rolls back, and these
    reads run after nearly every write, so ending them with ROLLBACK made each statement of the bot
    be parsed and planned afresh and cost a DEALLOCATE ALL round trip.
    """
    postgres = engine.dialect.name == "postgresql"
    with Session(_read_only_engine(engine), expire_on_commit=False) as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        if postgres:
            session.commit()
        else:
            session.rollback()


_READ_ONLY_ENGINE = "_jit_read_only_engine"


def _read_only_engine(engine: Engine) -> Engine:
    """The engine's read-only variant, made once: building an option engine costs more than most
    of the reads that use it (it was a tenth of the outbox pump's time)."""
    found: Engine | None = getattr(engine, _READ_ONLY_ENGINE, None)
    if found is None:
        options: dict[str, Any] = {READ_ONLY_OPTION: True}
        if engine.dialect.name == "postgresql":
            options["postgresql_readonly"] = True
        found = engine.execution_options(**options)
        setattr(engine, _READ_ONLY_ENGINE, found)
    return found


def health(engine: Engine) -> dict[str, str]:
    """The health probe's answer: a read that proves the database answers. It reports, never raises."""
    try:
        with read_scope(engine) as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return {"database": f"error: {type(exc).__name__}"}
    return {"database": "ok"}


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (what ``jit-bot serve`` does before serving).

    ``engine`` must carry the audit key (bind_audit_key): a revision may re-link the audit chain.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas starting together would both create the schema; the second waits here, then
            # finds it current. (SQLite is already serialised by BEGIN IMMEDIATE.)
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
