"""The FastAPI app served by uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from slack_bolt import App
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from starlette.concurrency import run_in_threadpool

from bot.services.pickup import PickupService
from bot.web.pickup import pickup_router

# Slack's own payloads are a few KB; anything this large is not Slack.
MAX_SLACK_BODY = 1024 * 1024


def create_web_app(
    *,
    bolt_app: App | None,
    health: Callable[[], dict[str, str]],
    jwks: dict[str, Any] | None = None,
    pickup: PickupService | None = None,
) -> FastAPI:
    """``bolt_app`` is None in Socket Mode, where Slack talks to us over a websocket instead.

    ``jwks`` and ``pickup`` exist once an IdP is configured.
    """
    web = FastAPI(title="jit-bot", docs_url=None, redoc_url=None, openapi_url=None)

    if jwks is not None:
        document = jwks

        @web.get("/.well-known/jwks.json")
        async def jwks_json() -> JSONResponse:
            # Served from memory on the event loop: the IdP fetches this while a mint is in flight,
            # so it must never wait on the worker threads that run the mint.
            return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

    if pickup is not None:
        web.include_router(pickup_router(pickup))

    @web.get("/healthz")
    async def healthz() -> JSONResponse:
        report = await run_in_threadpool(health)
        ok = all(value == "ok" for value in report.values())
        return JSONResponse({"status": "ok" if ok else "degraded", **report}, status_code=200 if ok else 503)

    if bolt_app is not None:
        app = bolt_app

        @web.post("/slack/events")
        async def slack_events(request: Request) -> Response:
            body = await request.body()
            if len(body) > MAX_SLACK_BODY:
                return Response(status_code=413)
            # Bolt's dispatch is synchronous (signature check, ack function); running it on a worker
            # thread keeps the event loop free for the next request and for the JWKS the IdP fetches.
            bolt_response = await run_in_threadpool(app.dispatch, to_bolt_request(request, body))
            return to_starlette_response(bolt_response)

    return web
