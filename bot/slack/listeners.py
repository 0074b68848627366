"""Thin listeners: ack, parse, one service call, render. No business rules live here.

Every listener acks first (Slack allows 3 s; we aim for well under 100 ms) and does its slow work in
a Bolt lazy function on a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slack_bolt import Ack, App, BoltContext, BoltResponse

from bot.domain.commands import (
    BreakGlassCommand,
    CommandError,
    DigestCommand,
    ExtendCommand,
    HelpCommand,
    ListCommand,
    OpenRequestModal,
    Parsed,
    ResourcesCommand,
    RevokeCommand,
    SubmitRequest,
    parse,
)
from bot.domain.policy import Policy
from bot.domain.status import VoteChoice
from bot.services.breakglass import BreakGlassService
from bot.services.digests import DigestService
from bot.services.early import EarlyEndService
from bot.services.extensions import ExtensionService
from bot.services.identity import resolve_subject
from bot.services.listing import ListingService
from bot.services.ports import Directory
from bot.services.requests import RequestService, origin_key
from bot.services.voting import VotingService
from bot.slack.forms import DenyForm, ExtendForm, RequestForm, form_metadata
from bot.slack.ids import ActionId
from bot.slack.messages import (
    break_glass_ack_text,
    break_glass_used_text,
    command_error_text,
    digest_answer_text,
    extend_text,
    help_text,
    list_text,
    resources_text,
    revoke_text,
    submitted_text,
    vote_refusal_text,
)
from bot.slack.replies import Reply, ephemeral, user_errors, via_response_url

# Where the command middleware leaves the parsed ``/jit`` command. Bolt deep-copies the context into
# the request it hands the lazy listener (after the ack function has run), so both steps read the
# same parse.
PARSED = "jit_parsed_command"


def _ack_form(ack: Ack, parsed: object) -> None:
    """A form's submission: its per-block errors shown in the form, or accepted (the lazy step acts)."""
    if isinstance(parsed, dict):
        ack(response_action="errors", errors=parsed)
    else:
        ack()


def _respond_reply(respond: Any, **_: Any) -> Reply:
    return ephemeral(respond)


def _view_reply(view: dict[str, Any], body: dict[str, Any], client: Any, listener_self: Any, **_: Any) -> Reply:
    return via_response_url(
        form_metadata(view).get("response_url"),
        client=client,
        user_id=body["user"]["id"],
        hooks_url=listener_self.hooks_url,
    )


@dataclass
class Listeners:
    policy: Policy
    requests: RequestService
    voting: VotingService
    early: EarlyEndService
    listing: ListingService
    digests: DigestService
    directory: Directory
    # Replies go only to response_urls under this prefix (Slack's hooks host).
    hooks_url: str
    # /jit breakglass and the Acknowledge button of its alerts.
    breakglass: BreakGlassService | None = None
    extensions: ExtensionService | None = None
    request_form: RequestForm = field(init=False)
    deny_form: DenyForm = field(init=False, default_factory=DenyForm)
    extend_form: ExtendForm = field(init=False, default_factory=ExtendForm)

    def __post_init__(self) -> None:
        self.request_form = RequestForm(self.policy)

    def register(self, app: App) -> None:
        app.command("/jit", middleware=[self.parse_command])(ack=self.ack_command, lazy=[self.run_command])
        app.action(ActionId.APPROVE.value)(ack=self.ack_only, lazy=[self.approve])
        app.action(ActionId.DENY.value)(ack=self.ack_only, lazy=[self.deny_clicked])
        app.action(ActionId.REVOKE.value)(ack=self.ack_only, lazy=[self.revoke_clicked])
        app.action(ActionId.BREAK_GLASS_ACK.value)(ack=self.ack_only, lazy=[self.break_glass_ack_clicked])
        app.action(RequestForm.ActionId.RESOURCE.value)(ack=self.ack_only, lazy=[self.modal_resource_chosen])
        app.view(RequestForm.CALLBACK_ID)(ack=self.ack_request_modal, lazy=[self.request_modal_submitted])
        app.view(DenyForm.CALLBACK_ID)(ack=self.ack_deny_modal, lazy=[self.deny_modal_submitted])
        app.action(ActionId.EXTEND.value)(ack=self.ack_only, lazy=[self.extend_clicked])
        app.view(ExtendForm.CALLBACK_ID)(ack=self.ack_extend_modal, lazy=[self.extend_modal_submitted])

    # --- slash command -------------------------------------------------------------------------

    def parse_command(
        self, context: BoltContext, command: dict[str, Any], resp: BoltResponse, next: Any
    ) -> BoltResponse:
        """Listener middleware: the command is parsed once per request, here."""
        context[PARSED] = parse(command.get("text") or "", self.policy)
        next()
        return resp

    def ack_command(self, ack: Ack, context: BoltContext) -> None:
        parsed: Parsed = context[PARSED]
        # Answers that need no I/O go straight back in the ack, as JSON so they are explicitly ephemeral.
        if parsed.answered_in_ack:
            ack(text=self._answer_now(parsed), response_type="ephemeral")
        else:
            ack()

    def _answer_now(self, parsed: Parsed) -> str:
        match parsed.command:
            case HelpCommand():
                return help_text()
            case ResourcesCommand():
                return resources_text(self.policy)
            case CommandError() as error:
                return command_error_text(error)
            case other:
                raise TypeError(f"{type(other).__name__} is not answered in the acknowledgement")

    @user_errors(_respond_reply)
    def run_command(self, command: dict[str, Any], context: BoltContext, respond: Any, client: Any) -> None:
        parsed: Parsed = context[PARSED]
        if parsed.answered_in_ack:
            return
        user = command["user_id"]
        match parsed.command:
            case SubmitRequest(draft=draft):
                trigger = str(command.get("trigger_id") or "")
                origin = origin_key("command", trigger) if trigger else None
                submitted = self.requests.submit(draft, requester=user, origin=origin)
                respond(text=submitted_text(submitted), response_type="ephemeral")
            case BreakGlassCommand(draft=draft):
                if self.breakglass is None:
                    raise RuntimeError("break-glass is not wired")
                trigger = str(command.get("trigger_id") or "")
                opened = self.breakglass.use(
                    draft, requester=user, origin=origin_key("breakglass", trigger) if trigger else None
                )
                respond(text=break_glass_used_text(opened, self.policy.channels.audit), response_type="ephemeral")
            case ListCommand():
                respond(text=list_text(self.listing.open_requests_of(user)), response_type="ephemeral")
            case RevokeCommand(request_id=request_id):
                respond(text=revoke_text(self.early.revoke(request_id, actor=user)), response_type="ephemeral")
            case ExtendCommand(request_id=request_id, duration=extra, reason=reason):
                trigger = str(command.get("trigger_id") or "")
                result = self._extensions().extend(
                    request_id,
                    duration=extra,
                    reason=reason,
                    requester=user,
                    origin=origin_key("command", trigger) if trigger else None,
                )
                respond(text=extend_text(result), response_type="ephemeral")
            case DigestCommand(day=day):
                answer = self.digests.for_person(user, day)
                respond(text=digest_answer_text(answer), response_type="ephemeral")
            case OpenRequestModal(resource=name):
                # Say "you are not mapped" now rather than after the person has filled in the form.
                resolve_subject(user, policy=self.policy, directory=self.directory)
                resource = self.policy.resource(name) if name else None
                view = self.request_form.view(resource=resource, metadata={"response_url": command["response_url"]})
                client.views_open(trigger_id=command["trigger_id"], view=view)
            case HelpCommand() | ResourcesCommand() | CommandError():
                raise TypeError(f"{parsed.command} was answered in the acknowledgement")

    # --- approval card -------------------------------------------------------------------------

    def ack_only(self, ack: Ack) -> None:
        ack()

    @user_errors(_respond_reply)
    def approve(self, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        result = self.voting.cast(str(action.get("value", "")), voter=body["user"]["id"], choice=VoteChoice.APPROVE)
        if result.refusal is not None:
            ephemeral(respond)(vote_refusal_text(result.refusal))

    @user_errors(_respond_reply)
    def break_glass_ack_clicked(self, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        if self.breakglass is None:
            raise RuntimeError("break-glass is not wired")
        result = self.breakglass.acknowledge(str(action.get("value", "")), actor=body["user"]["id"])
        ephemeral(respond)(break_glass_ack_text(result))

    @user_errors(_respond_reply)
    def revoke_clicked(self, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        result = self.early.revoke(str(action.get("value", "")), actor=body["user"]["id"])
        ephemeral(respond)(revoke_text(result))

    @user_errors(_respond_reply)
    def deny_clicked(self, body: dict[str, Any], action: dict[str, Any], respond: Any, client: Any) -> None:
        request_id = str(action.get("value", ""))
        check = self.voting.preflight(request_id, voter=body["user"]["id"], choice=VoteChoice.DENY)
        if check.refusal is not None:
            ephemeral(respond)(vote_refusal_text(check.refusal))
            return
        view = self.deny_form.view(request_id, metadata={"response_url": body.get("response_url", "")})
        client.views_open(trigger_id=body["trigger_id"], view=view)

    def ack_deny_modal(self, ack: Ack, view: dict[str, Any]) -> None:
        _ack_form(ack, self.deny_form.parse(view))

    @user_errors(_view_reply)
    def deny_modal_submitted(self, view: dict[str, Any], body: dict[str, Any], client: Any) -> None:
        reason = self.deny_form.parse(view)
        if isinstance(reason, dict):  # Bolt runs lazy functions even when the ack refused the form
            return
        request_id = self.deny_form.request_id(view)
        result = self.voting.cast(request_id, voter=body["user"]["id"], choice=VoteChoice.DENY, reason=reason)
        if result.refusal is not None:
            _view_reply(view=view, body=body, client=client, listener_self=self)(vote_refusal_text(result.refusal))

    # --- extensions ----------------------------------------------------------------------------

    def _extensions(self) -> ExtensionService:
        if self.extensions is None:
            raise RuntimeError("extensions need the extension service")
        return self.extensions

    @user_errors(_respond_reply)
    def extend_clicked(self, body: dict[str, Any], action: dict[str, Any], respond: Any, client: Any) -> None:
        """The Extend button on the expiry notice: its value is the grant's request id."""
        request_id = str(action.get("value", ""))[:64]
        refusal = self._extensions().check(request_id, requester=body["user"]["id"])
        if refusal is not None:
            ephemeral(respond)(extend_text(refusal))
            return
        view = self.extend_form.view(request_id, metadata={"response_url": body.get("response_url", "")})
        client.views_open(trigger_id=body["trigger_id"], view=view)

    def ack_extend_modal(self, ack: Ack, view: dict[str, Any]) -> None:
        _ack_form(ack, self.extend_form.parse(view))

    @user_errors(_view_reply)
    def extend_modal_submitted(self, view: dict[str, Any], body: dict[str, Any], client: Any) -> None:
        checked = self.extend_form.parse(view)
        if isinstance(checked, dict):  # the ack already showed these errors in the form
            return
        extra, reason = checked
        result = self._extensions().extend(
            self.extend_form.request_id(view),
            duration=extra,
            reason=reason,
            requester=body["user"]["id"],
            origin=origin_key("view", str(view.get("id"))) if view.get("id") else None,
        )
        _view_reply(view=view, body=body, client=client, listener_self=self)(extend_text(result))

    # --- request modal -------------------------------------------------------------------------

    @user_errors(_respond_reply)
    def modal_resource_chosen(self, body: dict[str, Any], action: dict[str, Any], client: Any) -> None:
        view = body["view"]
        chosen = (action.get("selected_option") or {}).get("value")
        client.views_update(view_id=view["id"], hash=view.get("hash"), view=self.request_form.redrawn(view, chosen))

    def ack_request_modal(self, ack: Ack, view: dict[str, Any]) -> None:
        _ack_form(ack, self.request_form.parse(view))

    @user_errors(_view_reply)
    def request_modal_submitted(self, view: dict[str, Any], body: dict[str, Any], client: Any) -> None:
        checked = self.request_form.parse(view)
        if isinstance(checked, dict):  # the ack already showed these errors in the form
            return
        origin = origin_key("view", str(view.get("id"))) if view.get("id") else None
        submitted = self.requests.submit(checked, requester=body["user"]["id"], origin=origin)
        _view_reply(view=view, body=body, client=client, listener_self=self)(submitted_text(submitted))
