"""Log lines that cannot be forged: whatever a message quotes (a reason, an IdP's error text, a
Slack error), control and invisible characters in it are escaped, so one record is one line.
Tracebacks keep their own newlines; they come from our code, not from outside text."""

from __future__ import annotations

import logging
import unicodedata

_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def escape_line(text: str) -> str:
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == " " or unicodedata.category(ch) not in _ESCAPED:
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_line(record.message)
        return super().formatMessage(record)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries log request details at DEBUG; keep them well above that so no token can slip out.
    for name in ("slack_sdk", "slack_bolt", "urllib3", "httpx", "httpcore", "authlib", "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Bolt reads SLACK_BOT_TOKEN from the environment itself and warns that it is unused, since we hand
    # it a ready client; the warning is noise on every start.
    logging.getLogger("slack_bolt.App").addFilter(lambda record: "will be unused" not in record.getMessage())
