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
    # On a grant: its requester asked for more time (the extension is a request of its own, named here).
    EXTENSION_REQUESTED = "extension_requested"
    # On a grant: its extension's new token was picked up, so this one is due for revocation now.
    GRANT_REPLACED = "grant_replaced"
    # The audit webhook refused an event (4xx) past its retries; forwarding stops at that event.
    AUDIT_FORWARDING_REFUSED = "audit_forwarding_refused"


# Keys that must never be written to the audit trail, whatever a caller passes.
FORBIDDEN_DETAIL_KEYS = frozenset(
    {"token", "access_token", "refresh_token", "client_secret", "secret", "password", "pickup_url", "url"}
)
