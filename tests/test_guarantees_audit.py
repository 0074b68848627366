"""The audit writer's own refusals: no secret-bearing detail, and no event without the key that links it.

Each test here fails when one line of the code that keeps the promise is broken (scripts/mutants
breaks them on purpose). They run against the real store on both databases.
"""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.domain.audit import AuditEventType
from bot.services.audit import record
from bot.store.audit import AuditKeyMissing, bind_audit_key, verify_chain
from bot.store.db import session_scope
from bot.store.models import AuditEvent
from bot.store.types import utcnow
from tests.world import AUDIT_KEY

KEY = base64.urlsafe_b64decode(AUDIT_KEY)
# Spelled out rather than imported: a test that read the code's own list would pass whatever it lost.
SECRET_BEARING = ["token", "access_token", "refresh_token", "client_secret", "secret", "password", "pickup_url", "url"]


def _events(engine: Engine) -> list[AuditEvent]:
    with Session(engine) as session:
        return list(session.exec(select(AuditEvent)).all())


@pytest.mark.parametrize("name", SECRET_BEARING)
def test_the_audit_writer_refuses_secret_bearing_details(engine: Engine, name: str) -> None:
    keyed = bind_audit_key(engine, KEY)
    with pytest.raises(ValueError, match="secret-bearing") as refused, session_scope(keyed) as session:
        record(
            AuditEventType.TOKEN_RECEIVED,
            session=session,
            at=utcnow(),
            actor="jit-bot",
            request_id=None,
            **{name: "s3cr3t-value-that-must-not-be-kept"},
        )
    assert "s3cr3t" not in str(refused.value), "the refusal does not repeat the secret"
    assert _events(engine) == []

    # What may be recorded still is, and the chain verifies.
    with session_scope(keyed) as session:
        record(AuditEventType.TOKEN_RECEIVED, session=session, at=utcnow(), actor="jit-bot", request_id=None, attempt=1)
    (event,) = _events(engine)
    assert event.details == {"attempt": 1}
    with Session(engine) as session:
        assert verify_chain(session=session, key=KEY).intact


def test_the_audit_writer_refuses_to_write_without_its_key(engine: Engine) -> None:
    # ``engine`` as it comes from make_engine: nothing bound. An event written now could not be verified.
    with pytest.raises(AuditKeyMissing), session_scope(engine) as session:
        record(AuditEventType.TOKEN_RECEIVED, session=session, at=utcnow(), actor="jit-bot", request_id=None, n=1)
    assert _events(engine) == [], "nothing was written, linked or not"
