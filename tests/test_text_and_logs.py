"""Outside text cannot forge lines: flattened where it comes in, escaped where it is logged."""

from __future__ import annotations

import logging

import pytest

from bot.domain.text import one_line
from bot.idp.errors import IdPError
from bot.logs import OneLineFormatter, escape_line


@pytest.mark.parametrize(
    ("raw", "flat"),
    [
        pytest.param("fix\nINFO forged line", "fix INFO forged line", id="newline"),
        pytest.param("a\r\nb\tc", "a b c", id="crlf-and-tab"),
        pytest.param("invoice\u202egpj.exe", "invoice gpj.exe", id="bidi-override"),
        pytest.param("zero\u200bwidth\u2066isolate\u2069", "zero width isolate", id="invisible"),
        pytest.param("line\u2028separator\u2029paragraph", "line separator paragraph", id="unicode-line-breaks"),
        pytest.param("\x1b[31mred\x1b[0m", "[31mred [0m", id="terminal-escape"),
        pytest.param("  already  fine  ", "already fine", id="spaces"),
        pytest.param("émoji 🚀 ok", "émoji 🚀 ok", id="printable-unicode-kept"),
    ],
)
def test_one_line_flattens_what_could_forge_a_line(raw: str, flat: str) -> None:
    assert one_line(raw) == flat


def test_one_line_clips_with_an_ellipsis() -> None:
    assert one_line("x" * 10, 5) == "xxxx…"
    assert one_line("short", 5) == "short"


def test_idp_error_text_is_one_line() -> None:
    error = IdPError("invalid_grant\nforged", "bad\r\nERROR admin approved\u202e", transient=False)
    assert "\n" not in str(error) and "\r" not in str(error) and "\u202e" not in str(error)
    assert error.code == "invalid_grant forged"


def test_log_lines_escape_control_and_invisible_characters() -> None:
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("bot", logging.WARNING, __file__, 1, "refused %s", ("a\nERROR forged\u202e\x1b",), None)
    line = formatter.format(record)
    assert line == "WARNING refused a\\nERROR forged\\u202e\\u001b"
    assert "\n" not in line
    assert escape_line("plain text") == "plain text"


def test_log_lines_keep_tracebacks_readable() -> None:
    formatter = OneLineFormatter("%(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("bot", logging.ERROR, __file__, 1, "failed\nhere", (), sys.exc_info())
    formatted = formatter.format(record)
    first, *rest = formatted.splitlines()
    assert first == "failed\\nhere"
    assert rest[0].startswith("Traceback") and "ValueError: boom" in formatted
