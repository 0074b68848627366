"""Log lines that cannot be forged: whatever a message quotes (a reason, an IdP's error text, a
Slack error), control and invisible characters in it are escaped, so one record is one line.
Tracebacks keep their own newlines in the text format; they come from our code, not from outside
text. The JSON format (``--log-format json``, for log pipelines) writes one object per record, its
traceback a field, so there one record is one line even with a traceback."""

from __future__ import annotations

import json
import logging
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})

# The LogRecord attribute (set through ``extra``) holding a record's structured fields: the JSON
# format writes them beside the message; the text format has them in the message already.
FIELDS = "jit_fields"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


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


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, the
    record's structured fields, and ``exc_info`` / ``stack_info`` as text when present."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(str(key), value)  # never overwrite the four above
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # ASCII only: every control, invisible and line-separating character is a \u escape, so no
        # splitter (not even one that breaks lines at U+2028) sees two lines in one record.
        return json.dumps(entry, ensure_ascii=True, default=str)


class _InfoAsDebug(logging.Filter):
    """Turns a chatty library's INFO records into DEBUG ones, written only when DEBUG is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def info_as_debug(*logger_names: str) -> None:
    """Log what these loggers say at INFO at DEBUG instead (idempotent). A logger's filters see only
    its own records, not its children's, so name each logger that writes."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _InfoAsDebug) for f in logger.filters):
            logger.addFilter(_InfoAsDebug())


def configure_logging(level: int = logging.INFO, log_format: LogFormat = LogFormat.TEXT) -> None:
    handler = logging.StreamHandler()
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
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
