"""Text for people: DMs, audit lines, alerts, command answers and refusals.

Use cases return codes and facts; this is where they become words (Slack mrkdwn). The approval card
is drawn in ``bot.slack.cards``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.domain.commands import MAX_REASON_LENGTH, SUBCOMMANDS, CommandError, CommandErrorCode, SubCommand
from bot.domain.digest import digest_text
from bot.domain.durations import format_duration
from bot.domain.policy import Policy
from bot.domain.status import RequestStatus
from bot.domain.votes import VoteRefusal
from bot.services.breakglass import REALERT_INTERVAL, AckOutcome, AckResult, BreakGlassRefusal, BreakGlassRefused
from bot.services.delivery import CARD_UNDELIVERABLE
from bot.services.digests import DigestAnswer, DigestRefusal
from bot.services.early import RevokeOutcome, RevokeResult
from bot.services.errors import ApproversUnknown, TooManyPending, Unmapped, UnmappedRequester, UserFacingError
from bot.services.extensions import EXTENDED_GRANT_ENDED, ExtendOutcome, ExtendResult
from bot.services.listing import Listing
from bot.services.notices import (
    Alert,
    AlertKind,
    ApprovalReminder,
    BreakGlassAcknowledged,
    BreakGlassAlerted,
    ContextEnded,
    EndSummary,
    ExpiryNotice,
    GrantLife,
)
from bot.services.snapshots import RequestSnapshot
from bot.slack.cards import MAX_SHOWN_DENY_REASON, approved_by_text, ended_early_by, failure_text, status_summary
from bot.slack.ids import ActionId
from bot.slack.text import addressed, clip, code, duration, escape, mention, mentions, when

# --- what happened to a request ------------------------------------------------------------------


def outcome_text(request: RequestSnapshot) -> str:
    """The DM the requester gets when their request is decided."""
    text = _outcome_text(request)
    if request.extends is None or RequestStatus(request.status) not in _EXTENSION_FELL_THROUGH:
        return text
    if request.failure_code == EXTENDED_GRANT_ENDED:
        return f"{text} Grant `{request.extends}` had ended, so nothing was extended."
    return f"{text} Grant `{request.extends}` ends at its original time."


# An extension that ends in one of these gave no more time.
_EXTENSION_FELL_THROUGH = frozenset(
    {RequestStatus.DENIED, RequestStatus.EXPIRED, RequestStatus.CANCELLED, RequestStatus.FAILED}
)


def _outcome_text(request: RequestSnapshot) -> str:
    status = RequestStatus(request.status)
    what = "extension" if request.extends is not None else "request"
    head = f"Your {what} `{request.id}` for {code(request.resource)} ({', '.join(request.scopes)})"
    if status is RequestStatus.APPROVED:
        return f"{head} was {approved_by_text(request)}."
    if status is RequestStatus.DENIED and request.decided_by_rule:
        return f"{head} was denied by rule {code(request.rule or '')}: {_rule_message(request)}"
    if status is RequestStatus.DENIED:
        reason = f" Reason: {escape(clip(request.deny_reason, MAX_SHOWN_DENY_REASON))}" if request.deny_reason else ""
        return f"{head} was denied by {mentions(request.deniers)}.{reason}"
    if status is RequestStatus.FAILED:
        return f"{head} was approved, but {failure_text(request)}. Nothing was issued to you."
    if status is RequestStatus.REVOKED and request.replaced_by is not None:
        at = when(request.revoked_at) if request.revoked_at else "now"
        return (
            f"{head} was replaced by extension `{request.replaced_by}`, whose token you picked up: "
            f"the old token was revoked at the IdP {at}."
        )
    if status is RequestStatus.REVOKED:
        at = when(request.revoked_at) if request.revoked_at else "now"
        early = f", ended early by {ended_early_by(request.revoked_early_by)}" if request.revoked_early_by else ""
        return f"{head} has ended{early}: its token was revoked at the IdP {at}."
    if status is RequestStatus.EXPIRED:
        return f"{head} expired without a decision. Ask again if you still need it."
    if status is RequestStatus.CANCELLED and request.failure_code == CARD_UNDELIVERABLE:
        return (
            f"{head} was cancelled: its approval card could not be posted to <#{request.approver_channel}> "
            f"(Slack said {code(request.failure_detail or '')}). Ask an admin to invite the bot to that channel, "
            "then try again."
        )
    if status is RequestStatus.CANCELLED and request.failure_code == EXTENDED_GRANT_ENDED:
        return f"{head} was cancelled before it was decided."
    if status is RequestStatus.CANCELLED:
        return f"{head} was cancelled."
    return f"{head} is now {status.value}."


def reminder_text(reminder: ApprovalReminder) -> str:
    """In the card's thread: the request still waits; who is asked; since when, and until when."""
    request = reminder.request
    waited = duration(max(reminder.at - request.created_at, timedelta(0)))
    got = f"{len(request.approvers_so_far)} of {request.approvals_required} approval(s) so far"
    facts = f"It has waited {waited} ({got}) and expires {when(reminder.expires_at)}."
    if reminder.escalated_to:
        # The requester may be on the escalation list, but cannot decide their own request.
        named = tuple(entry for entry in reminder.escalated_to if entry != request.requester)
        head = (
            f":arrow_double_up: Escalated to {addressed(named) or 'the escalation list'}: access request "
            f"`{request.id}` from "
            f"{mention(request.requester)} has had no decision, so you may now approve or deny it on the card above."
        )
        others = [entry for entry in reminder.mention if entry not in reminder.escalated_to]
        still = f" Still waiting on {addressed(others)} too." if others and reminder.number else ""
        return f"{head} {facts}{still}"
    return (
        f":bell: Reminder {reminder.number}: access request `{request.id}` from {mention(request.requester)} "
        f"still needs a decision from {addressed(reminder.mention) or 'its approvers'}. {facts}"
    )


def list_text(listing: Listing) -> str:
    """``/jit list``: the caller's open requests and live grants."""
    if not listing.requests:
        return "You have no pending requests and no active grants."
    lines = ["*Your requests and grants*"]
    for request in listing.requests:
        what = f"`{request.id}` {code(request.resource)} ({', '.join(request.scopes)})"
        status = RequestStatus(request.status)
        if status is RequestStatus.ACTIVE and request.active_until is not None:
            left = max(request.active_until - listing.now, timedelta(0))
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
        f"was {approved_by_text(request)} and is active until {until}.\n"
        f"Pick up your token once, before {when(link_expires_at)}: {url}\n"
        "The link works one time only. Never paste the token into Slack."
        + (
            f"\nThis extends `{request.extends}`: its token is revoked once you pick this one up."
            if request.extends is not None
            else ""
        )
    )


def subteam(usergroup: str) -> str:
    """A usergroup as Slack shows one: its @handle (a mention, as in alerts' cc)."""
    return f"<!subteam^{usergroup}>"


def _left(seconds: int) -> str:
    # Whole minutes read better than 9m58s, which is only how long the job took to notice.
    rounded = round(seconds / 60) * 60 if seconds >= 60 else seconds
    return duration(timedelta(seconds=max(rounded, 1)))


def expiry_notice_text(notice: ExpiryNotice) -> str:
    """The requester's DM shortly before their grant ends (also the fallback text of its blocks)."""
    request = notice.request
    return (
        f"Your access to {code(request.resource)} ({', '.join(request.scopes)}), request `{request.id}`, "
        f"ends {when(notice.ends_at)}: {_left(notice.left_seconds)} left. "
        "Extend it if you still need it, or revoke it now if you are done."
    )


def expiry_notice_blocks(notice: ExpiryNotice) -> list[Block]:
    """The expiry notice with its two buttons; both carry the request id, and every click is
    re-authorised from the database (Revoke now is the card's own action)."""
    rid = notice.request.id
    return [
        SectionBlock(text=MarkdownTextObject(text=expiry_notice_text(notice))),
        ActionsBlock(
            elements=[
                ButtonElement(
                    text=PlainTextObject(text="Extend"), action_id=ActionId.EXTEND.value, value=rid, style="primary"
                ),
                ButtonElement(
                    text=PlainTextObject(text="Revoke now"), action_id=ActionId.REVOKE.value, value=rid, style="danger"
                ),
            ]
        ),
    ]


def context_ended_text(notice: ContextEnded) -> str:
    """The requester's DM when their grant ends because they left the usergroup(s) it was granted for."""
    request = notice.request
    groups = " or ".join(subteam(group) for group in notice.usergroups)
    return (
        f"You are no longer in {groups}, so your access to {code(request.resource)} ({', '.join(request.scopes)}), "
        f"request `{request.id}`, has ended: rule {code(request.rule or '')} granted it for members only. "
        "Its token is being revoked at the IdP now. If you still need access, ask again with `/jit request`."
    )


def _rule_message(request: RequestSnapshot) -> str:
    return escape(clip(request.deny_reason, MAX_SHOWN_DENY_REASON)) if request.deny_reason else "no reason given"


def submitted_text(request: RequestSnapshot) -> str:
    what = (
        f"Request `{request.id}` for {code(request.resource)} ({', '.join(request.scopes)}, "
        f"{duration(request.duration)})"
    )
    if request.status == RequestStatus.DENIED.value and request.decided_by_rule:
        return f"{what} was denied by rule {code(request.rule or '')}: {_rule_message(request)}"
    if request.decided_by_rule:
        return (
            f"{what} was auto-approved by rule {code(request.rule or '')}; its card is in "
            f"<#{request.approver_channel}>. You will get a DM with your pickup link once the token is issued."
        )
    if request.rule is not None:
        return (
            f"{what} was sent to <#{request.approver_channel}>: rule {code(request.rule)} asks for "
            f"{request.approvals_required} approval(s) from its approvers. You will get a DM when it is decided."
        )
    return (
        f"Request `{request.id}` for {code(request.resource)} ({', '.join(request.scopes)}, "
        f"{duration(request.duration)}) was sent to <#{request.approver_channel}> for approval. "
        "You will get a DM when it is decided."
    )


def _audit_head(request: RequestSnapshot, event: str) -> str:
    """How every audit line starts: what it reports, the request, who asked for what."""
    return (
        f"[{event}] `{request.id}` {mention(request.requester)} → {code(request.resource)} "
        f"({', '.join(request.scopes)}, {duration(request.duration)})."
    )


def audit_summary_text(request: RequestSnapshot, event: str) -> str:
    """A step along the way (submitted, approved, active), in one line."""
    return f"{_audit_head(request, event)}{_extension_note(request)} {status_summary(request)}"


def _extension_note(request: RequestSnapshot) -> str:
    """For an extension: the grant it extends and the chain's total, so the audit channel sees the chain."""
    if request.extends is None:
        return ""
    return f" Extension of `{request.extends}`, total {duration(request.chain_total)}."


def end_summary_text(summary: EndSummary) -> str:
    """The one line the audit channel gets when a request ends. For a grant that was live: who
    approved it, how long it was asked for and used, whether its token was picked up, how it ended,
    and what proves the token dead. Drawn from facts and moments only: no token, no pickup link."""
    request, life = summary.request, summary.life
    head = _audit_head(request, request.status)
    status = RequestStatus(request.status)
    if status is RequestStatus.REVOKED and life is not None:
        return f"{head} {_grant_life_text(request, life)}"
    if status is RequestStatus.FAILED:
        return f"{head} {status_summary(request)}. No token was handed out."
    if status is RequestStatus.CANCELLED and request.failure_code != CARD_UNDELIVERABLE:
        return f"{head} {status_summary(request)} by the requester before it was decided."
    return f"{head} {status_summary(request)}"


def _grant_life_text(request: RequestSnapshot, life: GrantLife) -> str:
    approved = approved_by_text(request)
    used = (
        f"Used {duration(life.used)} of {duration(request.duration)} "
        f"(active {when(life.activated_at)} to {when(life.ended_at)})"
    )
    picked = f"token picked up {when(life.picked_up_at)}" if life.picked_up_at else "token never picked up"
    by = request.revoked_early_by
    ended = f"Ended early by {ended_early_by(by)}" if by else "Ended at its expiry"
    if request.replaced_by is not None:
        ended = f"Replaced by extension {code(request.replaced_by)} once its new token was picked up"
    proof = (
        "the IdP accepted the revocation and introspection says the token is inactive"
        if life.introspected_inactive
        else "the IdP accepted the revocation (it offers no introspection to confirm it)"
    )
    lag = f"{life.confirmation_lag.total_seconds():.1f} s"
    return (
        f":lock: {approved[:1].upper()}{approved[1:]}. {used}; {picked}. {ended}. "
        f"Revocation proof: {proof}, confirmed {lag} after the grant ended, at {when(life.confirmed_at)}."
    )


def leads_cc(leads: tuple[str, ...]) -> str:
    """The policy's security leads, mentioned under an alert so that someone is paged by it:
    people as <@U…>, usergroups as <!subteam^S…> (Slack's mention of a group)."""
    if not leads:
        return ""
    said = [f"<!subteam^{lead}>" if lead.startswith("S") else mention(lead) for lead in leads]
    return "\ncc " + " ".join(said)


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
        case AlertKind.AUDIT_FORWARDING_REFUSED:
            return (
                f":rotating_light: The audit webhook refused audit event {fact('seq')} {facts.get('refusals')} times "
                f"(last answer {fact('status')}). Forwarding has stopped at that event: nothing after it is sent "
                "until the receiver accepts it. jit-bot keeps retrying it; fix the receiver."
            )
        case AlertKind.CONTEXT_UNREADABLE:
            group = str(facts.get("usergroup") or "")
            return (
                f":warning: Slack could not list usergroup {subteam(group)} ({code(group)}) "
                f"{facts.get('failures')} times in a row (Slack said {fact('error')}). Grants that rule "
                "`revoke_when_context_ends` ties to it are not ended while it cannot be read, even for someone "
                "who has left it; jit-bot keeps trying every minute. Check the bot's `usergroups:read` scope and Slack."
            )
        case AlertKind.DIGEST_UNDELIVERABLE:
            return (
                f":warning: The daily digest of {fact('day')} could not be posted to {fact('channel')} (Slack said "
                f"{fact('slack_error')}); is jit-bot in that channel? Read it with `/jit digest "
                f"{escape(str(facts.get('day') or ''))}`."
            )


# --- answers to /jit -----------------------------------------------------------------------------


def help_text() -> str:
    """``/jit help``, drawn from the command table."""
    return "\n".join(
        [
            "*jit-bot*: just-in-time access, approved in Slack, minted by the IdP, revoked on time.",
            # Escaped: Slack reads an unescaped <resource> as a link and shows nothing of it.
            *(f"• {' or '.join(code(usage) for usage in sub.usages())}: {escape(sub.summary)}" for sub in SUBCOMMANDS),
        ]
    )


def usage_of(sub: SubCommand) -> str:
    """A command's usage lines as Markdown code spans, for the README (Slack needs them escaped: help_text)."""
    return " or ".join(f"`{usage}`" for usage in sub.usages())


def resources_text(policy: Policy) -> str:
    lines = ["*Resources you can request*"]
    for resource in policy.resources:
        description = f": {escape(resource.description)}" if resource.description else ""
        lines.append(
            f"• {code(resource.name)}{description}. Scopes: {', '.join(code(s) for s in resource.scopes)}; "
            f"max {format_duration(resource.max_duration)}; approvals needed: {resource.approvals_required} "
            f"in <#{resource.approver_channel}>"
            + (
                f"; break-glass up to {format_duration(resource.break_glass.max_duration)}"
                if resource.break_glass is not None
                else ""
            )
        )
    return clip("\n".join(lines), 3000)


def _typed(text: str) -> str:
    """What someone typed, in a code span: backticks inside would end it, and it is kept short."""
    return "`" + text.replace("`", "'")[:80] + "`"


def _typed_list(items: tuple[str, ...]) -> str:
    return ", ".join(_typed(i) for i in items)


def command_error_text(error: CommandError) -> str:
    """What is wrong with a typed command (or a form's answers), and how to put it right."""
    resource = _typed(error.resource)
    match error.code:
        case CommandErrorCode.UNKNOWN_SUBCOMMAND:
            return f"Unknown command {_typed(error.typed)}. Try `/jit help`."
        case CommandErrorCode.UNKNOWN_RESOURCE:
            return f"Unknown resource {_typed(error.typed)}. Known resources: {_typed_list(error.allowed)}."
        case CommandErrorCode.NO_SCOPES:
            return f"Name at least one scope for {resource}. Allowed: {_typed_list(error.allowed)}."
        case CommandErrorCode.SCOPE_NOT_OFFERED:
            return f"{resource} does not offer scope {_typed(error.typed)}. Allowed: {_typed_list(error.allowed)}."
        case CommandErrorCode.BAD_DURATION:
            problem = error.detail[:1].upper() + error.detail[1:]
            return f"{problem}. The maximum for {resource} is {format_duration(error.max_duration)}."
        case CommandErrorCode.DURATION_TOO_LONG if error.command == "breakglass":
            return (
                f"{_typed(error.typed)} is longer than the break-glass maximum for {resource} "
                f"(`break_glass.max_duration`): {format_duration(error.max_duration)}."
            )
        case CommandErrorCode.DURATION_TOO_LONG:
            return (
                f"{_typed(error.typed)} is longer than the maximum for {resource}: "
                f"{format_duration(error.max_duration)}."
            )
        case CommandErrorCode.EMPTY_REASON:
            return (
                f"A reason is required, e.g. `/jit {error.command} {error.resource} {','.join(error.scopes)} "
                f"{error.typed} checking INC-1234`."
            )
        case CommandErrorCode.REASON_TOO_LONG:
            return f"The reason is {error.length} characters; keep it under {MAX_REASON_LENGTH}."
        case CommandErrorCode.MISSING_REQUEST_ID:
            return "Which request? Use `/jit revoke <request id>`; `/jit list` shows yours."
        case CommandErrorCode.MISSING_EXTENSION:
            return (
                "Which grant, and how much more time? Use `/jit extend <request id> <duration> [reason]`, "
                "e.g. `/jit extend R7K2M9QX4P 30m`; `/jit list` shows your grants."
            )
        case CommandErrorCode.BAD_EXTENSION_DURATION:
            problem = error.detail[:1].upper() + error.detail[1:]
            return f"{problem}. Give the extra time like `30m`, `1h` or `1h30m`."
        case CommandErrorCode.BAD_DATE:
            return (
                f"{_typed(error.typed)} is not a date like `2026-10-28`. Use `/jit digest` or `/jit digest YYYY-MM-DD`."
            )
        case CommandErrorCode.NO_BREAK_GLASS:
            return f"{resource} has no break-glass. {_break_glass_offered(error.allowed)}"
        case CommandErrorCode.BREAK_GLASS_USAGE:
            return (
                f"Use {code('/jit breakglass <resource> <scopes> <duration> <reason…>')}, e.g. "
                f"`/jit breakglass prod-db write 30m INC-1234 outage`. {_break_glass_offered(error.allowed)}"
            )


def _break_glass_offered(resources: tuple[str, ...]) -> str:
    if not resources:
        return "No resource offers break-glass; use `/jit request` to ask the approvers."
    return f"Resources with break-glass: {_typed_list(resources)}. Otherwise use `/jit request`."


# --- refusals ------------------------------------------------------------------------------------


VOTE_REFUSALS: dict[VoteRefusal, str] = {
    VoteRefusal.UNKNOWN_REQUEST: "That request does not exist.",
    VoteRefusal.NOT_PENDING: "That request is no longer pending, so it cannot be voted on.",
    VoteRefusal.SELF_APPROVAL: "You cannot vote on your own request.",
    VoteRefusal.NOT_APPROVER: "You are not an approver for this resource.",
    VoteRefusal.ALREADY_VOTED: "You have already voted on this request.",
    VoteRefusal.RESOURCE_REMOVED: "That resource is no longer in the policy, so the request cannot be decided.",
}


def vote_refusal_text(refusal: VoteRefusal) -> str:
    return VOTE_REFUSALS[refusal]


# Filled in with the request id (``rid``, or ``typed`` for an id that may be anything the person
# typed: cut short, in a code span it cannot break), its status and, for a grant still being minted, a hint.
REVOKE_ANSWERS: dict[RevokeOutcome, str] = {
    RevokeOutcome.REVOKING: "Revoking `{rid}` now. The card changes once the IdP confirms it.",
    RevokeOutcome.CANCELLED: "Request `{rid}` was cancelled.",
    RevokeOutcome.NO_SUCH_REQUEST: "There is no request {typed}. `/jit list` shows yours.",
    RevokeOutcome.NOT_ALLOWED: "Only the requester or an approver of this resource can revoke it.",
    RevokeOutcome.APPROVER_ON_PENDING: "Approvers decide pending requests with the Deny button on the card.",
    RevokeOutcome.DECIDED_MEANWHILE: "Request `{rid}` was decided meanwhile; `/jit list` shows where it stands.",
    RevokeOutcome.TOKEN_REVOKED: "Request `{rid}` is {status}, so there is nothing to revoke: its token is revoked.",
    RevokeOutcome.REFUSED_TOKEN: (
        "Request `{rid}` is {status}: its token was never handed out and is being revoked at the IdP."
    ),
    RevokeOutcome.ALREADY_REVOKING: "Grant `{rid}` is already being revoked.",
    RevokeOutcome.NOTHING_TO_REVOKE: "Request `{rid}` is {status}, so there is nothing to revoke.{hint}",
}


def extend_text(result: ExtendResult) -> str:
    """The answer to ``/jit extend`` and to the Extend form."""
    rid = result.request_id
    match result.outcome:
        case ExtendOutcome.SUBMITTED:
            assert result.extension is not None
            return _extension_submitted_text(result.extension)
        case ExtendOutcome.NO_SUCH_REQUEST:
            return f"There is no request {_typed(rid[:16])}. `/jit list` shows your grants."
        case ExtendOutcome.NOT_REQUESTER:
            return "Only the requester of a grant can extend it."
        case ExtendOutcome.NOT_ACTIVE:
            return (
                f"Request `{rid}` is {result.status or 'not active'}, so there is no live grant to extend. "
                "Ask again with `/jit request`."
            )
        case ExtendOutcome.EXTENSION_OPEN:
            if result.open_status == RequestStatus.ACTIVE.value:
                return f"Grant `{rid}` was extended already by `{result.open_id}`: extend `{result.open_id}` instead."
            return (
                f"Grant `{rid}` already has extension `{result.open_id}` ({result.open_status}); wait for it "
                f"to be decided, or cancel it with `/jit revoke {result.open_id}`."
            )
        case ExtendOutcome.OVER_CAP:
            source = (
                f"rule {code(result.cap_rule)}'s max_total"
                if result.cap_rule is not None
                else f"the max_duration of {code(result.resource)}"
            )
            return (
                f"That would bring grant `{rid}` to {duration(result.total)} in all, over the "
                f"{duration(result.cap)} allowed by {source}. Nothing was asked; try a shorter extension."
            )
        case ExtendOutcome.RESOURCE_REMOVED:
            return f"Resource {_typed(result.resource)} is no longer in the policy, so its grants cannot be extended."


def _extension_submitted_text(extension: RequestSnapshot) -> str:
    what = (
        f"Extension `{extension.id}` of `{extension.extends}` (+{duration(extension.duration)}, total "
        f"{duration(extension.chain_total)})"
    )
    if extension.status == RequestStatus.DENIED.value and extension.decided_by_rule:
        return f"{what} was denied by rule {code(extension.rule or '')}: {_rule_message(extension)}"
    if extension.decided_by_rule:
        return (
            f"{what} was auto-approved by rule {code(extension.rule or '')}. You will get a DM with a new "
            "pickup link once the new token is issued."
        )
    return (
        f"{what} was sent to <#{extension.approver_channel}> for "
        f"{extension.approvals_required} approval(s). You will get a DM when it is decided."
    )


def digest_answer_text(answer: DigestAnswer) -> str:
    """The answer to ``/jit digest``: the digest's own Slack text, or why not."""
    match answer.refusal:
        case DigestRefusal.NOT_ALLOWED:
            return "Only security leads and approvers can read the digest."
        case DigestRefusal.NOT_BEGUN:
            return f"{answer.day.isoformat()} has not begun yet in {escape(answer.timezone)}."
    assert answer.digest is not None
    return digest_text(answer.digest, slack=True)


def revoke_text(result: RevokeResult) -> str:
    """The answer to ``/jit revoke`` and to the Revoke now button."""
    hint = " It is still being minted; try again in a moment." if result.still_minting else ""
    return REVOKE_ANSWERS[result.outcome].format(
        rid=result.request_id, typed=_typed(result.request_id[:16]), status=result.status, hint=hint
    )


def user_error_text(error: UserFacingError) -> str:
    """A use case's refusal, for the person who asked."""
    match error:
        case UnmappedRequester(why=Unmapped.EMAIL_UNKNOWN, slack_error=slack_error):
            return (
                "Your Slack account is not mapped to an identity, and Slack could not tell us your email "
                f"({slack_error})."
            )
        case UnmappedRequester(why=Unmapped.NO_EMAIL):
            return (
                "Your Slack account is not mapped to an identity and your Slack profile has no email. "
                "Ask an admin to add you under `identities:` in the policy file."
            )
        case UnmappedRequester(why=Unmapped.NOT_LISTED, user=user):
            return (
                f"Your Slack account ({mention(user)}) is not mapped to an identity. "
                "Ask an admin to add you under `identities:` in the policy file."
            )
        case TooManyPending(pending=pending, limit=limit):
            return (
                f"You already have {pending} requests waiting for approval (the limit is {limit}). "
                "Wait for one to be decided, or cancel one with `/jit revoke <request id>`; `/jit list` shows them."
            )
        case ApproversUnknown(resource=resource, slack_error=slack_error):
            return (
                f"Slack could not list the approver group for `{resource}` ({slack_error}). Nothing changed; try again."
            )
        case BreakGlassRefused(resource=resource, why=BreakGlassRefusal.NOT_ALLOWED):
            return (
                f"You may not use break-glass on {code(resource)}: its `break_glass.allowed` does not include you. "
                f"Nothing was issued, and this attempt is in the audit trail. Use `/jit request {escape(resource)} …` "
                "to ask its approvers."
            )
        case BreakGlassRefused(resource=resource, usergroups=groups, slack_error=slack_error):
            return (
                f"Break-glass on {code(resource)} was refused: Slack could not list the usergroup(s) "
                f"{', '.join(code(g) for g in groups)} it allows (Slack said {code(slack_error)}), and you are not "
                "allowed otherwise. Nothing was issued, and this attempt is in the audit trail; try again in a "
                f"moment, or use `/jit request {escape(resource)} …`."
            )
    raise TypeError(f"no words for {type(error).__name__}")


def unexpected_error_text(reference: str) -> str:
    return f"Something went wrong on our side and nothing was changed. Reference: `{reference}`."


# --- break-glass ------------------------------------------------------------------------------------


def people(entries: tuple[str, ...]) -> str:
    """Slack user ids as <@U…> and usergroup ids as <!subteam^S…>: mentions that page them."""
    return " ".join(f"<!subteam^{entry}>" if entry.startswith("S") else mention(entry) for entry in entries)


def break_glass_used_text(request: RequestSnapshot, audit_channel: str | None) -> str:
    """The answer to ``/jit breakglass`` for the person who used it."""
    where = f"<#{audit_channel}>" if audit_channel else "the audit channel"
    return (
        f":rotating_light: Break-glass `{request.id}` for {code(request.resource)} ({', '.join(request.scopes)}, "
        f"{duration(request.duration)}) is open, with no approval. {where} has been alerted, and the approvers "
        "and security leads are asked to acknowledge it. You will get a DM with your pickup link once the token "
        "is issued."
    )


def break_glass_alert_text(alert: BreakGlassAlerted, leads: tuple[str, ...]) -> str:
    """The loud alert in the audit channel: who opened what with no approval, why, where it stands,
    and who must look (the resource's approvers and the security leads, mentioned). Its blocks show
    the same, with the requester's reason as plain text (``break_glass_alert_parts``)."""
    head, reason, footer = break_glass_alert_parts(alert, leads)
    return f"{head}\nReason: {escape(reason)}\n{footer}"


def break_glass_alert_parts(alert: BreakGlassAlerted, leads: tuple[str, ...]) -> tuple[str, str, str]:
    """(what happened, mrkdwn; the reason as typed, to be shown as plain text; who must look, mrkdwn)."""
    request = alert.request
    if alert.number <= 1:
        head = ":rotating_light: *BREAK-GLASS*"
    else:
        age = format_duration(timedelta(seconds=max(int((alert.alerted_at - request.created_at).total_seconds()), 0)))
        head = f":rotating_light: *BREAK-GLASS, STILL NOT ACKNOWLEDGED* (alert {alert.number}, used {age} ago)"
    who = people(tuple(dict.fromkeys((*alert.approvers, *leads))))
    return (
        f"{head} `{request.id}`: {mention(request.requester)} opened {code(request.resource)} "
        f"({', '.join(request.scopes)}, {duration(request.duration)}) at {when(request.created_at)} with no approval.",
        clip(request.reason, 500),
        f"Now: {status_summary(request)}\n"
        f"{who}: please review it and press *Acknowledge*; it is re-alerted every "
        f"{duration(REALERT_INTERVAL)} until then.",
    )


def break_glass_acknowledged_text(notice: BreakGlassAcknowledged) -> str:
    request = notice.request
    return (
        f":white_check_mark: Break-glass `{request.id}` ({mention(request.requester)} → {code(request.resource)}, "
        f"{', '.join(request.scopes)}, {duration(request.duration)}, used {when(request.created_at)}) was "
        f"acknowledged by {mention(notice.by)} {when(notice.at)}, after {notice.alerts} alert(s)."
    )


def break_glass_ack_text(result: AckResult) -> str:
    """The answer, to the clicker only, to an Acknowledge click."""
    rid = f"`{escape(result.request_id[:16])}`"
    match result.outcome:
        case AckOutcome.ACKNOWLEDGED:
            return f"You acknowledged break-glass {rid}; it will not be alerted again."
        case AckOutcome.ALREADY:
            by = mention(result.by) if result.by else "someone"
            at = f" {when(result.at)}" if result.at else ""
            return f"Break-glass {rid} was already acknowledged by {by}{at}."
        case AckOutcome.OWN:
            return "You cannot acknowledge your own break-glass: an approver of the resource or a security lead must."
        case AckOutcome.NOT_ALLOWED:
            return "Only the approvers of this resource and the security leads can acknowledge a break-glass alert."
        case AckOutcome.PEOPLE_UNKNOWN:
            return (
                f"Slack could not list the approver or security lead usergroups ({code(result.slack_error)}), so "
                "your acknowledgement could not be checked. Nothing changed; try again."
            )
        case AckOutcome.UNKNOWN:
            return "That break-glass alert does not exist."
