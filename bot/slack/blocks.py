"""Block Kit for cards, modals and messages, built with slack_sdk.models so limits are checked."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
    StaticMultiSelectElement,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot.domain.commands import MAX_REASON_LENGTH
from bot.domain.durations import format_duration
from bot.domain.policy import Policy, Resource
from bot.domain.status import RequestStatus
from bot.services.notices import Alert, AlertKind
from bot.services.ports import RequestSnapshot
from bot.slack.ids import ActionId, BlockId, CallbackId
from bot.slack.text import clip, code, duration, escape, mention, mentions, when

# Deny reasons are limited to MAX_REASON_LENGTH when given; on cards and DMs they are clipped shorter
# still, so that a long one can never push a card over Slack's limits and leave its buttons live.
MAX_SHOWN_DENY_REASON = 300

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

# Offered in the modal, trimmed to each resource's max_duration.
_DURATION_CHOICES = tuple(
    timedelta(seconds=s) for s in (5 * 60, 15 * 60, 30 * 60, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 12 * 3600, 86400)
)


def card_text(request: RequestSnapshot) -> str:
    """The notification / screen-reader fallback for the card."""
    return (
        f"Access request {request.id}: {mention(request.requester)} asks for {request.resource} "
        f"({', '.join(request.scopes)}) for {duration(request.duration)}. {_status_summary(request)}"
    )


def _status_summary(request: RequestSnapshot) -> str:
    status = RequestStatus(request.status)
    if status is RequestStatus.EXPIRED:
        return f"{_STATUS_LINE[status]} (no decision within the request timeout)"
    if status is RequestStatus.CANCELLED:
        if request.failure_code == "card_undeliverable":
            said = code(request.failure_detail or "")
            return f"{_STATUS_LINE[status]}: the approval card could not be posted (Slack said {said})"
        return f"{_STATUS_LINE[status]}"
    if status is RequestStatus.PENDING:
        got = len(request.approvers_so_far)
        line = f"{_STATUS_LINE[status]}: {got} of {request.approvals_required} approval(s)"
        if request.approvers_so_far:
            line += f", approved by {mentions(request.approvers_so_far)}"
        return line
    if status is RequestStatus.DENIED:
        line = f"{_STATUS_LINE[status]} by {mentions(request.deniers)}"
        if request.deny_reason:
            line += f": {escape(clip(request.deny_reason, MAX_SHOWN_DENY_REASON))}"
        return line
    approved_by = f"approved by {mentions(request.approvers_so_far)}"
    if status is RequestStatus.APPROVED:
        return f"{_STATUS_LINE[status]} by {mentions(request.approvers_so_far)}"
    if status is RequestStatus.ACTIVE and request.revocation_pending:
        return (
            f":warning: Revocation pending: the grant has expired and the IdP has not confirmed it yet. {approved_by}"
        )
    if status is RequestStatus.ACTIVE and request.active_until is not None:
        return f"{_STATUS_LINE[status]} until {when(request.active_until)}; {approved_by}"
    if status is RequestStatus.REVOKED and request.revoked_at is not None:
        return f"{_STATUS_LINE[status]} at {when(request.revoked_at)}; {approved_by}"
    if status is RequestStatus.FAILED:
        return f"{_STATUS_LINE[status]}: {_failure(request)}; {approved_by}"
    return f"{_STATUS_LINE.get(status, status.value)}; {approved_by}"


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
    }
)


def _failure(request: RequestSnapshot) -> str:
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
        MarkdownTextObject(text=f"*Approvals needed*\n{request.approvals_required}"),
        MarkdownTextObject(text=f"*Request id*\n{code(request.id)}"),
    ]
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"Access request {request.id}")),
        SectionBlock(fields=fields),
        SectionBlock(text=MarkdownTextObject(text=f"*Reason*\n{clip(escape(request.reason), 2900)}")),
        SectionBlock(block_id=BlockId.DECISION.value, text=MarkdownTextObject(text=_status_summary(request))),
    ]
    if request.status == RequestStatus.PENDING.value:
        blocks.append(
            ActionsBlock(
                elements=[
                    ButtonElement(
                        text=PlainTextObject(text="Approve"),
                        action_id=ActionId.APPROVE.value,
                        value=request.id,
                        style="primary",
                    ),
                    ButtonElement(
                        text=PlainTextObject(text="Deny"),
                        action_id=ActionId.DENY.value,
                        value=request.id,
                        style="danger",
                    ),
                ]
            )
        )
    if request.status == RequestStatus.ACTIVE.value and not request.revocation_pending:
        blocks.append(
            ActionsBlock(
                elements=[
                    ButtonElement(
                        text=PlainTextObject(text="Revoke now"),
                        action_id=ActionId.REVOKE.value,
                        value=request.id,
                        style="danger",
                    )
                ]
            )
        )
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"Requested {when(request.created_at)}")]))
    return blocks


def outcome_text(request: RequestSnapshot) -> str:
    """The DM the requester gets when their request is decided."""
    status = RequestStatus(request.status)
    head = f"Your request `{request.id}` for {code(request.resource)} ({', '.join(request.scopes)})"
    if status is RequestStatus.APPROVED:
        return f"{head} was approved by {mentions(request.approvers_so_far)}."
    if status is RequestStatus.DENIED:
        reason = f" Reason: {escape(clip(request.deny_reason, MAX_SHOWN_DENY_REASON))}" if request.deny_reason else ""
        return f"{head} was denied by {mentions(request.deniers)}.{reason}"
    if status is RequestStatus.FAILED:
        return f"{head} was approved, but {_failure(request)}. Nothing was issued to you."
    if status is RequestStatus.REVOKED:
        at = when(request.revoked_at) if request.revoked_at else "now"
        return f"{head} has ended: the token was revoked at the IdP at {at}."
    if status is RequestStatus.EXPIRED:
        return f"{head} expired without a decision. Ask again if you still need it."
    if status is RequestStatus.CANCELLED and request.failure_code == "card_undeliverable":
        return (
            f"{head} was cancelled: its approval card could not be posted to <#{request.approver_channel}> "
            f"(Slack said {code(request.failure_detail or '')}). Ask an admin to invite the bot to that channel, "
            "then try again."
        )
    if status is RequestStatus.CANCELLED:
        return f"{head} was cancelled."
    return f"{head} is now {status.value}."


def list_text(requests: list[RequestSnapshot], now: datetime) -> str:
    """``/jit list``: the caller's open requests and live grants."""
    if not requests:
        return "You have no pending requests and no active grants."
    lines = ["*Your requests and grants*"]
    for request in requests:
        what = f"`{request.id}` {code(request.resource)} ({', '.join(request.scopes)})"
        status = RequestStatus(request.status)
        if status is RequestStatus.ACTIVE and request.active_until is not None:
            left = max(request.active_until - now, timedelta(0))
            lines.append(
                f"• {what}: active, {format_duration(timedelta(seconds=int(left.total_seconds())))} left "
                f"(until {when(request.active_until)})"
            )
        elif status is RequestStatus.PENDING:
            lines.append(
                f"• {what}: pending, {len(request.approvers_so_far)} of {request.approvals_required} approval(s)"
            )
        else:
            lines.append(f"• {what}: {status.value}")
    return clip("\n".join(lines), 3000)


def pickup_text(request: RequestSnapshot, url: str, link_expires_at: datetime) -> str:
    """The only place a pickup URL is ever written: the requester's DM. It holds no token."""
    until = when(request.active_until) if request.active_until else "its expiry"
    return (
        f"Your access to {code(request.resource)} ({', '.join(request.scopes)}), request `{request.id}`, "
        f"was approved by {mentions(request.approvers_so_far)} and is active until {until}.\n"
        f"Pick up your token once, before {when(link_expires_at)}: {url}\n"
        "The link works one time only. Never paste the token into Slack."
    )


def submitted_text(request: RequestSnapshot) -> str:
    return (
        f"Request `{request.id}` for {code(request.resource)} ({', '.join(request.scopes)}, "
        f"{duration(request.duration)}) was sent to <#{request.approver_channel}> for approval. "
        "You will get a DM when it is decided."
    )


def audit_summary_text(request: RequestSnapshot, event: str) -> str:
    return (
        f"[{event}] `{request.id}` {mention(request.requester)} → {code(request.resource)} "
        f"({', '.join(request.scopes)}, {duration(request.duration)}). {_status_summary(request)}"
    )


def alert_text(alert: Alert) -> str:
    """An alert for the audit channel: what happened, to which grant, and what jit-bot does about it."""
    facts = alert.facts
    rid = code(alert.request_id or "?")

    def fact(name: str) -> str:
        return code(str(facts.get(name) or "?"))

    match alert.alert:
        case AlertKind.TOKEN_REFUSED:
            return (
                f":rotating_light: Grant {rid} was failed: {escape(clip(str(facts.get('detail') or ''), 300))}. "
                f"The token (fingerprint {fact('fingerprint')}) was never handed out and is queued for revocation; "
                "jit-bot retries until the IdP confirms it is inactive."
            )
        case AlertKind.REFUSED_TOKEN_REVOKED:
            return (
                f":white_check_mark: The refused token of {rid} (fingerprint {fact('fingerprint')}) is revoked: "
                f"{escape(str(facts.get('proof') or 'the IdP confirmed it'))}."
            )
        case AlertKind.REVOCATION_FAILING:
            return (
                f":rotating_light: Revocation of grant {rid} is not done: {facts.get('attempts')} attempts failed "
                f"({fact('error')}). jit-bot keeps retrying; check the IdP."
            )
        case AlertKind.STILL_ACTIVE:
            return (
                f":rotating_light: Revocation of grant {rid} is not done: the IdP accepted the revocation but the "
                "token still introspects as ACTIVE. jit-bot keeps retrying; check the IdP."
            )
        case AlertKind.REVOCATION_OVERDUE:
            return (
                f":rotating_light: Grant {rid} expired {facts.get('late_seconds')} s ago and the IdP has not "
                f"confirmed its revocation ({facts.get('attempts')} attempts so far, last error {fact('last_error')}). "
                "jit-bot keeps retrying; check the IdP."
            )
        case AlertKind.PICKUP_UNDELIVERABLE:
            requester = str(facts.get("requester") or "")
            return (
                f":warning: The pickup link for {rid} could not be sent to {mention(requester)} (Slack said "
                f"{fact('slack_error')}). The grant is active and nobody has its token; end it with "
                f"`/jit revoke {escape(alert.request_id or '')}` unless the requester can be reached."
            )
        case AlertKind.TOKEN_UNSTORED:
            return (
                f":rotating_light: jit-bot received a token for {rid} (fingerprint {fact('fingerprint')}) but could "
                f"not store it; revoking it at once {escape(str(facts.get('revocation') or 'was attempted'))}. "
                "Check the IdP and the bot's logs."
            )
        case AlertKind.TOKEN_UNHOLDABLE:
            return (
                f":rotating_light: The IdP answered the token exchange for {rid} with an access token that is not "
                "valid text, so jit-bot can neither hold it nor send it back to be revoked. Revoke the tokens "
                "issued for this request at the IdP by hand."
            )


def help_text() -> str:
    return "\n".join(
        [
            "*jit-bot*: just-in-time access, approved in Slack, minted by the IdP, revoked on time.",
            "• `/jit request <resource> <scopes> <duration> <reason…>`: ask for access, e.g. "
            "`/jit request prod-db read 30m checking INC-1234`. Scopes are comma-separated; "
            "durations look like `90s`, `15m`, `2h`, `1h30m`.",
            "• `/jit request`: the same, in a form.",
            "• `/jit resources`: what you can ask for, with scopes and maximum durations.",
            "• `/jit list`: your pending requests and active grants, with time left.",
            "• `/jit revoke <request id>`: end an active grant now (or cancel your pending request).",
            "• `/jit help`: this text.",
        ]
    )


def resources_text(policy: Policy) -> str:
    lines = ["*Resources you can request*"]
    for resource in policy.resources:
        description = f": {escape(resource.description)}" if resource.description else ""
        lines.append(
            f"• {code(resource.name)}{description}. Scopes: {', '.join(code(s) for s in resource.scopes)}; "
            f"max {format_duration(resource.max_duration)}; approvals needed: {resource.approvals_required} "
            f"in <#{resource.approver_channel}>"
        )
    return clip("\n".join(lines), 3000)


def _option(text: str, value: str) -> Option:
    return Option(text=PlainTextObject(text=clip(text, 75)), value=value)


def duration_choices(resource: Resource) -> list[timedelta]:
    choices = [d for d in _DURATION_CHOICES if d <= resource.max_duration]
    if resource.max_duration not in choices:
        choices.append(resource.max_duration)
    return choices


def request_modal(policy: Policy, *, resource: Resource | None, metadata: dict[str, str]) -> View:
    """The form behind ``/jit request``. Scopes and durations appear once a resource is chosen."""
    resource_options = [_option(r.name, r.name) for r in policy.resources[:100]]
    resource_select = StaticSelectElement(
        action_id=ActionId.MODAL_RESOURCE.value,
        placeholder=PlainTextObject(text="Choose a resource"),
        options=resource_options,
        initial_option=_option(resource.name, resource.name) if resource else None,
    )
    blocks: list[Block] = [
        InputBlock(
            block_id=BlockId.RESOURCE.value,
            label=PlainTextObject(text="Resource"),
            element=resource_select,
            dispatch_action=True,
        )
    ]
    if resource is not None:
        blocks.append(
            InputBlock(
                # The block id carries the resource so Slack does not carry old selections across resources.
                block_id=f"{BlockId.SCOPES.value}:{resource.name}",
                label=PlainTextObject(text="Scopes"),
                element=StaticMultiSelectElement(
                    action_id=ActionId.MODAL_SCOPES.value,
                    placeholder=PlainTextObject(text="Choose scopes"),
                    options=[_option(s, s) for s in resource.scopes[:100]],
                ),
            )
        )
        blocks.append(
            InputBlock(
                block_id=f"{BlockId.DURATION.value}:{resource.name}",
                label=PlainTextObject(text=f"Duration (max {format_duration(resource.max_duration)})"),
                element=StaticSelectElement(
                    action_id=ActionId.MODAL_DURATION.value,
                    placeholder=PlainTextObject(text="How long"),
                    options=[_option(format_duration(d), format_duration(d)) for d in duration_choices(resource)],
                ),
            )
        )
    blocks.append(
        InputBlock(
            block_id=BlockId.REASON.value,
            label=PlainTextObject(text="Reason"),
            element=PlainTextInputElement(
                action_id=ActionId.MODAL_REASON.value,
                multiline=True,
                max_length=MAX_REASON_LENGTH,
                placeholder=PlainTextObject(text="e.g. checking INC-1234"),
            ),
        )
    )
    return View(
        type="modal",
        callback_id=CallbackId.REQUEST_MODAL.value,
        title=PlainTextObject(text="Request access"),
        submit=PlainTextObject(text="Request"),
        close=PlainTextObject(text="Cancel"),
        blocks=blocks,
        private_metadata=json.dumps(metadata),
    )


def deny_modal(request_id: str, *, metadata: dict[str, str]) -> View:
    return View(
        type="modal",
        callback_id=CallbackId.DENY_MODAL.value,
        title=PlainTextObject(text="Deny request"),
        submit=PlainTextObject(text="Deny"),
        close=PlainTextObject(text="Cancel"),
        private_metadata=json.dumps({**metadata, "request_id": request_id}),
        blocks=[
            SectionBlock(text=MarkdownTextObject(text=f"Denying request {code(request_id)}.")),
            InputBlock(
                block_id=BlockId.DENY_REASON.value,
                label=PlainTextObject(text="Why?"),
                element=PlainTextInputElement(
                    action_id=ActionId.DENY_REASON.value,
                    multiline=True,
                    max_length=MAX_REASON_LENGTH,
                    placeholder=PlainTextObject(text="The requester will see this"),
                ),
            ),
        ],
    )
