"""Text from people and from other systems, made safe to put on one line of a log, card or DM.

A newline in a reason or an IdP's error description would let it forge a second log line or a
fake line on an approval card; bidi controls (U+202E …) and zero-width characters make text read
differently from what it is. Both are removed here, once, where outside text comes in.
"""

from __future__ import annotations

import unicodedata

# Categories removed: Cc (controls: \n, \r, \t, ESC…), Cf (format: bidi overrides and isolates,
# zero-width joiners and spaces, BOM), Cs (lone surrogates), Co/Cn (private use, unassigned), and the
# line and paragraph separators (Zl, Zp), which some renderers treat as newlines.
_DROPPED = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` with controls and invisible characters turned into spaces, runs of whitespace
    collapsed, trimmed, and clipped to ``limit`` characters (with an ellipsis) when given."""
    cleaned = "".join(" " if unicodedata.category(ch) in _DROPPED else ch for ch in text)
    flat = " ".join(cleaned.split())
    if limit is not None and len(flat) > limit:
        return flat[: max(limit - 1, 0)] + "…"
    return flat


def mrkdwn_escape(text: str) -> str:
    """Slack's required escaping, so text can never become a mention, a link or ``<!channel>``: the
    one definition, which ``bot.slack.text.escape`` and the digest's Slack text both use."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
