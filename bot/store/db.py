"""Engine and sessions that give the same transactional guarantees on SQLite and PostgreSQL."""

from __future__ import annotations

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

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant shared by every jit-bot process; it names the advisory lock that serialises migrations.
MIGRATION_LOCK_KEY = 0x6A69745F6D696772


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("JIT_DATABASE_URL: in-memory SQLite is not supported; name a file")
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _serialise_sqlite_writers(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _serialise_sqlite_writers(engine: Engine) -> None:
    """Every SQLite transaction takes the write lock up front (BEGIN IMMEDIATE).

    pysqlite's default deferred transactions let two writers both read and then deadlock on the
    upgrade to a write lock; taking the lock first makes guarded updates behave as they do on
    PostgreSQL, where the row lock does the same job.
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
        writer.acquire()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writer.release()
            raise

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _on_end(_connection: Any) -> None:
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


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (what ``jit-bot serve`` does before serving)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas starting together would both create the schema; the second waits here, then
            # finds it current. (SQLite is already serialised by BEGIN IMMEDIATE.)
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
