"""The pickup page: shows the token once, as HTML or JSON, and never lets it be cached or leaked."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from bot.domain.networks import IPNetwork
from bot.services.pickup import GoneReason, PickedToken, PickupOutcome, PickupService
from bot.web.client_address import client_address

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}

# Said to whoever holds the link, which is a secret only its requester was sent.
_GONE = {
    GoneReason.USED: "This link was already used: a link shows its token once. Ask for access again if you need it.",
    GoneReason.LINK_EXPIRED: "This link has expired: links work for 10 minutes after approval. Ask for access again.",
    GoneReason.GRANT_ENDED: (
        "This access has ended (it expired or was revoked), so its link no longer works. Ask for access again."
    ),
}
_UNKNOWN = "No such pickup link. Check that the whole link was copied."
# Nothing about the grant: whoever sees this may not be the person the link was sent to.
_ELSEWHERE = (
    "This link cannot be opened from this network. Open it from one your organisation allows for this "
    "access (your VPN, say); it still works there."
)


def pickup_router(service: PickupService, *, trusted_proxies: Sequence[IPNetwork] = ()) -> APIRouter:
    router = APIRouter()

    # HEAD is routed here too (FastAPI would answer it with a bare 405 of its own, without the headers).
    @router.api_route("/pickup/{pickup_id}", methods=["GET", "HEAD"])
    async def pickup(pickup_id: str, request: Request) -> Response:
        if request.method != "GET":
            # A link checker's HEAD must not use up the link.
            return Response(status_code=405, headers={**SECURITY_HEADERS, "Allow": "GET"})
        peer = request.client.host if request.client is not None else None
        client = client_address(peer, request.headers.getlist("x-forwarded-for"), trusted_proxies)
        result = await run_in_threadpool(lambda: service.claim(pickup_id, client=client))
        wants_json = "application/json" in request.headers.get("accept", "")
        if result.outcome is PickupOutcome.OK and result.token is not None:
            return _token_response(result.token, wants_json)
        if result.outcome is PickupOutcome.GONE:
            status, message = 410, _GONE[result.gone or GoneReason.USED]
        elif result.outcome is PickupOutcome.ELSEWHERE:
            status, message = 403, _ELSEWHERE
        else:
            status, message = 404, _UNKNOWN
        if wants_json:
            return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)
        return HTMLResponse(_page("Link not available", f"<p>{html.escape(message)}</p>"), status, SECURITY_HEADERS)

    return router


def _token_response(token: PickedToken, wants_json: bool) -> Response:
    expires = token.expires_at.astimezone(UTC)
    if wants_json:
        body: dict[str, Any] = {
            "access_token": token.access_token,
            "token_type": token.token_type,
            "expires_at": int(expires.timestamp()),
            "scope": token.scope,
            "audience": token.audience,
        }
        return JSONResponse(body, headers=SECURITY_HEADERS)
    escaped = html.escape(token.access_token)
    curl = html.escape(f'curl -H "Authorization: {token.token_type} $JIT_TOKEN" {token.audience}')
    content = f"""
<p>This token is shown <strong>once</strong>. Copy it now; reloading this page will not show it again.</p>
<pre id="token">{escaped}</pre>
<table>
<tr><th>Audience</th><td>{html.escape(token.audience)}</td></tr>
<tr><th>Scopes</th><td>{html.escape(token.scope)}</td></tr>
<tr><th>Expires</th><td>{expires.strftime("%Y-%m-%d %H:%M:%S UTC")}</td></tr>
</table>
<p>Use it like this (keep it in a variable, not in your shell history):</p>
<pre>read -rs JIT_TOKEN   # paste, then Enter
{curl}</pre>"""
    return HTMLResponse(_page("Your access token", content), 200, SECURITY_HEADERS)


def _page(title: str, content: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>jit-bot: {html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}}
pre{{white-space:pre-wrap;word-break:break-all;background:#f4f4f4;padding:1rem}}th{{text-align:left;padding-right:1rem}}</style>
</head><body><h1>{html.escape(title)}</h1>{content}</body></html>"""
