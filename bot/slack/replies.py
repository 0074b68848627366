"""Where a listener's answer goes, and the one place errors become user text."""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from typing import Any

from slack_sdk.webhook import WebhookClient

from bot.services.errors import UserFacingError
from bot.slack.messages import unexpected_error_text, user_error_text

log = logging.getLogger(__name__)

Reply = Callable[[str], None]


def ephemeral(respond: Any) -> Reply:
    """Answer through the interaction's response_url, visible only to the person who acted."""

    def send(text: str) -> None:
        respond(text=text, response_type="ephemeral", replace_original=False)

    return send


def via_response_url(url: str | None, *, client: Any, user_id: str, hooks_url: str) -> Reply:
    """Modal submissions carry no response_url, so we keep the originating one in private_metadata.

    Without one (or with one that is not on Slack's hooks host, which is never POSTed to) we fall
    back to a DM, so the person always hears how it went.
    """

    def send(text: str) -> None:
        if url and not url.startswith(hooks_url):
            log.warning("not replying to a response_url outside %s; sending a DM instead", hooks_url)
        elif url:
            response = WebhookClient(url).send(text=text, response_type="ephemeral", replace_original=False)
            if response.status_code == 200:
                return
            log.warning("response_url answered %s; falling back to a DM", response.status_code)
        client.chat_postMessage(channel=user_id, text=text)

    return send


def user_errors(reply_from: Callable[..., Reply]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Wrap a lazy listener: refusals become their words, anything else a reference id.

    ``reply_from`` receives the listener's keyword arguments (and, as ``listener_self``, the object
    whose method it is) and returns where to answer.
    """

    def decorate(listener: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(listener)
        def run(*args: Any, **kwargs: Any) -> None:
            where = {**kwargs, "listener_self": args[0] if args else None}
            try:
                listener(*args, **kwargs)
            except UserFacingError as exc:
                _safe_reply(lambda: reply_from(**where), user_error_text(exc))
            except Exception:
                ref = secrets.token_hex(4)
                log.exception("unexpected error in %s (ref %s)", listener.__name__, ref)
                _safe_reply(lambda: reply_from(**where), unexpected_error_text(ref))

        return run

    return decorate


def _safe_reply(reply: Callable[[], Reply], text: str) -> None:
    try:
        reply()(text)
    except Exception:
        log.exception("could not deliver an error reply to the user")
