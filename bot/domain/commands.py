"""Parsing ``/jit …`` text into a command, and checking a request against the catalog.

Everything here is pure and total: any input yields a command or a ``CommandError`` with a message
meant for the person who typed it. The hypothesis tests hold us to that.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from bot.domain.durations import DurationError, format_duration, parse_duration
from bot.domain.policy import Policy, Resource
from bot.domain.text import one_line

MAX_REASON_LENGTH = 500
USAGE = "/jit request <resource> <scopes> <duration> <reason…>"


class CommandErrorCode(StrEnum):
    UNKNOWN_SUBCOMMAND = "unknown_subcommand"
    UNKNOWN_RESOURCE = "unknown_resource"
    SCOPE_NOT_OFFERED = "scope_not_offered"
    NO_SCOPES = "no_scopes"
    BAD_DURATION = "bad_duration"
    DURATION_TOO_LONG = "duration_too_long"
    EMPTY_REASON = "empty_reason"
    REASON_TOO_LONG = "reason_too_long"
    UNMAPPED_REQUESTER = "unmapped_requester"
    MISSING_REQUEST_ID = "missing_request_id"


@dataclass(frozen=True)
class CommandError:
    code: CommandErrorCode
    message: str


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
class OpenRequestModal:
    """``/jit request`` with missing arguments: ask in a modal, prefilled with what was typed."""

    resource: str | None = None


@dataclass(frozen=True)
class SubmitRequest:
    draft: RequestDraft


Command = HelpCommand | ResourcesCommand | ListCommand | RevokeCommand | OpenRequestModal | SubmitRequest | CommandError


def _code(text: str) -> str:
    # Backticks inside user text would break the inline code span we show it in.
    return "`" + text.replace("`", "'")[:80] + "`"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _listing(items: tuple[str, ...] | list[str]) -> str:
    return ", ".join(_code(i) for i in items)


def parse_command(text: str, policy: Policy) -> Command:
    words = text.split()
    if not words or words[0].lower() == "help":
        return HelpCommand()
    sub = words[0].lower()
    if sub == "resources":
        return ResourcesCommand()
    if sub == "list":
        return ListCommand()
    if sub in ("revoke", "cancel"):
        if len(words) != 2:
            return CommandError(
                CommandErrorCode.MISSING_REQUEST_ID,
                "Which request? Use `/jit revoke <request id>`; `/jit list` shows yours.",
            )
        return RevokeCommand(request_id=words[1].strip().upper())
    if sub != "request":
        return CommandError(
            CommandErrorCode.UNKNOWN_SUBCOMMAND,
            f"Unknown command {_code(words[0])}. Try `/jit help`.",
        )
    args = words[1:]
    # Fewer than three arguments: ask in a form. Three (no reason): that is a specific mistake to name.
    if len(args) < 3:
        known = args[0] if args and policy.resource(args[0]) is not None else None
        return OpenRequestModal(resource=known)
    resource_name, scopes_text, duration_text = args[0], args[1], args[2]
    # The reason keeps the requester's own spacing after the third argument.
    reason = text.split(None, 4)[4] if len(text.split(None, 4)) == 5 else ""
    result = check_request(
        policy,
        resource_name=resource_name,
        scopes=[s for s in scopes_text.split(",") if s],
        duration_text=duration_text,
        reason=reason,
    )
    return SubmitRequest(result) if isinstance(result, RequestDraft) else result


def check_request(
    policy: Policy, *, resource_name: str, scopes: list[str], duration_text: str, reason: str
) -> RequestDraft | CommandError:
    """Check one request against the catalog; the first problem found is reported."""
    resource = policy.resource(resource_name)
    if resource is None:
        return CommandError(
            CommandErrorCode.UNKNOWN_RESOURCE,
            f"Unknown resource {_code(resource_name)}. Known resources: {_listing(policy.resource_names)}.",
        )
    scope_error = _check_scopes(resource, scopes)
    if scope_error is not None:
        return scope_error
    try:
        duration = parse_duration(duration_text)
    except DurationError as exc:
        return CommandError(
            CommandErrorCode.BAD_DURATION,
            f"{_sentence(str(exc))}. "
            f"The maximum for {_code(resource.name)} is {format_duration(resource.max_duration)}.",
        )
    if duration > resource.max_duration:
        return CommandError(
            CommandErrorCode.DURATION_TOO_LONG,
            f"{_code(duration_text)} is longer than the maximum for {_code(resource.name)}: "
            f"{format_duration(resource.max_duration)}.",
        )
    # One line, no control or invisible characters: a reason must not forge lines on a card or in a log.
    cleaned_reason = one_line(reason)
    if not cleaned_reason:
        return CommandError(
            CommandErrorCode.EMPTY_REASON,
            f"A reason is required, e.g. `/jit request {resource.name} {','.join(scopes)} "
            f"{duration_text} checking INC-1234`.",
        )
    if len(cleaned_reason) > MAX_REASON_LENGTH:
        return CommandError(
            CommandErrorCode.REASON_TOO_LONG,
            f"The reason is {len(cleaned_reason)} characters; keep it under {MAX_REASON_LENGTH}.",
        )
    ordered = tuple(dict.fromkeys(scopes))
    return RequestDraft(resource=resource.name, scopes=ordered, duration=duration, reason=cleaned_reason)


def _check_scopes(resource: Resource, scopes: list[str]) -> CommandError | None:
    if not scopes:
        return CommandError(
            CommandErrorCode.NO_SCOPES,
            f"Name at least one scope for {_code(resource.name)}. Allowed: {_listing(resource.scopes)}.",
        )
    for scope in scopes:
        if scope not in resource.scopes:
            return CommandError(
                CommandErrorCode.SCOPE_NOT_OFFERED,
                f"{_code(resource.name)} does not offer scope {_code(scope)}. Allowed: {_listing(resource.scopes)}.",
            )
    return None
