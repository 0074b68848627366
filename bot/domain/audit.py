"""Audit event names, and the detail keys that must never be written to the trail."""

from __future__ import annotations

from enum import StrEnum


class AuditEventType(StrEnum):
    REQUEST_SUBMITTED = "request_submitted"
    CARD_POSTED = "card_posted"
    REQUEST_CANCELLED = "request_cancelled"
    VOTE_CAST = "vote_cast"
    REQUEST_APPROVED = "request_approved"
    REQUEST_DENIED = "request_denied"
    UNAUTHORIZED_ATTEMPT = "unauthorized_attempt"
    DELIVERY_FAILED = "delivery_failed"
    MINT_STARTED = "mint_started"
    MINT_RETRY = "mint_retry"
    MINT_FAILED = "mint_failed"
    TOKEN_RECEIVED = "token_received"
    TOKEN_REFUSED = "token_refused"
    GRANT_ACTIVE = "grant_active"
    TOKEN_PICKED_UP = "token_picked_up"
    PICKUP_REFUSED = "pickup_refused"
    GRANT_REVOKED = "grant_revoked"
    REVOCATION_FAILED = "revocation_failed"
    REVOCATION_OVERDUE = "revocation_overdue"
    REVOKE_REQUESTED = "revoke_requested"
    REQUEST_EXPIRED = "request_expired"
    AUDIT_CHAIN_KEYED = "audit_chain_keyed"
    # The policy's rules needed the requester's Slack usergroups and Slack could not list them.
    RULES_USERGROUPS_UNKNOWN = "rules_usergroups_unknown"
    # A rule's Rego module failed, timed out or answered outside the contract; the request was denied.
    REGO_FAILED = "rego_failed"
    # A pending request's reminder was queued in its card's thread (its number, whom it asked).
    REMINDER_SENT = "reminder_sent"
    # A pending request reached reminders.escalate_after: the escalation approvers may vote from now on.
    REQUEST_ESCALATED = "request_escalated"
    # On a grant: its requester asked for more time (the extension is a request of its own, named here).
    EXTENSION_REQUESTED = "extension_requested"
    # On a grant: its extension's new token was picked up, so this one is due for revocation now.
    GRANT_REPLACED = "grant_replaced"
    # The audit webhook refused an event (4xx) past its retries; forwarding stops at that event.
    AUDIT_FORWARDING_REFUSED = "audit_forwarding_refused"
    # The requester was DMed that their grant ends soon (policy expiry_notice).
    EXPIRY_NOTICE_SENT = "expiry_notice_sent"
    # A revoke_when_context_ends grant is ended: its requester is in none of its usergroups any more.
    CONTEXT_ENDED = "context_ended"
    # Slack could not list a usergroup that grants rest on, several times in a row (alerted once) ...
    CONTEXT_UNREADABLE = "context_unreadable"
    # ... and could again.
    CONTEXT_READABLE_AGAIN = "context_readable_again"
    # /jit breakglass: approved at once with no vote (the pending -> approved move's event).
    BREAK_GLASS_USED = "break_glass_used"
    # /jit breakglass from someone its allowed: does not list (or whose usergroups Slack could not list).
    BREAK_GLASS_REFUSED = "break_glass_refused"
    # An approver or a security lead acknowledged a break-glass alert; it stops re-alerting.
    BREAK_GLASS_ACKNOWLEDGED = "break_glass_acknowledged"


# Keys that must never be written to the audit trail, whatever a caller passes.
FORBIDDEN_DETAIL_KEYS = frozenset(
    {"token", "access_token", "refresh_token", "client_secret", "secret", "password", "pickup_url", "url"}
)
