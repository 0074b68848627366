"""Key the audit chain: every link becomes HMAC-SHA256 with JIT_AUDIT_KEY.

A trail written before this revision is first checked against its old, unkeyed links (an upgrade
never launders a trail that was already altered), then every link is recomputed with the key,
and an ``audit_chain_keyed`` event records how many events were re-linked. The key comes from the
connection, bound by ``bot.store.audit.bind_audit_key``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from bot.store.audit import (
    GENESIS,
    audit_key_of,
    canonical_event,
    event_link,
    legacy_event_link,
)

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

events = sa.table(
    "audit_event",
    sa.column("seq", sa.Integer),
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("event_type", sa.String),
    sa.column("actor", sa.String),
    sa.column("request_id", sa.String),
    sa.column("details", sa.JSON),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
)
head = sa.table("audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.Integer), sa.column("hash", sa.String))


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(events).order_by(events.c.seq)).mappings().all()
    if not rows:
        return
    key = audit_key_of(bind)
    legacy_prev, keyed_prev = GENESIS, GENESIS
    for expected, row in enumerate(rows, start=1):
        details = row["details"] if isinstance(row["details"], dict) else json.loads(row["details"])
        canonical = canonical_event(
            seq=row["seq"],
            at=_aware(row["at"]),
            event_type=row["event_type"],
            actor=row["actor"],
            request_id=row["request_id"],
            details=details,
        )
        if (
            row["seq"] != expected
            or row["prev_hash"] != legacy_prev
            or legacy_event_link(legacy_prev, canonical) != row["hash"]
        ):
            raise RuntimeError(
                f"the audit trail is broken at event {row['seq']}; it was not re-keyed. "
                "Investigate it (jit-bot audit verify on the previous version) before upgrading."
            )
        legacy_prev = row["hash"]
        link = event_link(key, keyed_prev, canonical)
        bind.execute(events.update().where(events.c.seq == row["seq"]).values(prev_hash=keyed_prev, hash=link))
        keyed_prev = link
    # The event that says it happened, linked with the key like every later one.
    seq = len(rows) + 1
    at = datetime.now(UTC)
    details = {"relinked_events": len(rows)}
    canonical = canonical_event(
        seq=seq, at=at, event_type="audit_chain_keyed", actor="jit-bot", request_id=None, details=details
    )
    link = event_link(key, keyed_prev, canonical)
    bind.execute(
        events.insert().values(
            seq=seq,
            at=at,
            event_type="audit_chain_keyed",
            actor="jit-bot",
            request_id=None,
            details=details,
            prev_hash=keyed_prev,
            hash=link,
        )
    )
    bind.execute(head.update().where(head.c.id == 1).values(seq=seq, hash=link))


def downgrade() -> None:
    raise RuntimeError("the keyed audit chain cannot be turned back into an unkeyed one")
