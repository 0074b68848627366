"""slack_sdk's WebClient with a total deadline on every call.

The SDK sends its requests with urllib, whose timeout bounds each socket operation: a Slack (or a
proxy in front of it) that answers a byte a second never trips it, and holds the delivery worker,
and with it that channel's messages, for as long as it likes. Here the SDK still builds every
request (headers, token, JSON or form body) and reads every answer; only the wire exchange goes
through ``bot.bounded_http``, where connect, TLS, headers and body share one deadline.

urllib raises ``HTTPError`` for an answer that is not 2xx, and the SDK reads 429s and their
``Retry-After`` from it, so non-2xx answers are raised the same way. Network failures are raised
as ``OSError`` subclasses, which the Slack adapters already treat as transient.
"""

from __future__ import annotations

import http.client
import io
import ssl
import urllib.error
from typing import Any
from urllib.request import Request

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError, SlackRequestError

from bot.bounded_http import CallBudget, budgeted_client
from bot.domain.text import one_line

# Web API answers are small (a posted message comes back, a few KB); this is far above any.
MAX_SLACK_ANSWER_BYTES = 4 << 20


class DeadlineWebClient(WebClient):
    def __init__(self, *args: Any, total_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.total_timeout = total_timeout
        # Built once: loading the CA bundle per call costs milliseconds of CPU.
        self._tls: ssl.SSLContext = self.ssl if isinstance(self.ssl, ssl.SSLContext) else httpx.create_ssl_context()

    def _perform_urllib_http_request_internal(self, url: str, req: Request) -> dict[str, Any]:
        if not url.lower().startswith(("http://", "https://")):
            raise SlackRequestError(f"refusing a Slack API URL that is not http(s): {url.split(':', 1)[0]}")
        budget = CallBudget.starting_now(self.total_timeout, max_bytes=MAX_SLACK_ANSWER_BYTES)
        # httpx computes Content-Length from the body it sends.
        headers = {k: v for k, v in req.header_items() if k.lower() != "content-length"}
        body = req.data if isinstance(req.data, bytes) else None
        try:
            with budgeted_client(budget, ssl_context=self._tls, url=url) as client:
                response = client.request(req.get_method(), url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise TimeoutError(f"Slack did not answer within {self.total_timeout:g} s") from None
        except httpx.HTTPError as exc:
            problem = "answer too large" if budget.too_large else type(exc).__name__
            raise ConnectionError(f"Slack API call failed: {problem}") from None
        message = http.client.HTTPMessage()
        for name, value in response.headers.multi_items():
            message[name] = value
        if not 200 <= response.status_code < 300:
            raise urllib.error.HTTPError(
                url, response.status_code, response.reason_phrase, message, io.BytesIO(response.content)
            )
        charset = response.charset_encoding or "utf-8"
        return {"status": response.status_code, "headers": message, "body": response.content.decode(charset)}


# What a failed call raises: Slack's refusals, network trouble (timeouts are TimeoutError), odd answers.
SLACK_CALL_FAILURES = (SlackClientError, OSError, http.client.HTTPException, ValueError)

# Slack's answers that mean the token itself is wrong (revoked, from another app, mistyped).
TOKEN_REFUSALS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"})


def slack_call_problem(exc: Exception, method: str, where: str, seconds: float, *, limit: str = "") -> str:
    """One sentence for a failed call to Slack at ``where`` (a redacted URL): what went wrong, from
    Slack's answer only (never from what was sent, which holds the token), and what to do.
    ``limit`` names the setting the ``seconds`` come from, if one does."""
    if isinstance(exc, SlackApiError):
        code = one_line(str(exc.response.get("error") or ""), 80)
        status = getattr(exc.response, "status_code", 200)
        if code in TOKEN_REFUSALS:
            return (
                f"Slack refused SLACK_BOT_TOKEN ({code}); copy the Bot User OAuth Token (xoxb-…) "
                "from the app's OAuth & Permissions page again"
            )
        if code == "missing_scope":
            needed = one_line(str(exc.response.get("needed") or "?"), 80)
            return (
                f"{method} needs the scope {needed}, which the app lacks; add it (manifest.yml lists every "
                "scope the bot needs) and reinstall the app"
            )
        if status != 200 or not code:
            return f"Slack at {where} answered {method} with HTTP {status}; check SLACK_API_URL, or try again later"
        return f"Slack answered {method} with {code}"
    fix = "check SLACK_API_URL, the network and any proxy"
    if isinstance(exc, TimeoutError):
        setting = f" ({limit})" if limit else ""
        return f"Slack at {where} did not answer {method} within {seconds:g} s{setting}; {fix}"
    return f"cannot reach Slack at {where} ({one_line(str(exc), 120) or type(exc).__name__}); {fix}"
