"""The modals: each form owns its ids, draws its view and reads a submission back.

A submission is checked exactly like the typed command; what is wrong comes back keyed by block id,
which is how Slack shows errors beside the fields.
"""

from __future__ import annotations

import json
from datetime import timedelta
from enum import StrEnum
from typing import Any

from slack_sdk.models.blocks import (
    Block,
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

from bot.domain.commands import MAX_REASON_LENGTH, CommandErrorCode, RequestDraft, check_extension, check_request
from bot.domain.durations import format_duration
from bot.domain.policy import Policy, Resource
from bot.domain.text import one_line
from bot.slack.messages import command_error_text
from bot.slack.text import clip, code

# Errors to show in a form: block id -> message.
FormErrors = dict[str, str]

# Offered in the request form, trimmed to each resource's max_duration.
_DURATION_CHOICES = tuple(
    timedelta(seconds=s) for s in (5 * 60, 15 * 60, 30 * 60, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 12 * 3600, 86400)
)


def form_metadata(view: dict[str, Any]) -> dict[str, str]:
    """What a form carries in private_metadata (the originating response_url; the request id)."""
    try:
        data = json.loads(view.get("private_metadata") or "{}")
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _values(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    values = (view.get("state") or {}).get("values") or {}
    return values if isinstance(values, dict) else {}


def _block(view: dict[str, Any], prefix: str) -> tuple[str, dict[str, Any]] | None:
    """The block whose id is ``prefix`` or ``prefix:…``, with its actions' values."""
    for block_id, actions in _values(view).items():
        if block_id == prefix or block_id.startswith(prefix + ":"):
            return block_id, actions
    return None


def _text_value(view: dict[str, Any], block_id: str, action_id: str) -> str:
    value = (_values(view).get(block_id) or {}).get(action_id, {}).get("value")
    return str(value).strip() if value else ""


def _modal(callback_id: str, title: str, submit: str, metadata: dict[str, str], blocks: list[Block]) -> View:
    return View(
        type="modal",
        callback_id=callback_id,
        title=PlainTextObject(text=title),
        submit=PlainTextObject(text=submit),
        close=PlainTextObject(text="Cancel"),
        blocks=blocks,
        private_metadata=json.dumps(metadata),
    )


def _reason_input(block_id: str, action_id: str, label: str, placeholder: str) -> InputBlock:
    """A free-text reason, as long as the audit trail keeps."""
    element = PlainTextInputElement(
        action_id=action_id,
        multiline=True,
        max_length=MAX_REASON_LENGTH,
        placeholder=PlainTextObject(text=placeholder),
    )
    return InputBlock(block_id=block_id, label=PlainTextObject(text=label), element=element)


def _option(text: str, value: str) -> Option:
    return Option(text=PlainTextObject(text=clip(text, 75)), value=value)


def duration_choices(resource: Resource) -> list[timedelta]:
    choices = [d for d in _DURATION_CHOICES if d <= resource.max_duration]
    if resource.max_duration not in choices:
        choices.append(resource.max_duration)
    return choices


class RequestForm:
    """The form behind ``/jit request``. Scopes and durations appear once a resource is chosen."""

    CALLBACK_ID = "jit_request_modal"

    class BlockId(StrEnum):
        RESOURCE = "resource"
        # These two carry the resource (``scopes:prod-db``) so Slack does not carry old selections
        # across resources.
        SCOPES = "scopes"
        DURATION = "duration"
        REASON = "reason"

    class ActionId(StrEnum):
        # Choosing a resource redraws the form (``dispatch_action``).
        RESOURCE = "jit_modal_resource"
        SCOPES = "jit_modal_scopes"
        DURATION = "jit_modal_duration"
        REASON = "jit_modal_reason"

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def view(self, *, resource: Resource | None, metadata: dict[str, str]) -> View:
        resource_select = StaticSelectElement(
            action_id=self.ActionId.RESOURCE.value,
            placeholder=PlainTextObject(text="Choose a resource"),
            options=[_option(r.name, r.name) for r in self._policy.resources[:100]],
            initial_option=_option(resource.name, resource.name) if resource else None,
        )
        blocks: list[Block] = [
            InputBlock(
                block_id=self.BlockId.RESOURCE.value,
                label=PlainTextObject(text="Resource"),
                element=resource_select,
                dispatch_action=True,
            )
        ]
        if resource is not None:
            blocks.append(
                InputBlock(
                    block_id=f"{self.BlockId.SCOPES.value}:{resource.name}",
                    label=PlainTextObject(text="Scopes"),
                    element=StaticMultiSelectElement(
                        action_id=self.ActionId.SCOPES.value,
                        placeholder=PlainTextObject(text="Choose scopes"),
                        options=[_option(s, s) for s in resource.scopes[:100]],
                    ),
                )
            )
            blocks.append(
                InputBlock(
                    block_id=f"{self.BlockId.DURATION.value}:{resource.name}",
                    label=PlainTextObject(text=f"Duration (max {format_duration(resource.max_duration)})"),
                    element=StaticSelectElement(
                        action_id=self.ActionId.DURATION.value,
                        placeholder=PlainTextObject(text="How long"),
                        options=[_option(format_duration(d), format_duration(d)) for d in duration_choices(resource)],
                    ),
                )
            )
        blocks.append(
            _reason_input(self.BlockId.REASON.value, self.ActionId.REASON.value, "Reason", "e.g. checking INC-1234")
        )
        return _modal(self.CALLBACK_ID, "Request access", "Request", metadata, blocks)

    def redrawn(self, view: dict[str, Any], chosen: str | None) -> View:
        """The same form after a resource was chosen (or cleared), keeping its metadata."""
        resource = self._policy.resource(chosen) if chosen else None
        return self.view(resource=resource, metadata=form_metadata(view))

    def parse(self, view: dict[str, Any]) -> RequestDraft | FormErrors:
        resource_block = _block(view, self.BlockId.RESOURCE.value)
        selected = (resource_block[1].get(self.ActionId.RESOURCE.value, {}) if resource_block else {}).get(
            "selected_option"
        )
        resource_name = str(selected["value"]) if selected else ""
        scopes_block = _block(view, self.BlockId.SCOPES.value)
        duration_block = _block(view, self.BlockId.DURATION.value)
        if not resource_name or scopes_block is None or duration_block is None:
            return {self.BlockId.RESOURCE.value: "Choose a resource first."}
        if scopes_block[0] != f"{self.BlockId.SCOPES.value}:{resource_name}":
            return {self.BlockId.RESOURCE.value: "The form changed; choose the resource again."}
        scopes = [
            str(o["value"]) for o in scopes_block[1].get(self.ActionId.SCOPES.value, {}).get("selected_options") or []
        ]
        duration_option = duration_block[1].get(self.ActionId.DURATION.value, {}).get("selected_option")
        checked = check_request(
            self._policy,
            resource_name=resource_name,
            scopes=scopes,
            duration_text=str(duration_option["value"]) if duration_option else "",
            reason=_text_value(view, self.BlockId.REASON.value, self.ActionId.REASON.value),
        )
        if isinstance(checked, RequestDraft):
            return checked
        target = {
            CommandErrorCode.UNKNOWN_RESOURCE: self.BlockId.RESOURCE.value,
            CommandErrorCode.NO_SCOPES: scopes_block[0],
            CommandErrorCode.SCOPE_NOT_OFFERED: scopes_block[0],
            CommandErrorCode.BAD_DURATION: duration_block[0],
            CommandErrorCode.DURATION_TOO_LONG: duration_block[0],
        }.get(checked.code, self.BlockId.REASON.value)
        return {target: command_error_text(checked)}


class DenyForm:
    """Asks an approver why, before a Deny counts."""

    CALLBACK_ID = "jit_deny_modal"
    REASON_BLOCK = "deny_reason"
    REASON_ACTION = "jit_deny_reason"

    def view(self, request_id: str, *, metadata: dict[str, str]) -> View:
        return _modal(
            self.CALLBACK_ID,
            "Deny request",
            "Deny",
            {**metadata, "request_id": request_id},
            [
                SectionBlock(text=MarkdownTextObject(text=f"Denying request {code(request_id)}.")),
                _reason_input(self.REASON_BLOCK, self.REASON_ACTION, "Why?", "The requester will see this"),
            ],
        )

    @staticmethod
    def request_id(view: dict[str, Any]) -> str:
        return form_metadata(view).get("request_id", "")

    def parse(self, view: dict[str, Any]) -> str | FormErrors:
        """The deny reason, on one line, or what is wrong with it."""
        reason = one_line(_text_value(view, self.REASON_BLOCK, self.REASON_ACTION))
        if not reason:
            return {self.REASON_BLOCK: "Give the requester a reason."}
        if len(reason) > MAX_REASON_LENGTH:
            return {self.REASON_BLOCK: f"Keep the reason under {MAX_REASON_LENGTH} characters (it is {len(reason)})."}
        return reason


class ExtendForm:
    """Asks the requester how much more time (and, if they like, why), from the Extend button."""

    CALLBACK_ID = "jit_extend_modal"
    DURATION_BLOCK = "extend_duration"
    DURATION_ACTION = "jit_extend_duration"
    REASON_BLOCK = "extend_reason"
    REASON_ACTION = "jit_extend_reason"

    def view(self, request_id: str, *, metadata: dict[str, str]) -> View:
        duration = PlainTextInputElement(
            action_id=self.DURATION_ACTION, max_length=16, placeholder=PlainTextObject(text="30m, 1h, 1h30m")
        )
        reason = _reason_input(self.REASON_BLOCK, self.REASON_ACTION, "Why? (optional)", "Left empty: the original's")
        reason.optional = True
        return _modal(
            self.CALLBACK_ID,
            "Extend access",
            "Ask",
            {**metadata, "request_id": request_id},
            [
                SectionBlock(
                    text=MarkdownTextObject(
                        text=f"More time on grant {code(request_id)}: the same approvers decide, and a new "
                        "pickup link brings the new token."
                    )
                ),
                InputBlock(
                    block_id=self.DURATION_BLOCK, label=PlainTextObject(text="How much more time?"), element=duration
                ),
                reason,
            ],
        )

    @staticmethod
    def request_id(view: dict[str, Any]) -> str:
        return form_metadata(view).get("request_id", "")

    def parse(self, view: dict[str, Any]) -> tuple[timedelta, str | None] | FormErrors:
        """The extra time and the reason (None: none given), or what is wrong with them."""
        checked = check_extension(
            _text_value(view, self.DURATION_BLOCK, self.DURATION_ACTION),
            reason=_text_value(view, self.REASON_BLOCK, self.REASON_ACTION),
        )
        if isinstance(checked, tuple):
            return checked
        block = self.REASON_BLOCK if checked.code is CommandErrorCode.REASON_TOO_LONG else self.DURATION_BLOCK
        return {block: command_error_text(checked)}
