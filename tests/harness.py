"""Serving the real app on loopback and talking to it the way Slack does."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn

from bot.demo import interactions
from bot.demo.slack_api import APP_ID, TEAM_ID, SlackStandIn  # the workspace it plays
from bot.runtime import Runtime
from tests.world import SIGNING_SECRET

__all__ = ["APP_ID", "TEAM_ID", "ServedApp", "SlackRequests", "free_socket"]


def free_socket() -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP, and
    # without it Nagle's algorithm adds ~40 ms to each request on a kept-alive connection.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class ServedApp:
    """uvicorn on a pre-bound loopback socket, in a thread, as `jit-bot serve` would run it."""

    def __init__(self, runtime: Runtime, sock: socket.socket) -> None:
        self.runtime = runtime
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        # As bot/serving.py: no proxy_headers, so only JIT_TRUSTED_PROXIES decides whose X-Forwarded-For counts.
        config = uvicorn.Config(
            runtime.web_app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)

    def start(self) -> ServedApp:
        self.runtime.connect_slack()
        self.runtime.start_background()
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the app did not start serving")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.runtime.close()


class SlackRequests(interactions.SlackRequests):
    """The demo's Slack client, signing with the tests' secret by default."""

    @classmethod
    def for_standin(  # type: ignore[override]
        cls, base_url: str, slack: SlackStandIn, *, http: httpx.Client | None = None
    ) -> SlackRequests:
        return super().for_standin(base_url, slack, signing_secret=SIGNING_SECRET, http=http)  # type: ignore[return-value]
