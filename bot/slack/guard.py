"""Refusing what is not for us before any listener sees it.

Signed requests can still be wrong for us: a payload from another workspace (a shared signing
secret, an app installed twice), or one whose ``response_url`` points somewhere other than Slack's
hooks host, which would make the bot POST replies (request ids, names) to a stranger. Both are
refused here, for HTTP and Socket Mode alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from slack_bolt.response import BoltResponse

from bot.domain.text import one_line

log = logging.getLogger(__name__)


class Workspace:
    """The workspace the bot belongs to, learned from ``auth.test`` at start."""

    def __init__(self) -> None:
        self.team_id: str | None = None

    def learn(self, team_id: str) -> None:
        self.team_id = team_id


def team_of(body: dict[str, Any]) -> str | None:
    for candidate in (
        body.get("team_id"),
        (body.get("team") or {}).get("id") if isinstance(body.get("team"), dict) else None,
        (body.get("user") or {}).get("team_id") if isinstance(body.get("user"), dict) else None,
    ):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


def response_urls(body: dict[str, Any]) -> list[object]:
    """Every response_url a payload carries, including the one a modal keeps in private_metadata."""
    urls: list[object] = [body.get("response_url")]
    listed = body.get("response_urls")
    if isinstance(listed, list):
        urls += [u.get("response_url") for u in listed if isinstance(u, dict)]
    view = body.get("view")
    if isinstance(view, dict) and isinstance(view.get("private_metadata"), str):
        try:
            metadata = json.loads(view["private_metadata"] or "{}")
        except ValueError:
            metadata = None
        if isinstance(metadata, dict):
            urls.append(metadata.get("response_url") or None)
    return [u for u in urls if u is not None]


def allowed_response_url(url: object, hooks_url: str) -> bool:
    return isinstance(url, str) and url.startswith(hooks_url)


def guard_middleware(*, workspace: Workspace, hooks_url: str) -> Callable[..., BoltResponse]:
    def guard(body: dict[str, Any], next: Callable[[], BoltResponse]) -> BoltResponse:
        expected = workspace.team_id
        team = team_of(body)
        if expected is None or team != expected:
            log.warning("refused a request for team %s (this bot serves %s)", one_line(str(team), 40), expected)
            return BoltResponse(status=401, body="")
        if not all(allowed_response_url(url, hooks_url) for url in response_urls(body)):
            log.warning("refused a request whose response_url is not on %s", hooks_url)
            return BoltResponse(status=400, body="")
        return next()

    return guard
