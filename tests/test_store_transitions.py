"""Status changes go through one helper that enforces the tables, guards the update, and audits the winner."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, update
from sqlalchemy import event as sa_event
from sqlmodel import Session, select

from bot.domain.audit import AuditEventType
from bot.domain.policy import Policy
from bot.domain.status import GRANT_TRANSITIONS, REQUEST_TRANSITIONS, GrantStatus, IllegalTransition, RequestStatus
from bot.store.audit import bind_audit_key
from bot.store.db import session_scope
from bot.store.models import AccessRequest, AuditEvent
from bot.store.transitions import Audit, move_grant, move_request
from tests.world import APPROVERS_CHANNEL, AUDIT_KEY, REQUESTER

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def keyed(engine: Engine) -> Iterator[Engine]:
    yield bind_audit_key(engine, base64.urlsafe_b64decode(AUDIT_KEY))


def _request(engine: Engine, status: RequestStatus = RequestStatus.PENDING) -> str:
    with session_scope(engine) as session:
        _add_request(session, "R000000001", status)
    return "R000000001"


def _add_request(session: Session, request_id: str, status: RequestStatus = RequestStatus.PENDING) -> None:
    session.add(
        AccessRequest(
            id=request_id,
            requester_slack_id=REQUESTER,
            requester_subject="alice",
            resource="prod-db",
            audience="https://db.internal.example",
            scopes="read",
            duration_seconds=60,
            reason="test",
            approvals_required=1,
            approver_channel=APPROVERS_CHANNEL,
            status=status.value,
            created_at=NOW,
            updated_at=NOW,
        )
    )


def _events(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return [e.event_type for e in session.exec(select(AuditEvent)).all()]


def test_the_winner_moves_and_audits_once_and_the_loser_is_told(keyed: Engine) -> None:
    request_id = _request(keyed)
    event = Audit(AuditEventType.REQUEST_CANCELLED, actor=REQUESTER)

    def cancel() -> bool:
        """One attempt, in its own transaction, to move the request from pending to cancelled."""
        with session_scope(keyed) as session:
            pending, cancelled = RequestStatus.PENDING, RequestStatus.CANCELLED
            return move_request(
                session=session, request_id=request_id, source=pending, target=cancelled, now=NOW, event=event
            )

    first, second = cancel(), cancel()
    assert (first, second) == (True, False)
    assert _events(keyed) == ["request_cancelled"], "only the winner's move is audited"


def test_a_request_move_the_table_does_not_allow_raises_and_changes_nothing(keyed: Engine) -> None:
    request_id = _request(keyed)
    illegal = [(s, t) for s in RequestStatus for t in RequestStatus if t not in REQUEST_TRANSITIONS[s]]
    assert (RequestStatus.PENDING, RequestStatus.ACTIVE) in illegal and (
        RequestStatus.FAILED,
        RequestStatus.ACTIVE,
    ) in illegal
    for source, target in illegal:
        with session_scope(keyed) as session:
            session.execute(update(AccessRequest).values(status=source.value))
        with pytest.raises(IllegalTransition), session_scope(keyed) as session:
            move_request(session=session, request_id=request_id, source=source, target=target, now=NOW, event=None)
        with Session(keyed) as session:
            stored = session.get(AccessRequest, request_id)
            assert stored is not None and stored.status == source.value, (source, target)
    assert _events(keyed) == []


def test_grant_moves_the_table_does_not_allow_raise(keyed: Engine) -> None:
    illegal = [(s, t) for s in GrantStatus for t in GrantStatus if t not in GRANT_TRANSITIONS[s]]
    assert (GrantStatus.REVOKED, GrantStatus.ACTIVE) in illegal
    for source, target in illegal:
        with pytest.raises(IllegalTransition), session_scope(keyed) as session:
            move_grant(session=session, request_id="R000000001", source=source, target=target, now=NOW, event=None)


def test_revoke_now_ends_the_pickup_link_before_the_engine_gets_to_the_grant(keyed: Engine) -> None:
    from datetime import timedelta

    from bot.store import grants as grant_store
    from bot.store.crypto import pickup_hash
    from bot.store.models import Grant

    request_id = _request(keyed, RequestStatus.ACTIVE)
    later = NOW + timedelta(minutes=30)
    with session_scope(keyed) as session:
        session.add(
            Grant(
                request_id=request_id,
                status=GrantStatus.ACTIVE.value,
                audience="https://db.internal.example",
                granted_scopes="read",
                token_type="Bearer",
                token_ciphertext=b"ciphertext",
                token_fingerprint="sha256:00",
                issued_at=NOW,
                expires_at=later,
                pickup_hash=pickup_hash("the-link"),
                pickup_expires_at=NOW + timedelta(minutes=10),
            )
        )
    with session_scope(keyed) as session:
        assert grant_store.expire_now(
            session=session, request_id=request_id, now=NOW + timedelta(minutes=1), by=REQUESTER
        )
    # The sweep has not claimed it yet (all revocation workers busy, say): the link is already dead.
    with session_scope(keyed) as session:
        assert not grant_store.claim_pickup(
            session=session, hashed=pickup_hash("the-link"), now=NOW + timedelta(minutes=1)
        )
        # It still exists, so that its visitor is told the access ended rather than "no such link";
        # even a clock read from before the revocation cannot claim it.
        assert grant_store.pickup_exists(session=session, hashed=pickup_hash("the-link"))
        assert not grant_store.claim_pickup(session=session, hashed=pickup_hash("the-link"), now=NOW)
    # Ended early once, it stays ended by whoever ended it: a second Revoke now (or one racing the
    # context check) changes nothing, so its caller audits nothing and answers "already being revoked".
    with session_scope(keyed) as session:
        assert not grant_store.expire_now(
            session=session, request_id=request_id, now=NOW + timedelta(minutes=2), by="context_ended"
        )
        grant = session.get(Grant, request_id)
        assert grant is not None
        assert (grant.revoke_requested_by, grant.expires_at) == (REQUESTER, NOW + timedelta(minutes=1))


def test_audit_events_are_linked_at_commit_and_a_rollback_writes_none(keyed: Engine) -> None:
    from bot.store.audit import append_event, verify_chain

    now = datetime.now(UTC)
    with pytest.raises(RuntimeError), session_scope(keyed) as session:
        append_event(session=session, at=now, event_type="rolled_back", actor="t", request_id=None, details={})
        raise RuntimeError("the use case failed after its event")
    with session_scope(keyed) as session:
        for n in range(3):
            append_event(session=session, at=now, event_type=f"kept_{n}", actor="t", request_id=None, details={"n": n})
        # Nothing is written before the commit: the head row is not locked for the whole transaction.
        assert session.exec(select(AuditEvent).where(AuditEvent.event_type == "kept_0")).first() is None
    with Session(keyed) as session:
        kinds = [e.event_type for e in session.exec(select(AuditEvent).order_by(AuditEvent.seq))]
        report = verify_chain(session=session, key=base64.urlsafe_b64decode(AUDIT_KEY))
    assert "rolled_back" not in kinds
    assert kinds[-3:] == ["kept_0", "kept_1", "kept_2"]
    assert report.intact and report.events == len(kinds), report


def test_the_audit_link_is_the_last_write_of_a_transaction(keyed: Engine, policy: Policy) -> None:
    """The head row is locked for as short a time as possible: every other write of the transaction
    (outbox rows queued after the event, ORM objects added after it) goes before the link."""
    from bot.services.notices import AlertKind
    from bot.services.outbox import Announcer, Doorbell
    from bot.store.audit import append_event

    assert policy.channels.audit, "the test policy routes alerts to an audit channel"
    announcer = Announcer(policy=policy, clock=lambda: NOW, doorbell=Doorbell())
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(" ".join(statement.split()).lower())

    sa_event.listen(keyed.engine, "before_cursor_execute", seen)
    try:
        with session_scope(keyed) as session:
            append_event(session=session, at=NOW, event_type="first", actor="t", request_id=None, details={})
            announcer.alert(session, AlertKind.REVOCATION_OVERDUE, None, late_seconds=31)
            _add_request(session, "R000000009")
    finally:
        sa_event.remove(keyed.engine, "before_cursor_execute", seen)
    writes = [s for s in statements if s.startswith(("insert", "update", "with", "select audit_head"))]
    head = [i for i, s in enumerate(writes) if "audit_head" in s]
    others = [i for i, s in enumerate(writes) if "audit_head" not in s and "into audit_event" not in s]
    assert any("into outbox" in writes[i] for i in others) and any("into access_request" in writes[i] for i in others)
    assert head and min(head) > max(others), writes
