"""The FastAPI app served by uvicorn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from bot.domain.networks import IPNetwork
from bot.services.pickup import PickupService
from bot.web.pickup import pickup_router
from bot.web.slack_edge import SlackEdge


def create_web_app(
    *,
    slack: SlackEdge | None,
    health: Callable[[], dict[str, str]],
    jwks: dict[str, Any] | None = None,
    pickup: PickupService | None = None,
    trusted_proxies: Sequence[IPNetwork] = (),
) -> FastAPI:
    """``slack`` is None in Socket Mode, where Slack talks to us over a websocket instead.

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
        web.include_router(pickup_router(pickup, trusted_proxies=trusted_proxies))

    @web.get("/healthz")
    async def healthz() -> JSONResponse:
        report = await run_in_threadpool(health)
        ok = all(value == "ok" for value in report.values())
        return JSONResponse({"status": "ok" if ok else "degraded", **report}, status_code=200 if ok else 503)

    if slack is not None:
        edge = slack

        @web.post("/slack/events")
        async def slack_events(request: Request) -> Response:
            return await edge.handle(request)

    return web
