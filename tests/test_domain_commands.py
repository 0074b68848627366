"""The command parser and catalog checks: a table of bad inputs, and fuzzing that it is total."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.domain.commands import (
    CommandError,
    CommandErrorCode,
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
]


@pytest.mark.parametrize(("text", "code", "words"), BAD_INPUTS, ids=[b[1].value + ":" + b[0][:30] for b in BAD_INPUTS])
def test_bad_input_gets_a_specific_message(text: str, code: CommandErrorCode, words: list[str]) -> None:
    parsed = parse_command(text, POLICY)
    assert isinstance(parsed, CommandError)
    assert parsed.code is code
    for word in words:
        assert word in parsed.message, f"{word!r} missing from {parsed.message!r}"


def test_whitespace_reason_is_empty() -> None:
    # Slack trims the text, but a reason of only invisible characters must still be refused.
    parsed = parse_command("request prod-db read 30m \u2003\u00a0", POLICY)
    assert isinstance(parsed, CommandError)
    assert parsed.code is CommandErrorCode.EMPTY_REASON


@settings(max_examples=400)
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
        assert parsed.message.strip()
    if isinstance(parsed, SubmitRequest):
        _assert_within_policy(parsed.draft)


words = st.sampled_from(
    [
        "request",
        "prod-db",
        "billing",
        "k8s",
        "read",
        "write",
        "read,write",
        "view",
        "30m",
        "2h",
        "1h30m",
        "3h",
        "0s",
        "x",
        ",",
        "",
        "refund",
        "because",
    ]
)


@settings(max_examples=400)
@given(st.lists(words | st.text(max_size=12), max_size=8))
def test_parser_is_total_on_near_valid_commands(parts: list[str]) -> None:
    parsed = parse_command(" ".join(["request", *parts]), POLICY)
    if isinstance(parsed, CommandError):
        assert parsed.message.strip()
    elif isinstance(parsed, SubmitRequest):
        _assert_within_policy(parsed.draft)
    else:
        assert isinstance(parsed, OpenRequestModal)


def _assert_within_policy(draft: RequestDraft) -> None:
    resource = POLICY.resource(draft.resource)
    assert resource is not None
    assert set(draft.scopes) <= set(resource.scopes)
    assert timedelta(0) < draft.duration <= resource.max_duration
    assert draft.reason.strip()
