"""``POST /slack/events``: what reaches Bolt has been sized, signed, and seen only once.

Cheap refusals first, because anyone can POST here: a body larger than Slack ever sends is refused
from its Content-Length before a byte is read (and a chunked one is cut off at the cap); the
signature is checked on the raw bytes before anything is parsed; a replayed request (the same
signature again within Slack's five-minute window) and Slack's own retries are acknowledged without
being handled twice. Each refusal is one short log line, never a traceback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from slack_bolt import App
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from slack_sdk.signature import SignatureVerifier
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

# Slack's own payloads are a few KB; anything this large is not Slack.
MAX_SLACK_BODY = 1024 * 1024
# Slack refuses to deliver requests older than this, and so do we (the signature covers the timestamp).
REPLAY_WINDOW_SECONDS = 300


_REFUSALS = {401: "invalid request", 413: "request too large"}


class ReplayCache:
    """Signatures seen within the window. Bounded: past ``capacity`` the oldest are forgotten early
    (a replay that old still cannot create a second request: requests are unique per origin)."""

    def __init__(self, *, window: float = REPLAY_WINDOW_SECONDS, capacity: int = 200_000) -> None:
        self._window = window
        self._capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, signature: str) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._seen and (
                next(iter(self._seen.values())) < now - self._window or len(self._seen) >= self._capacity
            ):
                self._seen.popitem(last=False)
            if signature in self._seen:
                return False
            self._seen[signature] = now
            return True


def _ascii_digits(value: str, max_length: int) -> bool:
    """Plain 0-9 digits, not too many: str.isdigit() also accepts other scripts' digits and
    superscripts, and int() of thousands of digits raises."""
    return 0 < len(value) <= max_length and value.isascii() and value.isdigit()


class _TooLarge(Exception):
    pass


async def _read_capped(request: Request, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class SlackEdge:
    def __init__(self, *, bolt_app: App, signing_secret: str, max_body: int = MAX_SLACK_BODY) -> None:
        self._app = bolt_app
        self._verifier = SignatureVerifier(signing_secret)
        self._max_body = max_body
        self._replays = ReplayCache()

    async def handle(self, request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not _ascii_digits(declared, 20):
                return self._refuse(400, "a request with a malformed Content-Length")
            if int(declared) > self._max_body:
                return self._refuse(413, f"a {declared}-byte request (the limit is {self._max_body})")
        try:
            body = await _read_capped(request, self._max_body)
        except _TooLarge:
            return self._refuse(413, f"a request larger than {self._max_body} bytes")
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        signature = request.headers.get("x-slack-signature", "")
        if not _ascii_digits(timestamp, 12) or not signature.startswith("v0=") or not signature.isascii():
            return self._refuse(401, "a request without a valid Slack signature header")
        try:
            valid = self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
        except Exception as exc:  # whatever the headers hold, an unverifiable request is refused, not a 500
            return self._refuse(401, f"a request whose signature could not be checked ({type(exc).__name__})")
        if not valid:
            return self._refuse(401, "a request whose signature does not verify (or is too old)")
        if request.headers.get("x-slack-retry-num") is not None:
            # Slack retries when our first answer was slow; that first delivery is being handled.
            log.info("acknowledged Slack retry %s without handling it again", request.headers["x-slack-retry-num"][:8])
            return Response(status_code=200, headers={"X-Slack-No-Retry": "1"})
        if not self._replays.first_time(signature):
            return self._refuse(200, "a replayed request (its signature was already used)", level=logging.WARNING)
        try:
            bolt_request = to_bolt_request(request, body)
        except Exception as exc:  # signed, yet not something Slack sends
            return self._refuse(400, f"a signed request that could not be read ({type(exc).__name__})")
        # Bolt's dispatch is synchronous (the ack function runs in it); running it on a worker thread
        # keeps the event loop free for the next request and for the JWKS the IdP fetches.
        try:
            bolt_response = await run_in_threadpool(self._app.dispatch, bolt_request)
        except Exception as exc:
            return self._refuse(400, f"a signed request Bolt could not handle ({type(exc).__name__})")
        return to_starlette_response(bolt_response)

    def _refuse(self, status: int, what: str, *, level: int = logging.INFO) -> Response:
        log.log(level, "refused %s: HTTP %d", what, status)
        if status == 200:
            return Response(status_code=200)
        return JSONResponse({"error": _REFUSALS.get(status, "bad request")}, status_code=status)
