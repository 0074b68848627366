"""The command table is the one source: the parser, ``/jit help`` and the README agree with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.domain.commands import SUBCOMMANDS, CommandError, CommandErrorCode, SubCommand, parse, parse_command
from bot.slack.messages import help_text, usage_of
from tests.world import POLICY as POLICY_DATA
from tests.world import REQUESTER, make_policy

# prod-db offers break-glass, so that /jit breakglass has a well-formed example.
POLICY = make_policy(
    resources=[
        {**POLICY_DATA["resources"][0], "break_glass": {"max_duration": "1h", "allowed": [REQUESTER]}},
        *POLICY_DATA["resources"][1:],
    ]
)
README = Path(__file__).resolve().parent.parent / "README.md"
SPELLINGS = [name for sub in SUBCOMMANDS for name in (sub.name, *sub.aliases)]


def _readme_command_table() -> list[str]:
    """The Markdown table under "## Commands", up to the first line that is not a table row."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Commands")
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    end = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
    return lines[first:end]


def test_readme_command_table_is_the_command_table() -> None:
    expected = [
        "| command | what it does |",
        "|---|---|",
        *(f"| {usage_of(sub)} | {sub.summary} |" for sub in SUBCOMMANDS),
    ]
    assert _readme_command_table() == expected


def test_help_lists_every_command_and_spelling() -> None:
    text = help_text()
    for sub in SUBCOMMANDS:
        for usage in sub.usages():
            shown = usage.replace("<", "&lt;").replace(">", "&gt;")
            assert f"`{shown}`" in text
        assert sub.summary in text
    assert "`/jit cancel &lt;request id&gt;`" in text
    # Slack reads any unescaped < as the start of a link, mention or date: the help has none of those.
    assert "<" not in text and ">" not in text


def test_names_are_unique() -> None:
    assert len(SPELLINGS) == len(set(SPELLINGS))
    assert all(name == name.lower() and " " not in name for name in SPELLINGS)


@pytest.mark.parametrize("name", SPELLINGS)
def test_parser_knows_every_spelling(name: str) -> None:
    parsed = parse_command(name, POLICY)
    assert not (isinstance(parsed, CommandError) and parsed.code is CommandErrorCode.UNKNOWN_SUBCOMMAND)


def test_an_alias_parses_as_its_command() -> None:
    assert parse_command("cancel r123", POLICY) == parse_command("revoke R123", POLICY)


# A well-formed use of each command (a new command needs one here).
EXAMPLES = {
    "request": ["request prod-db read 30m checking INC-1234", "request", "request prod-db"],
    "breakglass": ["breakglass prod-db write 30m INC-1234 outage"],
    "resources": ["resources"],
    "list": ["list"],
    "revoke": ["revoke R123", "cancel R123"],
    "digest": ["digest", "digest 2026-10-28"],
    "extend": ["extend R123 30m", "extend r123 1h30m still on INC-1234"],
    "help": ["help", ""],
}


def test_every_command_has_an_example() -> None:
    assert set(EXAMPLES) == {sub.name for sub in SUBCOMMANDS}


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=[s.name for s in SUBCOMMANDS])
def test_answered_in_ack_comes_from_the_table(sub: SubCommand) -> None:
    for text in EXAMPLES[sub.name]:
        parsed = parse(text, POLICY)
        assert not isinstance(parsed.command, CommandError), text
        assert parsed.answered_in_ack is sub.answered_in_ack, text


@pytest.mark.parametrize("text", ["frobnicate", "revoke", "request nosuch read 30m why"])
def test_errors_are_answered_in_the_ack(text: str) -> None:
    parsed = parse(text, POLICY)
    assert isinstance(parsed.command, CommandError)
    assert parsed.answered_in_ack


@given(st.sampled_from(SPELLINGS), st.lists(st.booleans(), min_size=10, max_size=10), st.sampled_from(["", " R1"]))
def test_sub_command_names_ignore_case(name: str, upper: list[bool], rest: str) -> None:
    mixed = "".join(c.upper() if up else c for c, up in zip(name, upper, strict=False))
    assert parse_command(mixed + rest, POLICY) == parse_command(name + rest, POLICY)
