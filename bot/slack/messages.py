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
from bot.services.delivery import CARD_UNDELIVERABLE
from bot.services.digests import DigestAnswer, DigestRefusal
from bot.services.early import RevokeOutcome, RevokeResult
from bot.services.errors import ApproversUnknown, TooManyPending, Unmapped, UnmappedRequester, UserFacingError
from bot.services.listing import Listing
from bot.services.notices import Alert, AlertKind, ApprovalReminder, ContextEnded, EndSummary, ExpiryNotice, GrantLife
from bot.services.snapshots import RequestSnapshot
from bot.slack.cards import MAX_SHOWN_DENY_REASON, approved_by_text, ended_early_by, failure_text, status_summary
from bot.slack.ids import ActionId
from bot.slack.text import addressed, clip, code, duration, escape, mention, mentions, when

# --- what happened to a request ------------------------------------------------------------------


def outcome_text(request: RequestSnapshot) -> str:
    """The DM the requester gets when their request is decided."""
    status = RequestStatus(request.status)
    head = f"Your request `{request.id}` for {code(request.resource)} ({', '.join(request.scopes)})"
    if status is RequestStatus.APPROVED:
        return f"{head} was {approved_by_text(request)}."
    if status is RequestStatus.DENIED and request.decided_by_rule:
        return f"{head} was denied by rule {code(request.rule or '')}: {_rule_message(request)}"
    if status is RequestStatus.DENIED:
        reason = f" Reason: {escape(clip(request.deny_reason, MAX_SHOWN_DENY_REASON))}" if request.deny_reason else ""
        return f"{head} was denied by {mentions(request.deniers)}.{reason}"
    if status is RequestStatus.FAILED:
        return f"{head} was approved, but {failure_text(request)}. Nothing was issued to you."
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
    return f"{_audit_head(request, event)} {status_summary(request)}"


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
        case CommandErrorCode.DURATION_TOO_LONG:
            return (
                f"{_typed(error.typed)} is longer than the maximum for {resource}: "
                f"{format_duration(error.max_duration)}."
            )
        case CommandErrorCode.EMPTY_REASON:
            return (
                f"A reason is required, e.g. `/jit request {error.resource} {','.join(error.scopes)} "
                f"{error.typed} checking INC-1234`."
            )
        case CommandErrorCode.REASON_TOO_LONG:
            return f"The reason is {error.length} characters; keep it under {MAX_REASON_LENGTH}."
        case CommandErrorCode.MISSING_REQUEST_ID:
            return "Which request? Use `/jit revoke <request id>`; `/jit list` shows yours."
        case CommandErrorCode.BAD_DATE:
            return (
                f"{_typed(error.typed)} is not a date like `2026-10-28`. Use `/jit digest` or `/jit digest YYYY-MM-DD`."
            )


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
    raise TypeError(f"no words for {type(error).__name__}")


def unexpected_error_text(reference: str) -> str:
    return f"Something went wrong on our side and nothing was changed. Reference: `{reference}`."
