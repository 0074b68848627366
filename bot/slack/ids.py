"""Every action, callback and block id the bot sends to Slack and expects back."""

from __future__ import annotations

from enum import StrEnum


class ActionId(StrEnum):
    APPROVE = "jit_approve"
    DENY = "jit_deny"
    REVOKE = "jit_revoke"
    MODAL_RESOURCE = "jit_modal_resource"
    MODAL_SCOPES = "jit_modal_scopes"
    MODAL_DURATION = "jit_modal_duration"
    MODAL_REASON = "jit_modal_reason"
    DENY_REASON = "jit_deny_reason"


class CallbackId(StrEnum):
    REQUEST_MODAL = "jit_request_modal"
    DENY_MODAL = "jit_deny_modal"


class BlockId(StrEnum):
    RESOURCE = "resource"
    SCOPES = "scopes"
    DURATION = "duration"
    REASON = "reason"
    DENY_REASON = "deny_reason"
    DECISION = "decision"
