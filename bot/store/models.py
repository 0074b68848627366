"""Tables. Every change to them goes with a new Alembic migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from bot.store.types import UTCDateTime, utcnow


class AccessRequestBase(SQLModel):
    requester_slack_id: str = Field(max_length=32, index=True)
    requester_subject: str = Field(max_length=255)
    resource: str = Field(max_length=64)
    audience: str = Field(max_length=512)
    scopes: str = Field(max_length=2048, description="space-separated, as OAuth writes them")
    duration_seconds: int
    reason: str = Field(max_length=1000)
    approvals_required: int
    approver_channel: str = Field(max_length=32)


class AccessRequest(AccessRequestBase, table=True):
    __tablename__ = "access_request"
    # A rule's limit counts its recent auto-approvals of one requester: this keeps that count cheap.
    __table_args__ = (Index("ix_access_request_requester_rule", "requester_slack_id", "rule", "created_at"),)

    id: str = Field(primary_key=True, max_length=16)
    status: str = Field(max_length=16, index=True)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    decided_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    decided_by: str | None = Field(default=None, max_length=32)
    deny_reason: str | None = Field(default=None, max_length=1000)
    card_channel: str | None = Field(default=None, max_length=32)
    card_ts: str | None = Field(default=None, max_length=32)
    failure_code: str | None = Field(default=None, max_length=64)
    failure_detail: str | None = Field(default=None, max_length=500)
    # What Slack sent that created this request (a hash of the slash command's trigger or the
    # modal's view id), unique: a replayed or retried delivery cannot create a second request.
    origin: str | None = Field(default=None, max_length=64, sa_column_kwargs={"unique": True})
    # The policy rule that decided this request (None: no rule did, the resource's approvers decide).
    rule: str | None = Field(default=None, max_length=64)
    # A require rule's approvers (Slack user and usergroup ids, space-separated), which replace the
    # resource's for this request; None: the resource's.
    approvers: str | None = Field(default=None, max_length=4000)
    # Reminders of a pending request (bot.services.reminders; migration 0012): how many were sent,
    # when the job looks at it next (None: not yet looked at), and its escalation: when, and to whom
    # (Slack user and usergroup ids, space-separated, groups expanded), who may vote from then on.
    reminders_sent: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    next_reminder_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True, index=True))
    escalated_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    escalated_to: str | None = Field(default=None, max_length=4000)
    # The usergroups (space-separated ids) a revoke_when_context_ends rule auto-approved this request
    # for: its grant ends early once the requester is in none of them. None: nothing can end it so.
    context_usergroups: str | None = Field(default=None, max_length=4000)
    # Opened with /jit breakglass: approved at once by its requester's say-so, alerted until acknowledged.
    break_glass: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    # An extension: the request whose active grant this one asks more time for (None: a first request),
    # and the time that grant's chain had been approved for before this extension (migration 0011).
    extends: str | None = Field(default=None, max_length=16, index=True)
    prior_seconds: int | None = None

    @property
    def scope_list(self) -> tuple[str, ...]:
        return tuple(self.scopes.split())


class Vote(SQLModel, table=True):
    __tablename__ = "vote"
    __table_args__ = (
        # One vote per approver per request, enforced by the database, not by hope.
        UniqueConstraint("request_id", "voter_slack_id", name="uq_vote_request_voter"),
        # The digest reads a week of votes (migration 0007).
        Index("ix_vote_created_at", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(foreign_key="access_request.id", max_length=16, index=True)
    voter_slack_id: str = Field(max_length=32)
    choice: str = Field(max_length=8)
    reason: str | None = Field(default=None, max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class AuditEvent(SQLModel, table=True):
    """Append-only and hash-chained: ``hash = sha256(prev_hash + canonical(event))``."""

    __tablename__ = "audit_event"
    # The digest counts a day's events of some types (migration 0007; it also serves lookups by type).
    __table_args__ = (Index("ix_audit_event_type_at", "event_type", "at"),)

    seq: int = Field(primary_key=True)
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    event_type: str = Field(max_length=64)
    actor: str = Field(max_length=64)
    request_id: str | None = Field(default=None, max_length=16, index=True)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64, unique=True)


class AuditHead(SQLModel, table=True):
    """One row: the chain's tip. Locking it serialises appends so the chain never forks."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    hash: str = Field(max_length=64)


class Grant(SQLModel, table=True):
    """The minted token for one approved request. The token itself is only ever stored encrypted."""

    __tablename__ = "grant"

    request_id: str = Field(primary_key=True, foreign_key="access_request.id", max_length=16)
    status: str = Field(max_length=16, index=True)  # a GrantStatus
    audience: str = Field(max_length=512)
    granted_scopes: str = Field(max_length=2048)
    token_type: str = Field(max_length=32)
    token_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    token_fingerprint: str = Field(max_length=64)
    issued_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    idp_expires_in: int | None = None
    pickup_hash: str | None = Field(default=None, max_length=64, unique=True)
    pickup_expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    picked_up_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    # The Slack id of whoever ended the grant before its expiry; None for a grant that ran its course.
    revoke_requested_by: str | None = Field(default=None, max_length=32)
    # Revocation: whoever holds claim_id until lease_until is revoking it; after a failure the lease
    # doubles as the time of the next attempt.
    claim_id: str | None = Field(default=None, max_length=32)
    lease_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    last_error: str | None = Field(default=None, max_length=300)
    # An attempt is running under the current claim and has not recorded its outcome yet. A lease
    # that runs out while this is set is counted as a failed attempt.
    in_attempt: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    # Why this token must never be handed out (scope wider than approved, arrived too late, failed
    # its checks, …). Such a token is held only to be revoked; None for a real grant. "unchecked"
    # while a fresh token waits for its checks.
    refusal: str | None = Field(default=None, max_length=64)
    # The watchdog's one alert for a grant not confirmed revoked well after its expiry.
    overdue_alerted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    # The expiry the requester's expiry notice was sent for (claimed by a guarded UPDATE in the
    # transaction that queues the DM). A grant whose expiry moved (an extension) is due a new one.
    expiry_notice_for: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    # The extension whose new token replaced this one once it was picked up (migration 0011).
    replaced_by: str | None = Field(default=None, max_length=16)


class OutboxMessage(SQLModel, table=True):
    """Something to tell people in Slack, written in the transaction of the change it reports.

    Messages of one ``lane`` (one card, one person's DMs, the audit channel) are delivered in
    ``id`` order; ``channel`` is where it goes, for pacing. A worker holds ``claim_id`` until
    ``lease_until`` while it delivers.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        # Both indexes cover only undelivered rows, so delivered history costs the claim nothing.
        Index(
            "ix_outbox_open_lane",
            "lane",
            "id",
            sqlite_where=text("status IN ('pending', 'sending')"),
            postgresql_where=text("status IN ('pending', 'sending')"),
        ),
        Index(
            "ix_outbox_open_due",
            "status",
            "next_attempt_at",
            sqlite_where=text("status IN ('pending', 'sending')"),
            postgresql_where=text("status IN ('pending', 'sending')"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    lane: str = Field(max_length=80)
    channel: str = Field(max_length=32)
    kind: str = Field(max_length=32)
    request_id: str | None = Field(default=None, max_length=16, index=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # The pickup URL of a pickup DM, encrypted like tokens, wiped once delivered or given up.
    secret: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    status: str = Field(max_length=16)
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    claim_id: str | None = Field(default=None, max_length=32)
    lease_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    last_error: str | None = Field(default=None, max_length=300)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    sent_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class AuditForward(SQLModel, table=True):
    """One audit event still to be (or already) POSTed to JIT_AUDIT_WEBHOOK_URL, written in the
    event's own transaction. Sent strictly in ``seq`` order: a worker may only claim the lowest unsent
    row, holding ``claim_id`` until ``lease_until``, so replicas never send one event at once."""

    __tablename__ = "audit_forward"
    __table_args__ = (
        Index(
            "ix_audit_forward_open",
            "seq",
            sqlite_where=text("status <> 'sent'"),
            postgresql_where=text("status <> 'sent'"),
        ),
    )

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    status: str = Field(max_length=16)  # pending, sending, refused (held: forwarding stops there), sent
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Answers of 4xx in a row: the receiver refusing this event, as opposed to being unreachable.
    refusals: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    claim_id: str | None = Field(default=None, max_length=32)
    lease_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    last_error: str | None = Field(default=None, max_length=300)
    alerted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class DigestDay(SQLModel, table=True):
    """One row per local day whose digest the bot has queued: the primary key is the lease, so of
    several replicas (or a restart) only the transaction that inserts the row queues the post."""

    __tablename__ = "digest_day"

    # The local date the digest covers (YYYY-MM-DD in digest.timezone).
    day: str = Field(primary_key=True, max_length=10)
    queued_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # Where the text landed, once delivered: the chart is uploaded in its thread.
    channel: str | None = Field(default=None, max_length=32)
    ts: str | None = Field(default=None, max_length=32)


class UsergroupCheck(SQLModel, table=True):
    """How reading one usergroup for the context-end check has gone lately: consecutive failures
    (shared by replicas) and the one alert for a run of them, claimed by a guarded UPDATE."""

    __tablename__ = "usergroup_check"

    usergroup: str = Field(primary_key=True, max_length=32)
    failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    failing_since: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    last_error: str | None = Field(default=None, max_length=80)
    alerted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class BreakGlassAlert(SQLModel, table=True):
    """The alert of one break-glass request, until an approver or a security lead acknowledges it.

    ``alerts`` counts the alerts queued so far and is the re-alert's guard: a replica queues the next
    one only if its ``UPDATE … WHERE alerts = <what it read>`` changed the row, so each interval is
    alerted once however many replicas run the job."""

    __tablename__ = "break_glass_alert"
    __table_args__ = (
        # The re-alert job reads only unacknowledged rows, by when they are due (migration 0010).
        Index(
            "ix_break_glass_alert_due",
            "next_alert_at",
            sqlite_where=text("acknowledged_at IS NULL"),
            postgresql_where=text("acknowledged_at IS NULL"),
        ),
    )

    request_id: str = Field(primary_key=True, foreign_key="access_request.id", max_length=16)
    alerts: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    next_alert_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    acknowledged_by: str | None = Field(default=None, max_length=32)
    acknowledged_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    # Where the first alert and the latest re-alert landed, once delivered: acknowledging updates both.
    channel: str | None = Field(default=None, max_length=32)
    first_ts: str | None = Field(default=None, max_length=32)
    last_ts: str | None = Field(default=None, max_length=32)
