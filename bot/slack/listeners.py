"""Thin listeners: ack, parse, one service call, render. No business rules live here.

Every listener acks first (Slack allows 3 s; we aim for well under 100 ms) and does its slow work in
a Bolt lazy function on a worker thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, App

from bot.domain.commands import (
    MAX_REASON_LENGTH,
    CommandError,
    CommandErrorCode,
    HelpCommand,
    ListCommand,
    OpenRequestModal,
    RequestDraft,
    ResourcesCommand,
    RevokeCommand,
    SubmitRequest,
    check_request,
    parse_command,
)
from bot.domain.policy import Policy
from bot.domain.status import VoteChoice
from bot.domain.text import one_line
from bot.services.early import EarlyEndService
from bot.services.identity import resolve_subject
from bot.services.ports import Directory
from bot.services.requests import RequestService, origin_key
from bot.services.voting import VotingService
from bot.slack.blocks import deny_modal, help_text, list_text, request_modal, resources_text, submitted_text
from bot.slack.ids import ActionId, BlockId, CallbackId
from bot.slack.replies import Reply, ephemeral, user_errors, via_response_url


def _respond_reply(respond: Any, **_: Any) -> Reply:
    return ephemeral(respond)


def _view_reply(view: dict[str, Any], body: dict[str, Any], client: Any, listener_self: Any, **_: Any) -> Reply:
    return via_response_url(
        _metadata(view).get("response_url"),
        client=client,
        user_id=body["user"]["id"],
        hooks_url=listener_self.hooks_url,
    )


def _metadata(view: dict[str, Any]) -> dict[str, str]:
    try:
        data = json.loads(view.get("private_metadata") or "{}")
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


@dataclass
class Listeners:
    policy: Policy
    requests: RequestService
    voting: VotingService
    early: EarlyEndService
    directory: Directory
    # Replies go only to response_urls under this prefix (Slack's hooks host).
    hooks_url: str

    def register(self, app: App) -> None:
        app.command("/jit")(ack=self.ack_command, lazy=[self.run_command])
        app.action(ActionId.APPROVE.value)(ack=self.ack_only, lazy=[self.approve])
        app.action(ActionId.DENY.value)(ack=self.ack_only, lazy=[self.deny_clicked])
        app.action(ActionId.REVOKE.value)(ack=self.ack_only, lazy=[self.revoke_clicked])
        app.action(ActionId.MODAL_RESOURCE.value)(ack=self.ack_only, lazy=[self.modal_resource_chosen])
        app.view(CallbackId.REQUEST_MODAL.value)(ack=self.ack_request_modal, lazy=[self.request_modal_submitted])
        app.view(CallbackId.DENY_MODAL.value)(ack=self.ack_deny_modal, lazy=[self.deny_modal_submitted])

    # --- slash command -------------------------------------------------------------------------

    def ack_command(self, ack: Ack, command: dict[str, Any]) -> None:
        parsed = parse_command(command.get("text") or "", self.policy)
        # Answers that need no I/O go straight back in the ack, as JSON so they are explicitly ephemeral.
        if isinstance(parsed, HelpCommand):
            ack(text=help_text(), response_type="ephemeral")
        elif isinstance(parsed, ResourcesCommand):
            ack(text=resources_text(self.policy), response_type="ephemeral")
        elif isinstance(parsed, CommandError):
            ack(text=parsed.message, response_type="ephemeral")
        else:
            ack()

    @user_errors(_respond_reply)
    def run_command(self, command: dict[str, Any], respond: Any, client: Any) -> None:
        parsed = parse_command(command.get("text") or "", self.policy)
        user = command["user_id"]
        if isinstance(parsed, SubmitRequest):
            origin = origin_key("command", str(command.get("trigger_id") or "")) if command.get("trigger_id") else None
            submitted = self.requests.submit(parsed.draft, requester=user, origin=origin)
            respond(text=submitted_text(submitted), response_type="ephemeral")
        elif isinstance(parsed, ListCommand):
            listing = self.early.list_for(user)
            respond(text=list_text(listing, self.requests.clock()), response_type="ephemeral")
        elif isinstance(parsed, RevokeCommand):
            respond(text=self.early.revoke(parsed.request_id, actor=user), response_type="ephemeral")
        elif isinstance(parsed, OpenRequestModal):
            # Say "you are not mapped" now rather than after the person has filled in the form.
            resolve_subject(user, policy=self.policy, directory=self.directory)
            resource = self.policy.resource(parsed.resource) if parsed.resource else None
            view = request_modal(self.policy, resource=resource, metadata={"response_url": command["response_url"]})
            client.views_open(trigger_id=command["trigger_id"], view=view)

    # --- approval card -------------------------------------------------------------------------

    def ack_only(self, ack: Ack) -> None:
        ack()

    @user_errors(_respond_reply)
    def approve(self, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        result = self.voting.cast(str(action.get("value", "")), voter=body["user"]["id"], choice=VoteChoice.APPROVE)
        if not result.accepted:
            ephemeral(respond)(result.message)

    @user_errors(_respond_reply)
    def revoke_clicked(self, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        reply = self.early.revoke(str(action.get("value", "")), actor=body["user"]["id"])
        ephemeral(respond)(reply)

    @user_errors(_respond_reply)
    def deny_clicked(self, body: dict[str, Any], action: dict[str, Any], respond: Any, client: Any) -> None:
        request_id = str(action.get("value", ""))
        check = self.voting.preflight(request_id, voter=body["user"]["id"], choice=VoteChoice.DENY)
        if not check.accepted:
            ephemeral(respond)(check.message)
            return
        view = deny_modal(request_id, metadata={"response_url": body.get("response_url", "")})
        client.views_open(trigger_id=body["trigger_id"], view=view)

    @user_errors(_view_reply)
    def deny_modal_submitted(self, view: dict[str, Any], body: dict[str, Any], client: Any) -> None:
        request_id = _metadata(view).get("request_id", "")
        reason = _deny_reason(view)
        if isinstance(reason, DenyReasonError):  # Bolt runs lazy functions even when the ack refused the form
            return
        result = self.voting.cast(request_id, voter=body["user"]["id"], choice=VoteChoice.DENY, reason=reason)
        if not result.accepted:
            _view_reply(view=view, body=body, client=client, listener_self=self)(result.message)

    def ack_deny_modal(self, ack: Ack, view: dict[str, Any]) -> None:
        reason = _deny_reason(view)
        if isinstance(reason, DenyReasonError):
            ack(response_action="errors", errors={BlockId.DENY_REASON.value: reason.message})
        else:
            ack()

    # --- request modal -------------------------------------------------------------------------

    @user_errors(_respond_reply)
    def modal_resource_chosen(self, body: dict[str, Any], action: dict[str, Any], client: Any) -> None:
        chosen = (action.get("selected_option") or {}).get("value")
        resource = self.policy.resource(chosen) if chosen else None
        view = body["view"]
        client.views_update(
            view_id=view["id"],
            hash=view.get("hash"),
            view=request_modal(self.policy, resource=resource, metadata=_metadata(view)),
        )

    def ack_request_modal(self, ack: Ack, view: dict[str, Any]) -> None:
        checked = _modal_request(view, self.policy)
        if isinstance(checked, dict):
            ack(response_action="errors", errors=checked)
        else:
            ack()

    @user_errors(_view_reply)
    def request_modal_submitted(self, view: dict[str, Any], body: dict[str, Any], client: Any) -> None:
        checked = _modal_request(view, self.policy)
        if isinstance(checked, dict):  # the ack already showed these errors in the form
            return
        origin = origin_key("view", str(view.get("id"))) if view.get("id") else None
        submitted = self.requests.submit(checked, requester=body["user"]["id"], origin=origin)
        _view_reply(view=view, body=body, client=client, listener_self=self)(submitted_text(submitted))


def _values(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    values = (view.get("state") or {}).get("values") or {}
    return values if isinstance(values, dict) else {}


def _block(view: dict[str, Any], prefix: str) -> tuple[str, dict[str, Any]] | None:
    for block_id, actions in _values(view).items():
        if block_id == prefix or block_id.startswith(prefix + ":"):
            return block_id, actions
    return None


@dataclass(frozen=True)
class DenyReasonError:
    message: str


def _deny_reason(view: dict[str, Any]) -> str | DenyReasonError:
    """The deny reason, on one line, or what is wrong with it (shown in the form)."""
    reason = one_line(_text_value(view, BlockId.DENY_REASON.value, ActionId.DENY_REASON.value))
    if not reason:
        return DenyReasonError("Give the requester a reason.")
    if len(reason) > MAX_REASON_LENGTH:
        return DenyReasonError(f"Keep the reason under {MAX_REASON_LENGTH} characters (it is {len(reason)}).")
    return reason


def _text_value(view: dict[str, Any], block_id: str, action_id: str) -> str:
    value = (_values(view).get(block_id) or {}).get(action_id, {}).get("value")
    return str(value).strip() if value else ""


def _modal_request(view: dict[str, Any], policy: Policy) -> RequestDraft | dict[str, str]:
    """The modal's answers checked exactly like the typed command; errors keyed by block id."""
    resource_block = _block(view, BlockId.RESOURCE.value)
    selected = (resource_block[1].get(ActionId.MODAL_RESOURCE.value, {}) if resource_block else {}).get(
        "selected_option"
    )
    resource_name = str(selected["value"]) if selected else ""
    scopes_block = _block(view, BlockId.SCOPES.value)
    duration_block = _block(view, BlockId.DURATION.value)
    if not resource_name or scopes_block is None or duration_block is None:
        return {BlockId.RESOURCE.value: "Choose a resource first."}
    if scopes_block[0] != f"{BlockId.SCOPES.value}:{resource_name}":
        return {BlockId.RESOURCE.value: "The form changed; choose the resource again."}
    scopes = [
        str(o["value"]) for o in scopes_block[1].get(ActionId.MODAL_SCOPES.value, {}).get("selected_options") or []
    ]
    duration_option = duration_block[1].get(ActionId.MODAL_DURATION.value, {}).get("selected_option")
    checked = check_request(
        policy,
        resource_name=resource_name,
        scopes=scopes,
        duration_text=str(duration_option["value"]) if duration_option else "",
        reason=_text_value(view, BlockId.REASON.value, ActionId.MODAL_REASON.value),
    )
    if isinstance(checked, RequestDraft):
        return checked
    target = {
        CommandErrorCode.UNKNOWN_RESOURCE: BlockId.RESOURCE.value,
        CommandErrorCode.NO_SCOPES: scopes_block[0],
        CommandErrorCode.SCOPE_NOT_OFFERED: scopes_block[0],
        CommandErrorCode.BAD_DURATION: duration_block[0],
        CommandErrorCode.DURATION_TOO_LONG: duration_block[0],
    }.get(checked.code, BlockId.REASON.value)
    return {target: checked.message}
