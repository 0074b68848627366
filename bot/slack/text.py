"""Small text helpers for Slack's mrkdwn."""

from __future__ import annotations

from datetime import datetime, timedelta

from bot.domain.durations import format_duration
from bot.domain.text import mrkdwn_escape


def escape(text: str) -> str:
    """Slack's required escaping, so user text can never become a mention or a link (<!channel>)."""
    return mrkdwn_escape(text)


def mention(user_id: str) -> str:
    return f"<@{user_id}>"


def mentions(user_ids: tuple[str, ...] | list[str]) -> str:
    return ", ".join(mention(u) for u in user_ids)


def addressed(entries: tuple[str, ...] | list[str]) -> str:
    """Slack user and usergroup ids as mentions that notify them: a usergroup is ``<!subteam^S…>``."""
    return ", ".join(f"<!subteam^{e}>" if e.startswith("S") else mention(e) for e in entries)


def code(text: str) -> str:
    return "`" + escape(text).replace("`", "'") + "`"


def duration(value: timedelta) -> str:
    return format_duration(value)


def when(value: datetime) -> str:
    """Slack renders <!date^…> in each reader's own timezone; the fallback is UTC."""
    epoch = int(value.timestamp())
    fallback = value.strftime("%Y-%m-%d %H:%M UTC")
    # "today at 10:32" reads after any of "Requested", "until", "before" and "Revoked".
    return f"<!date^{epoch}^{{date_short_pretty}} at {{time}}|{fallback}>"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
