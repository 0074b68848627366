"""The ids on the approval card that Slack sends back when someone clicks. (The forms own theirs:
``bot.slack.forms``.)"""

from __future__ import annotations

from enum import StrEnum


class ActionId(StrEnum):
    APPROVE = "jit_approve"
    DENY = "jit_deny"
    REVOKE = "jit_revoke"
    EXTEND = "jit_extend"
    # On a break-glass alert in the audit channel; its value is the request id.
    BREAK_GLASS_ACK = "jit_break_glass_ack"


class BlockId(StrEnum):
    # The card's status line, which every redraw replaces.
    DECISION = "decision"
    # The chain of extensions a card belongs to.
    CHAIN = "chain"
