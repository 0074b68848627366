"""The approval card: its blocks and its fallback text, built with slack_sdk.models so limits are checked."""

from __future__ import annotations

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.domain.status import RequestStatus
from bot.services.breakglass import REALERT_INTERVAL
from bot.services.context import CONTEXT_ENDED_BY
from bot.services.delivery import CARD_UNDELIVERABLE
from bot.services.extensions import EXTENDED_GRANT_ENDED
from bot.services.snapshots import RequestSnapshot
from bot.slack.ids import ActionId, BlockId
from bot.slack.text import addressed, clip, code, duration, escape, mention, mentions, when

# Deny reasons are limited to MAX_REASON_LENGTH when given; on cards and DMs they are clipped shorter
# still, so that a long one can never push a card over Slack's limits and leave its buttons live.
MAX_SHOWN_DENY_REASON = 300

# The same on every version of the card: whether the alert was acknowledged is told on the alert itself.
BREAK_GLASS_BANNER = (
    ":rotating_light: *BREAK-GLASS*: opened by the requester at once, with no approval. An approver or a "
    "security lead acknowledges it on its alert in the audit channel."
)

_STATUS_LINE = {
    RequestStatus.PENDING: ":hourglass_flowing_sand: Pending approval",
    RequestStatus.APPROVED: ":white_check_mark: Approved",
    RequestStatus.DENIED: ":no_entry: Denied",
    RequestStatus.CANCELLED: ":heavy_multiplication_x: Cancelled",
    RequestStatus.EXPIRED: ":alarm_clock: Expired without a decision",
    RequestStatus.MINTING: ":key: Approved; the IdP is issuing the token",
    RequestStatus.ACTIVE: ":large_green_circle: Active",
    RequestStatus.FAILED: ":x: Failed",
    RequestStatus.REVOKED: ":lock: Revoked",
}


def card_text(request: RequestSnapshot) -> str:
    """The notification / screen-reader fallback for the card."""
    text = (
        f"Access request {request.id}: {mention(request.requester)} asks for {request.resource} "
        f"({', '.join(request.scopes)}) for {duration(request.duration)}"
        + (f" more, extending {request.extends}" if request.extends is not None else "")
        + f". {status_summary(request)}"
    ) + (f" {escalated_text(request)}" if _shows_escalation(request) else "")
    return f"{text} BREAK-GLASS: opened with no approval." if request.break_glass else text


def escalated_text(request: RequestSnapshot) -> str:
    return f":arrow_double_up: Escalated to {addressed(request.escalated_to)}"


def _shows_escalation(request: RequestSnapshot) -> bool:
    # Only while it waits: once decided, who decided is what the card says.
    return bool(request.escalated_to) and request.status == RequestStatus.PENDING.value


def status_summary(request: RequestSnapshot) -> str:
    """Where the request stands, in one line: the card's decision block, and the audit channel's lines."""
    status = RequestStatus(request.status)
    if status is RequestStatus.EXPIRED:
        return f"{_STATUS_LINE[status]} (no decision within the request timeout)"
    if status is RequestStatus.CANCELLED:
        if request.failure_code == CARD_UNDELIVERABLE:
            said = code(request.failure_detail or "")
            return f"{_STATUS_LINE[status]}: the approval card could not be posted (Slack said {said})"
        if request.failure_code == EXTENDED_GRANT_ENDED:
            return f"{_STATUS_LINE[status]}: the grant of {code(request.extends or '')} it extends has ended"
        return f"{_STATUS_LINE[status]}"
    if status is RequestStatus.PENDING:
        got = len(request.approvers_so_far)
        line = f"{_STATUS_LINE[status]}: {got} of {request.approvals_required} approval(s)"
        if request.approvers_so_far:
            line += f", approved by {mentions(request.approvers_so_far)}"
        return line
    if status is RequestStatus.DENIED and request.decided_by_rule:
        line = f"{_STATUS_LINE[status]} by rule {code(request.rule or '')}"
        if request.deny_reason:
            line += f": {escape(clip(request.deny_reason, MAX_SHOWN_DENY_REASON))}"
        return line
    if status is RequestStatus.DENIED:
        line = f"{_STATUS_LINE[status]} by {mentions(request.deniers)}"
        if request.deny_reason:
            line += f": {escape(clip(request.deny_reason, MAX_SHOWN_DENY_REASON))}"
        return line
    approved_by = approved_by_text(request)
    if status is RequestStatus.APPROVED and request.break_glass:
        return ":rotating_light: Opened with break-glass, with no approval"
    if status is RequestStatus.APPROVED and request.decided_by_rule:
        return f":white_check_mark: Auto-approved by rule {code(request.rule or '')}"
    if status is RequestStatus.APPROVED:
        return f"{_STATUS_LINE[status]} by {mentions(request.approvers_so_far)}"
    if status is RequestStatus.ACTIVE and request.revocation_pending:
        return (
            f":warning: Revocation pending: the grant has expired and the IdP has not confirmed it yet. {approved_by}"
        )
    if status is RequestStatus.ACTIVE and request.active_until is not None:
        return f"{_STATUS_LINE[status]} until {when(request.active_until)}; {approved_by}"
    if status is RequestStatus.REVOKED and request.revoked_at is not None and request.replaced_by is not None:
        return (
            f"{_STATUS_LINE[status]}: replaced by extension {code(request.replaced_by)} once its new token was "
            f"picked up, {when(request.revoked_at)}; {approved_by}"
        )
    if status is RequestStatus.REVOKED and request.revoked_at is not None:
        how = f"early by {ended_early_by(request.revoked_early_by)}" if request.revoked_early_by else "at its expiry"
        return f"{_STATUS_LINE[status]} {how}, {when(request.revoked_at)}; {approved_by}"
    if status is RequestStatus.FAILED:
        return f"{_STATUS_LINE[status]}: {failure_text(request)}; {approved_by}"
    return f"{_STATUS_LINE.get(status, status.value)}; {approved_by}"


def ended_early_by(by: str) -> str:
    """Who ended a grant early: a person, or the bot because the grant's reason ended."""
    if by == CONTEXT_ENDED_BY:
        return "jit-bot, because the requester left the usergroup its rule granted it for"
    return mention(by)


def approved_by_text(request: RequestSnapshot) -> str:
    """Who approved it: the people who voted, or the rule that approved it by itself."""
    if request.break_glass:
        return "opened with break-glass, with no approval"
    if request.decided_by_rule:
        return f"auto-approved by rule {code(request.rule or '')}"
    return f"approved by {mentions(request.approvers_so_far)}"


# Failure codes that are the bot's own findings, not an error the IdP answered with.
_OWN_FINDINGS = frozenset(
    {
        "scope_wider_than_approved",
        "token_too_late",
        "checks_too_slow",
        "token_too_large",
        "invalid_response",
        "invalid_token",
        "jwks_unavailable",
        "idp_timeout",
        "idp_unreachable",
        "idp_answer_too_large",
        "internal_error",
        "mint_interrupted",
        EXTENDED_GRANT_ENDED,
    }
)


def failure_text(request: RequestSnapshot) -> str:
    """Why no token was issued, on the card and in the requester's DM."""
    detail = f" ({escape(clip(request.failure_detail, 300))})" if request.failure_detail else ""
    failure = code(request.failure_code or "unknown")
    who = "jit-bot found" if request.failure_code in _OWN_FINDINGS else "IdP said"
    return f"the token could not be issued: {who} {failure}{detail}"


def approval_card(request: RequestSnapshot) -> list[Block]:
    fields = [
        MarkdownTextObject(text=f"*Requester*\n{mention(request.requester)}"),
        MarkdownTextObject(
            text=f"*Resource*\n{code(request.resource)}"
            + (f" {escape(clip(request.resource_description, 200))}" if request.resource_description else "")
        ),
        MarkdownTextObject(text=f"*Scopes*\n{' '.join(code(s) for s in request.scopes)}"),
        MarkdownTextObject(text=f"*Duration*\n{duration(request.duration)}"),
        MarkdownTextObject(
            text="*Approvals needed*\nnone: break-glass"
            if request.break_glass
            else f"*Approvals needed*\n{request.approvals_required}"
        ),
        MarkdownTextObject(text=f"*Request id*\n{code(request.id)}"),
    ]
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"Access request {request.id}")),
        *([SectionBlock(text=MarkdownTextObject(text=BREAK_GLASS_BANNER))] if request.break_glass else []),
        SectionBlock(fields=fields),
        SectionBlock(text=MarkdownTextObject(text="*Reason*")),
        # The requester's words as typed, in plain text: *bold*, `code`, :emoji: or a line that looks
        # like a status cannot be formatted into the card (and <, >, & are escaped as everywhere).
        SectionBlock(text=PlainTextObject(text=clip(escape(request.reason), 2900), emoji=False)),
        SectionBlock(block_id=BlockId.DECISION.value, text=MarkdownTextObject(text=status_summary(request))),
    ]
    if _shows_escalation(request):
        blocks.append(SectionBlock(text=MarkdownTextObject(text=escalated_text(request))))
    chain = chain_text(request)
    if chain:
        blocks.append(SectionBlock(block_id=BlockId.CHAIN.value, text=MarkdownTextObject(text=chain)))
    if request.status == RequestStatus.PENDING.value:
        blocks.append(
            ActionsBlock(
                elements=[
                    _button("Approve", ActionId.APPROVE, request.id, "primary"),
                    _button("Deny", ActionId.DENY, request.id, "danger"),
                ]
            )
        )
    if request.status == RequestStatus.ACTIVE.value and not request.revocation_pending:
        blocks.append(ActionsBlock(elements=[_button("Revoke now", ActionId.REVOKE, request.id, "danger")]))
    context = [MarkdownTextObject(text=f"Requested {when(request.created_at)}")]
    if request.rule is not None:
        context.append(MarkdownTextObject(text=f"Rule: {code(request.rule)}"))
    blocks.append(ContextBlock(elements=context))
    return blocks


# Where an extension of this grant stands, as its card says it.
_EXTENSION_STATE = {
    RequestStatus.PENDING: "asked, waiting for approval",
    RequestStatus.APPROVED: "approved; its token is being issued",
    RequestStatus.MINTING: "approved; its token is being issued",
    RequestStatus.ACTIVE: "approved; its new token replaces this one once picked up",
    RequestStatus.REVOKED: "approved, and since ended",
    RequestStatus.DENIED: "denied; this grant ends at its original time",
    RequestStatus.EXPIRED: "expired undecided; this grant ends at its original time",
    RequestStatus.CANCELLED: "cancelled",
    RequestStatus.FAILED: "approved, but no token was issued; this grant ends at its original time",
}


def chain_text(request: RequestSnapshot) -> str:
    """The chain a card belongs to: what an extension extends and the total it brings the grant to,
    and, on a grant that was extended, where its extension stands. Empty for a request with neither."""
    lines = []
    if request.extends is not None and request.prior is not None:
        lines.append(
            f":link: *Extension* of {code(request.extends)} ({duration(request.prior)}) → "
            f"+{duration(request.duration)}, total {duration(request.chain_total)}"
        )
    if request.extension_id is not None and request.extension_status is not None:
        state = _EXTENSION_STATE.get(RequestStatus(request.extension_status), request.extension_status)
        lines.append(f":link: Extension {code(request.extension_id)}: {state}")
    return "\n".join(lines)


def _button(label: str, action: ActionId, request_id: str, style: str) -> ButtonElement:
    return ButtonElement(text=PlainTextObject(text=label), action_id=action.value, value=request_id, style=style)


# --- break-glass alerts (the audit channel) ----------------------------------------------------------


def break_glass_alert_blocks(head: str, reason: str, footer: str, request_id: str) -> list[Block]:
    """A break-glass alert (its words: ``messages.break_glass_alert_parts``) and the Acknowledge button.
    The reason is the requester's, as typed: plain text, so nothing in it is formatted into the alert."""
    return [
        SectionBlock(text=MarkdownTextObject(text=clip(head, 2900))),
        SectionBlock(text=PlainTextObject(text=clip("Reason: " + escape(reason), 2900), emoji=False)),
        SectionBlock(text=MarkdownTextObject(text=clip(footer, 2900))),
        ActionsBlock(elements=[_button("Acknowledge", ActionId.BREAK_GLASS_ACK, request_id, "danger")]),
        ContextBlock(
            elements=[
                MarkdownTextObject(
                    text=f"Re-alerted every {duration(REALERT_INTERVAL)} until an approver of the resource or a "
                    "security lead acknowledges it."
                )
            ]
        ),
    ]


def break_glass_acknowledged_blocks(text: str) -> list[Block]:
    """The alert once acknowledged: what it said and who acknowledged it, with no button."""
    return [SectionBlock(text=MarkdownTextObject(text=clip(text, 2900)))]
