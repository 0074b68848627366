"""Running the bot: the listening socket, the database, Slack, the background work and the HTTP server.

``jit-bot serve`` and ``jit-bot demo`` both come through here, so the demo runs the bot exactly as a
deployment does.
"""

from __future__ import annotations

import errno
import gc
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from bot.config import ConfigError, Settings
from bot.domain.policy import Policy
from bot.redact import redact_url

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger("jit-bot")


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, or one line saying why not (the port is taken, most often)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                [f"JIT_HTTP_PORT {port} on {host} is already in use; stop what listens there or set another port"]
            ) from None
        raise ConfigError(
            [f"cannot listen on {host}:{port} ({exc.strerror}); check JIT_HTTP_HOST and JIT_HTTP_PORT"]
        ) from None
    return sock


def serve(
    settings: Settings, policy: Policy, listener: socket.socket, *, ready: Callable[[], None] | None = None
) -> None:
    """Migrate, connect to Slack, start the background work and serve on ``listener`` until stopped.

    ``ready`` is called once everything is up and the socket is accepting (the demo prints its URL then).
    """
    from slack_sdk.errors import SlackApiError

    from bot.idp.keys import load_signing_key
    from bot.runtime import audit_key_for, build_runtime
    from bot.store.audit import bind_audit_key
    from bot.store.db import make_engine, migrate

    if settings.idp_configured and settings.jit_signing_key_file is not None:
        # A key file that cannot be used is said before anything is created or migrated.
        load_signing_key(settings.jit_signing_key_file)
    engine = bind_audit_key(
        make_engine(settings.jit_database_url), audit_key_for(settings.jit_database_url, settings.jit_audit_key)
    )
    migrate(engine)
    _warn_if_unkeyed(engine)
    runtime = build_runtime(settings, policy, engine=engine)
    identity = runtime.connect_slack()
    log.info("connected to Slack as %s in team %s", identity.get("user"), identity.get("team"))
    runtime.connect_idp()
    socket_handler = None
    if settings.slack_app_token is not None:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        socket_handler = SocketModeHandler(runtime.bolt_app, settings.slack_app_token.get_secret_value())
        try:
            socket_handler.connect()  # type: ignore[no-untyped-call]
        except SlackApiError as exc:
            raise ConfigError([f"SLACK_APP_TOKEN was refused by Slack: {exc.response.get('error')}"]) from None
        except OSError as exc:
            where = redact_url(settings.slack_api_url)
            raise ConfigError(
                [f"cannot open Socket Mode at {where} ({type(exc).__name__}); check SLACK_API_URL and the network"]
            ) from None
        if socket_handler.client.is_connected():
            log.info("Socket Mode connected")
        else:
            # slack_sdk keeps retrying in the background; say so instead of claiming success.
            log.warning("Socket Mode is not connected yet; retrying in the background")
    # Everything built so far lives as long as the process: moving it out of the collector's reach
    # keeps full collections (which stop every thread) short, and so keeps acks fast.
    gc.collect()
    gc.freeze()
    runtime.start_background()
    host, port = listener.getsockname()[:2]
    log.info("serving on http://%s:%s", host, port)
    try:
        # Access logs would record URLs, and later pickup URLs are secrets. No log_config: uvicorn's
        # own lines go through the handler configure_logging set up, in the chosen format (text or
        # JSON), instead of handlers of uvicorn's own.
        # No proxy_headers: uvicorn would believe X-Forwarded-For from any loopback peer; whose header
        # is believed is JIT_TRUSTED_PROXIES's to say (bot/web/client_address.py).
        config = uvicorn.Config(
            runtime.web_app, access_log=False, log_level="info", log_config=None, proxy_headers=False
        )
        _Server(config, ready=ready).run(sockets=[listener])
    finally:
        if socket_handler is not None:
            socket_handler.close()  # type: ignore[no-untyped-call]
        runtime.close()


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``ready`` once it accepts connections and handles SIGTERM itself:
    called any earlier, a stop in between would interrupt its event loop before it ran."""

    def __init__(self, config: uvicorn.Config, *, ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self._ready is not None and self.started:
            self._ready()


def _warn_if_unkeyed(engine: Engine) -> None:
    from bot.store.audit import audit_key_of, first_event_is_unkeyed
    from bot.store.db import read_scope

    with read_scope(engine) as session:
        unkeyed = first_event_is_unkeyed(session=session, key=audit_key_of(session.connection()))
    if unkeyed:
        log.warning(
            "the audit trail starts with events not linked with JIT_AUDIT_KEY (written before the key existed); "
            "`jit-bot audit verify` reports them until an operator runs `jit-bot audit rekey`"
        )
