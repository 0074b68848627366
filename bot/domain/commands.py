"""Parsing ``/jit …`` text into a command, and checking a request against the catalog.

Everything here is pure and total: any input yields a command or a ``CommandError`` that names what
is wrong as a code and facts (``bot.slack.messages`` words it for the person who typed it). The
hypothesis tests hold us to that.

The sub-commands are declared once, in ``SUBCOMMANDS``: the parser, ``/jit help`` and the README's
command table are all drawn from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum

from bot.domain.durations import DurationError, parse_duration
from bot.domain.policy import Policy, Resource
from bot.domain.text import one_line

MAX_REASON_LENGTH = 500


class CommandErrorCode(StrEnum):
    UNKNOWN_SUBCOMMAND = "unknown_subcommand"
    UNKNOWN_RESOURCE = "unknown_resource"
    SCOPE_NOT_OFFERED = "scope_not_offered"
    NO_SCOPES = "no_scopes"
    BAD_DURATION = "bad_duration"
    DURATION_TOO_LONG = "duration_too_long"
    EMPTY_REASON = "empty_reason"
    REASON_TOO_LONG = "reason_too_long"
    MISSING_REQUEST_ID = "missing_request_id"
    BAD_DATE = "bad_date"
    # /jit breakglass on a resource whose policy has no break_glass.
    NO_BREAK_GLASS = "no_break_glass"
    # /jit breakglass with fewer than its four arguments (there is no form for it: it is for emergencies).
    BREAK_GLASS_USAGE = "break_glass_usage"
    MISSING_EXTENSION = "missing_extension"  # /jit extend without a request id and a duration
    BAD_EXTENSION_DURATION = "bad_extension_duration"


@dataclass(frozen=True)
class CommandError:
    """What is wrong with a command: a code and the facts its message needs (unused ones stay empty)."""

    code: CommandErrorCode
    # What the person typed that is wrong: the sub-command, resource, scope or duration.
    typed: str = ""
    resource: str = ""
    # The known resources (UNKNOWN_RESOURCE) or the resource's scopes (scope errors).
    allowed: tuple[str, ...] = ()
    max_duration: timedelta = timedelta(0)
    # The scopes as typed, for the example in EMPTY_REASON.
    scopes: tuple[str, ...] = ()
    # The reason's length (REASON_TOO_LONG).
    length: int = 0
    # BAD_DURATION: what the duration parser found wrong, in its own words.
    detail: str = ""
    # The sub-command the example in EMPTY_REASON shows.
    command: str = "request"


@dataclass(frozen=True)
class RequestDraft:
    """A request that passed every catalog check; what the requester asked for, nothing more."""

    resource: str
    scopes: tuple[str, ...]
    duration: timedelta
    reason: str


@dataclass(frozen=True)
class HelpCommand:
    pass


@dataclass(frozen=True)
class ResourcesCommand:
    pass


@dataclass(frozen=True)
class ListCommand:
    pass


@dataclass(frozen=True)
class RevokeCommand:
    request_id: str


@dataclass(frozen=True)
class DigestCommand:
    """``/jit digest [YYYY-MM-DD]``; no date: yesterday in digest.timezone."""

    day: date | None = None


@dataclass(frozen=True)
class ExtendCommand:
    """``/jit extend <request id> <duration> [reason…]``: more time on an active grant. No reason:
    the extension gives the original request's."""

    request_id: str
    duration: timedelta
    reason: str | None = None


@dataclass(frozen=True)
class OpenRequestModal:
    """``/jit request`` with missing arguments: ask in a modal, prefilled with what was typed."""

    resource: str | None = None


@dataclass(frozen=True)
class SubmitRequest:
    draft: RequestDraft


@dataclass(frozen=True)
class BreakGlassCommand:
    """``/jit breakglass``: a request checked against the resource's break_glass.max_duration; who may
    use it is the service's question (it needs Slack's usergroups)."""

    draft: RequestDraft


Command = (
    HelpCommand
    | ResourcesCommand
    | ListCommand
    | RevokeCommand
    | DigestCommand
    | ExtendCommand
    | OpenRequestModal
    | SubmitRequest
    | BreakGlassCommand
    | CommandError
)


@dataclass(frozen=True)
class Words:
    """What a sub-command's parser sees: the words after the sub-command, and the whole text."""

    args: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class SubCommand:
    """One entry of the command table."""

    name: str
    # What it does, for ``/jit help`` and the README (Slack mrkdwn and Markdown alike: code spans only).
    summary: str
    parse: Callable[[Words, Policy], Command]
    # The arguments after the name as the usage line shows them; "" when there are none.
    arguments: str = ""
    aliases: tuple[str, ...] = ()
    # Its answer needs no I/O, so it goes back in the acknowledgement itself, with no lazy step.
    answered_in_ack: bool = False

    def usages(self) -> tuple[str, ...]:
        """One usage line per spelling, the name first."""
        return tuple(f"/jit {name} {self.arguments}".rstrip() for name in (self.name, *self.aliases))


@dataclass(frozen=True)
class Parsed:
    """A parsed command and whether the acknowledgement answers it (errors always are)."""

    command: Command
    answered_in_ack: bool


def _request(words: Words, policy: Policy) -> Command:
    args = words.args
    # Fewer than three arguments: ask in a form. Three (no reason): that is a specific mistake to name.
    if len(args) < 3:
        known = args[0] if args and policy.resource(args[0]) is not None else None
        return OpenRequestModal(resource=known)
    resource_name, scopes_text, duration_text = args[0], args[1], args[2]
    # The reason keeps the requester's own spacing after the third argument.
    split = words.text.split(None, 4)
    reason = split[4] if len(split) == 5 else ""
    result = check_request(
        policy,
        resource_name=resource_name,
        scopes=[s for s in scopes_text.split(",") if s],
        duration_text=duration_text,
        reason=reason,
    )
    return SubmitRequest(result) if isinstance(result, RequestDraft) else result


def _breakglass(words: Words, policy: Policy) -> Command:
    args = words.args
    if len(args) < 3:
        return CommandError(CommandErrorCode.BREAK_GLASS_USAGE, allowed=break_glass_resources(policy))
    resource = policy.resource(args[0])
    if resource is None:
        return CommandError(CommandErrorCode.UNKNOWN_RESOURCE, typed=args[0], allowed=policy.resource_names)
    if resource.break_glass is None:
        offered = break_glass_resources(policy)
        return CommandError(CommandErrorCode.NO_BREAK_GLASS, resource=resource.name, allowed=offered)
    split = words.text.split(None, 4)
    result = check_request(
        policy,
        resource_name=resource.name,
        scopes=[s for s in args[1].split(",") if s],
        duration_text=args[2],
        reason=split[4] if len(split) == 5 else "",
        max_duration=resource.break_glass.max_duration,
        command="breakglass",
    )
    return BreakGlassCommand(result) if isinstance(result, RequestDraft) else result


def break_glass_resources(policy: Policy) -> tuple[str, ...]:
    return tuple(r.name for r in policy.resources if r.break_glass is not None)


def _revoke(words: Words, _policy: Policy) -> Command:
    if len(words.args) != 1:
        return CommandError(CommandErrorCode.MISSING_REQUEST_ID)
    return RevokeCommand(request_id=words.args[0].strip().upper())


def _digest(words: Words, _policy: Policy) -> Command:
    if not words.args:
        return DigestCommand()
    typed = " ".join(words.args)
    if len(words.args) != 1 or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", typed):
        return CommandError(CommandErrorCode.BAD_DATE, typed=typed[:40])
    try:
        return DigestCommand(date.fromisoformat(typed))
    except ValueError:
        return CommandError(CommandErrorCode.BAD_DATE, typed=typed)


def _extend(words: Words, _policy: Policy) -> Command:
    if len(words.args) < 2:
        return CommandError(CommandErrorCode.MISSING_EXTENSION)
    checked = check_extension(words.args[1], reason=(words.text.split(None, 3)[3:] or [""])[0])
    if isinstance(checked, CommandError):
        return checked
    duration, reason = checked
    return ExtendCommand(request_id=words.args[0].strip().upper(), duration=duration, reason=reason)


def check_extension(duration_text: str, *, reason: str) -> tuple[timedelta, str | None] | CommandError:
    """An extension's extra time and its reason (None: none typed), as ``/jit extend`` and the Extend
    form take them; how much more the grant may have is the policy's to say, when it is asked."""
    try:
        duration = parse_duration(duration_text)
    except DurationError as exc:
        return CommandError(CommandErrorCode.BAD_EXTENSION_DURATION, typed=duration_text, detail=str(exc))
    cleaned = one_line(reason)
    if len(cleaned) > MAX_REASON_LENGTH:
        return CommandError(CommandErrorCode.REASON_TOO_LONG, length=len(cleaned))
    return duration, cleaned or None


SUBCOMMANDS: tuple[SubCommand, ...] = (
    SubCommand(
        "request",
        "ask for access, e.g. `/jit request prod-db read 30m checking INC-1234`. Scopes are "
        "comma-separated; durations look like `90s`, `15m`, `2h`, `1h30m`. With arguments missing "
        "(or none), a form asks for the rest: the resource, its scopes, durations up to its maximum, the reason.",
        _request,
        arguments="<resource> <scopes> <duration> <reason…>",
    ),
    SubCommand(
        "breakglass",
        "in an emergency, access at once with no approval, e.g. `/jit breakglass prod-db write 30m INC-1234 "
        "outage`, for the people a resource's `break_glass` allows, up to its `break_glass.max_duration`. The audit "
        "channel is alerted, mentioning the approvers and security leads, until one of them acknowledges it.",
        _breakglass,
        arguments="<resource> <scopes> <duration> <reason…>",
    ),
    SubCommand(
        "resources",
        "what you can ask for, with scopes, maximum durations and approver channels.",
        lambda _words, _policy: ResourcesCommand(),
        answered_in_ack=True,
    ),
    SubCommand("list", "your pending requests and active grants, with time left.", lambda _w, _p: ListCommand()),
    SubCommand(
        "revoke",
        "end an active grant now (the requester or an approver of the resource), or cancel your own pending request.",
        _revoke,
        arguments="<request id>",
        aliases=("cancel",),
    ),
    SubCommand(
        "extend",
        "ask for more time on your active grant, e.g. `/jit extend R7K2M9QX4P 30m still on INC-1234`; "
        "the same approvers decide, and no reason means the original's. Once approved, a new pickup link "
        "brings a new token, and the old one is revoked when you pick the new one up.",
        _extend,
        arguments="<request id> <duration> [reason…]",
    ),
    SubCommand(
        "digest",
        "the security leads' digest of one day (default: yesterday in the digest's time zone), "
        "for security leads and approvers, shown only to you.",
        _digest,
        arguments="[YYYY-MM-DD]",
    ),
    SubCommand("help", "the commands and what they do.", lambda _words, _policy: HelpCommand(), answered_in_ack=True),
)

_BY_NAME = {name: sub for sub in SUBCOMMANDS for name in (sub.name, *sub.aliases)}
_HELP = _BY_NAME["help"]


def subcommand(word: str) -> SubCommand | None:
    """The table entry a typed sub-command names; names are matched without regard to case."""
    return _BY_NAME.get(word.lower())


def parse(text: str, policy: Policy) -> Parsed:
    words = text.split()
    # No words at all: what someone who types a bare ``/jit`` wants is the help.
    sub = subcommand(words[0]) if words else _HELP
    if sub is None:
        return Parsed(CommandError(CommandErrorCode.UNKNOWN_SUBCOMMAND, typed=words[0]), answered_in_ack=True)
    command = sub.parse(Words(args=tuple(words[1:]), text=text), policy)
    return Parsed(command, answered_in_ack=sub.answered_in_ack or isinstance(command, CommandError))


def parse_command(text: str, policy: Policy) -> Command:
    return parse(text, policy).command


def check_request(
    policy: Policy,
    *,
    resource_name: str,
    scopes: list[str],
    duration_text: str,
    reason: str,
    max_duration: timedelta | None = None,
    command: str = "request",
) -> RequestDraft | CommandError:
    """Check one request against the catalog; the first problem found is reported. ``max_duration``:
    a limit other than the resource's (break-glass's); ``command``: the sub-command errors cite."""
    resource = policy.resource(resource_name)
    if resource is None:
        return CommandError(CommandErrorCode.UNKNOWN_RESOURCE, typed=resource_name, allowed=policy.resource_names)
    scope_error = _check_scopes(resource, scopes)
    if scope_error is not None:
        return scope_error
    limit = resource.max_duration if max_duration is None else max_duration
    try:
        duration = parse_duration(duration_text)
    except DurationError as exc:
        return CommandError(
            CommandErrorCode.BAD_DURATION,
            typed=duration_text,
            resource=resource.name,
            max_duration=limit,
            detail=str(exc),
            command=command,
        )
    if duration > limit:
        return CommandError(
            CommandErrorCode.DURATION_TOO_LONG,
            typed=duration_text,
            resource=resource.name,
            max_duration=limit,
            command=command,
        )
    # One line, no control or invisible characters: a reason must not forge lines on a card or in a log.
    cleaned_reason = one_line(reason)
    if not cleaned_reason:
        return CommandError(
            CommandErrorCode.EMPTY_REASON,
            typed=duration_text,
            resource=resource.name,
            scopes=tuple(scopes),
            command=command,
        )
    if len(cleaned_reason) > MAX_REASON_LENGTH:
        return CommandError(CommandErrorCode.REASON_TOO_LONG, length=len(cleaned_reason))
    ordered = tuple(dict.fromkeys(scopes))
    return RequestDraft(resource=resource.name, scopes=ordered, duration=duration, reason=cleaned_reason)


def _check_scopes(resource: Resource, scopes: list[str]) -> CommandError | None:
    if not scopes:
        return CommandError(CommandErrorCode.NO_SCOPES, resource=resource.name, allowed=resource.scopes)
    for scope in scopes:
        if scope not in resource.scopes:
            return CommandError(
                CommandErrorCode.SCOPE_NOT_OFFERED, typed=scope, resource=resource.name, allowed=resource.scopes
            )
    return None
