"""Durations as people type them: ``90s``, ``15m``, ``2h``, ``1h30m``, ``1d``."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(?:(\d{1,4})d)?(?:(\d{1,5})h)?(?:(\d{1,6})m)?(?:(\d{1,7})s)?")

# Nothing we grant should outlive a week; the bound also keeps timedelta arithmetic far from overflow.
MAX_DURATION = timedelta(days=7)


class DurationError(ValueError):
    """The text is not a duration we understand."""


def parse_duration(text: str) -> timedelta:
    """Parse ``1h30m``-style text into a positive timedelta, or raise DurationError."""
    cleaned = text.strip().lower()
    match = _DURATION.fullmatch(cleaned)
    if not cleaned or match is None or not any(match.groups()):
        raise DurationError(f"'{text}' is not a duration like 90s, 15m, 2h or 1h30m")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if value <= timedelta(0):
        raise DurationError("a duration must be longer than zero")
    if value > MAX_DURATION:
        raise DurationError(f"'{text}' is longer than the 7-day limit")
    return value


def format_duration(value: timedelta) -> str:
    """The shortest canonical spelling, so that parse_duration(format_duration(d)) == d."""
    total = int(value.total_seconds())
    if total <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
