"""The command parser and catalog checks: a table of bad inputs, and fuzzing that it is total."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from bot.domain.commands import (
    CommandError,
    CommandErrorCode,
    DigestCommand,
    HelpCommand,
    ListCommand,
    OpenRequestModal,
    RequestDraft,
    ResourcesCommand,
    RevokeCommand,
    SubmitRequest,
    parse_command,
)
from bot.domain.durations import DurationError, format_duration, parse_duration
from bot.slack.messages import command_error_text
from tests.world import make_policy

POLICY = make_policy()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        ("1H5M", timedelta(hours=1, minutes=5)),
    ],
)
def test_durations_people_type(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0m", "abc", "30", "m", "1.5h", "-5m", "30 m", "8d", "1m1h"])
def test_durations_refused(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=7 * 86400))
def test_format_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


def test_typed_request_parses() -> None:
    parsed = parse_command("request prod-db read,write 30m checking   INC-1234 <@U1>", POLICY)
    assert parsed == SubmitRequest(
        RequestDraft(
            resource="prod-db",
            scopes=("read", "write"),
            duration=timedelta(minutes=30),
            reason="checking INC-1234 <@U1>",
        )
    )


def test_repeated_scopes_are_collapsed() -> None:
    parsed = parse_command("request prod-db read,read 30m x", POLICY)
    assert isinstance(parsed, SubmitRequest)
    assert parsed.draft.scopes == ("read",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", HelpCommand()),
        ("help", HelpCommand()),
        ("resources", ResourcesCommand()),
        ("request", OpenRequestModal(resource=None)),
        ("request prod-db", OpenRequestModal(resource="prod-db")),
        ("request nosuch read", OpenRequestModal(resource=None)),
        ("request prod-db read", OpenRequestModal(resource="prod-db")),
        ("digest", DigestCommand()),
        ("digest 2026-02-28", DigestCommand(date(2026, 2, 28))),
    ],
)
def test_commands_without_a_full_request(text: str, expected: object) -> None:
    assert parse_command(text, POLICY) == expected


# Each bad input, the error code, and words the person must see in the message.
BAD_INPUTS = [
    ("frobnicate", CommandErrorCode.UNKNOWN_SUBCOMMAND, ["`frobnicate`", "/jit help"]),
    ("request nosuch read 30m why", CommandErrorCode.UNKNOWN_RESOURCE, ["`nosuch`", "`prod-db`", "`billing`", "`k8s`"]),
    ("request prod-db admin 30m why", CommandErrorCode.SCOPE_NOT_OFFERED, ["`admin`", "`read`", "`write`"]),
    ("request prod-db read,admin 30m why", CommandErrorCode.SCOPE_NOT_OFFERED, ["`admin`", "Allowed"]),
    ("request prod-db , 30m why", CommandErrorCode.NO_SCOPES, ["at least one scope", "`read`"]),
    ("request prod-db read soon why", CommandErrorCode.BAD_DURATION, ["'soon'", "90s", "2h"]),
    ("request prod-db read 0m why", CommandErrorCode.BAD_DURATION, ["longer than zero"]),
    ("request prod-db read 3h why", CommandErrorCode.DURATION_TOO_LONG, ["`3h`", "maximum", "2h"]),
    ("request k8s view 31m why", CommandErrorCode.DURATION_TOO_LONG, ["30m"]),
    ("request prod-db read 30m", CommandErrorCode.EMPTY_REASON, ["reason is required", "checking INC-1234"]),
    ("request prod-db read 30m " + "x" * 501, CommandErrorCode.REASON_TOO_LONG, ["501", "500"]),
    ("digest 2026-02-30", CommandErrorCode.BAD_DATE, ["`2026-02-30`", "not a date", "/jit digest YYYY-MM-DD"]),
    ("digest last-week", CommandErrorCode.BAD_DATE, ["`last-week`"]),
    ("extend R123", CommandErrorCode.MISSING_EXTENSION, ["/jit extend <request id> <duration>", "/jit list"]),
    ("extend R123 soon", CommandErrorCode.BAD_EXTENSION_DURATION, ["'soon'", "`30m`"]),
    ("extend R123 30m " + "x" * 501, CommandErrorCode.REASON_TOO_LONG, ["501", "500"]),
    ("digest 2026-02-01 2026-02-02", CommandErrorCode.BAD_DATE, ["`2026-02-01 2026-02-02`"]),
]


@pytest.mark.parametrize(("text", "code", "words"), BAD_INPUTS, ids=[b[1].value + ":" + b[0][:30] for b in BAD_INPUTS])
def test_bad_input_gets_a_specific_message(text: str, code: CommandErrorCode, words: list[str]) -> None:
    parsed = parse_command(text, POLICY)
    assert isinstance(parsed, CommandError)
    assert parsed.code is code
    for word in words:
        assert word in command_error_text(parsed), f"{word!r} missing from {command_error_text(parsed)!r}"


def test_whitespace_reason_is_empty() -> None:
    # Slack trims the text, but a reason of only invisible characters must still be refused.
    parsed = parse_command("request prod-db read 30m \u2003\u00a0", POLICY)
    assert isinstance(parsed, CommandError)
    assert parsed.code is CommandErrorCode.EMPTY_REASON


# No deadline. Hypothesis's default (200 ms per example) is a wall-clock assertion: on a loaded
# machine one slow example fails the run as "unreliable", reported with whatever text that example
# happened to hold and its case-mapping shrinker made of it (the failures on `LIST`: "list" is a
# constant Hypothesis mines from the parser). Sub-command names are case-blind; see
# tests/test_command_table.py.
@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_parser_is_total_on_any_text(text: str) -> None:
    parsed = parse_command(text, POLICY)
    assert isinstance(
        parsed,
        HelpCommand | ResourcesCommand | ListCommand | RevokeCommand | OpenRequestModal | SubmitRequest | CommandError,
    )
    if isinstance(parsed, RevokeCommand):
        assert parsed.request_id
    if isinstance(parsed, CommandError):
        assert command_error_text(parsed).strip()
    if isinstance(parsed, SubmitRequest):
        _assert_within_policy(parsed.draft)


# Near-valid requests are built from the policy's own names: most are valid, the rest carry exactly
# one mistake each (a scope of another resource, a duration just over the maximum, no reason...), so
# the parser must both accept the good ones and name the right problem in the others.
_ALL_SCOPES = sorted({s for r in POLICY.resources for s in r.scopes})
_MISTAKES: dict[str | None, CommandErrorCode | None] = {
    None: None,
    "resource": CommandErrorCode.UNKNOWN_RESOURCE,
    "scope": CommandErrorCode.SCOPE_NOT_OFFERED,
    "no_scope": CommandErrorCode.NO_SCOPES,
    "duration": CommandErrorCode.BAD_DURATION,
    "too_long": CommandErrorCode.DURATION_TOO_LONG,
    "no_reason": CommandErrorCode.EMPTY_REASON,
    "long_reason": CommandErrorCode.REASON_TOO_LONG,
    "short": None,  # fewer than three arguments: the form opens
}


@st.composite
def near_valid_requests(draw: st.DrawFn) -> tuple[str, str | None]:
    """``request …`` text, and the one mistake in it (None: a valid request)."""
    mistake = draw(st.sampled_from([None] * 9 + [m for m in _MISTAKES if m is not None]))
    resource = draw(st.sampled_from(POLICY.resources))
    name = resource.name
    if mistake == "resource":
        name = draw(st.sampled_from(["nosuch", resource.name.upper(), resource.name + "x"]))
    scopes = draw(st.lists(st.sampled_from(resource.scopes), min_size=1, max_size=3))
    if mistake == "scope":
        wrong = draw(st.sampled_from([s for s in [*_ALL_SCOPES, "admin"] if s not in resource.scopes]))
        scopes.insert(draw(st.integers(0, len(scopes))), wrong)
    scopes_text = "," if mistake == "no_scope" else ",".join(scopes)
    limit = int(resource.max_duration.total_seconds())
    seconds = draw(st.integers(min_value=1, max_value=limit) | st.just(limit))
    if mistake == "too_long":
        seconds = draw(st.integers(min_value=limit + 1, max_value=2 * limit) | st.just(limit + 1))
    duration = format_duration(timedelta(seconds=seconds))
    if mistake == "duration":
        duration = draw(st.sampled_from(["0s", "0m", "soon", "30", "1.5h", "-5m", "8d", "1m1h"]))
    reason = draw(
        st.sampled_from(["checking INC-1234", "deploy  hotfix <@U1>", "x", "x" * 500])
        # Any text around a word: controls, newlines and odd spaces must not change the verdict.
        | st.builds("{}{}{}".format, st.text(max_size=20), st.sampled_from(["why", "INC-1"]), st.text(max_size=20))
    )
    if mistake == "long_reason":
        reason = "y" * draw(st.integers(min_value=501, max_value=600))
    parts = [name, scopes_text, duration, reason]
    if mistake == "no_reason":
        parts = parts[:3]
    if mistake == "short":
        parts = parts[: draw(st.integers(0, 2))]
    return " ".join(["request", *parts]), mistake


def _outcome(parsed: object) -> str:
    return parsed.code.value if isinstance(parsed, CommandError) else type(parsed).__name__


@settings(max_examples=400, deadline=None)
@given(near_valid_requests())
def test_parser_is_total_on_near_valid_commands(case: tuple[str, str | None]) -> None:
    text, mistake = case
    parsed = parse_command(text, POLICY)
    event(_outcome(parsed))
    if isinstance(parsed, CommandError):
        assert parsed.code is _MISTAKES[mistake], (text, parsed)
        assert command_error_text(parsed).strip()
    elif isinstance(parsed, SubmitRequest):
        assert mistake is None, (text, parsed)
        _assert_within_policy(parsed.draft)
        assert parsed.draft.resource == text.split()[1]
    else:
        assert isinstance(parsed, OpenRequestModal)
        assert mistake == "short", (text, parsed)


def test_near_valid_commands_are_often_valid() -> None:
    """The strategy above must reach the "within policy" branch, and every kind of mistake."""
    seen: Counter[str] = Counter()

    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(near_valid_requests())
    def collect(case: tuple[str, str | None]) -> None:
        seen[_outcome(parse_command(case[0], POLICY))] += 1

    collect()
    assert seen["SubmitRequest"] >= 400 // 5, seen
    # Errors of other sub-commands than request, which this strategy does not type.
    others = {
        CommandErrorCode.UNKNOWN_SUBCOMMAND,
        CommandErrorCode.MISSING_REQUEST_ID,
        CommandErrorCode.BAD_DATE,
        CommandErrorCode.MISSING_EXTENSION,
        CommandErrorCode.BAD_EXTENSION_DURATION,
    }
    others |= {CommandErrorCode.NO_BREAK_GLASS, CommandErrorCode.BREAK_GLASS_USAGE}
    request_errors = set(CommandErrorCode) - others
    assert {code.value for code in request_errors} <= set(seen), seen
    assert seen["OpenRequestModal"], seen


def _assert_within_policy(draft: RequestDraft) -> None:
    resource = POLICY.resource(draft.resource)
    assert resource is not None
    assert set(draft.scopes) <= set(resource.scopes)
    assert timedelta(0) < draft.duration <= resource.max_duration
    assert draft.reason.strip()
