"""What read_scope promises: it never writes, and on PostgreSQL it keeps the connection's prepared statements."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select

from bot.store.db import make_engine, migrate, read_scope, session_scope
from bot.store.models import AccessRequest
from tests.world import fresh_postgres_database


@pytest.fixture
def postgres_engine() -> Iterator[Engine]:
    admin_url = os.environ.get("JIT_TEST_POSTGRES_URL")
    if not admin_url:
        pytest.fail("JIT_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which starts PostgreSQL")
    with fresh_postgres_database(admin_url) as url:
        engine = make_engine(url)
        migrate(engine)
        yield engine
        engine.dispose()


def test_a_write_in_a_read_scope_is_never_kept(engine: Engine) -> None:
    # PostgreSQL refuses it (READ ONLY transaction); SQLite's read scope rolls back.
    refused = DBAPIError if engine.dialect.name == "postgresql" else ()
    with contextlib.suppress(*([refused] if refused else [])), read_scope(engine) as session:
        session.execute(text("UPDATE audit_head SET seq = seq + 41 WHERE id = 1"))
    with read_scope(engine) as session:
        assert session.execute(text("SELECT seq FROM audit_head WHERE id = 1")).scalar_one() == 0


def test_postgres_refuses_a_write_in_a_read_scope(postgres_engine: Engine) -> None:
    with pytest.raises(DBAPIError, match="read-only transaction"), read_scope(postgres_engine) as session:
        session.execute(text("UPDATE audit_head SET seq = seq WHERE id = 1"))


def test_reads_keep_the_connections_prepared_statements(postgres_engine: Engine) -> None:
    """psycopg forgets a connection's prepared statements when it rolls back; reads must not roll back,
    or every statement of the bot is parsed and planned afresh (and a DEALLOCATE ALL is sent)."""
    query = select(AccessRequest.id).where(col(AccessRequest.status) == "pending")
    # Sequential use of the pool hands back the same connection each time.
    for _ in range(6):  # psycopg prepares a statement on its fifth execution
        with read_scope(postgres_engine) as session:
            session.exec(query).all()
    with read_scope(postgres_engine) as session:
        prepared = session.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one()
    with session_scope(postgres_engine) as session:
        still = session.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one()
    assert prepared >= 1 and still >= 1, (prepared, still)
