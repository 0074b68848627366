"""Slack's side of Socket Mode, for tests: a websocket server on 127.0.0.1.

The bot reaches it the way it reaches Slack: ``apps.connections.open`` on the Web API stand-in
(``bot/demo/slack_api.py``) hands out :attr:`SocketModeServer.url`, and slack_sdk's Socket Mode
client opens a websocket to it (plain ``ws://``: slack_sdk uses TLS only on port 443).

What it does, as Slack does:

- On connect it sends ``{"type": "hello", "num_connections": n, "debug_info": {...},
  "connection_info": {"app_id": ...}}``.
- :meth:`push` sends an envelope ``{"envelope_id", "type", "payload", "accepts_response_payload"}``
  (``type`` is ``slash_commands``, ``interactive`` or ``events_api``) to the newest connection.
- The app answers each envelope with ``{"envelope_id": ..., "payload": {...}}`` (payload optional);
  those acks are recorded, and :meth:`wait_for_ack` waits for one.
- :meth:`refresh` sends ``{"type": "disconnect", "reason": "refresh_requested"}``, as Slack does
  before it retires a connection; the app is expected to open a new one.

The websocket protocol itself is the ``websockets`` package's, so that framing, masking and the
handshake are checked by an implementation independent of the client under test.
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from bot.demo.slack_api import APP_ID, slash_command_fields  # the same workspace the Web API stand-in plays

PATH = "/link/"


@dataclass(frozen=True)
class Ack:
    """One acknowledgement the app sent back for an envelope."""

    envelope_id: str
    payload: dict[str, Any] | None  # None when the app acked without a payload
    message: dict[str, Any]  # the whole message as sent


class SocketModeServer:
    """Serves Socket Mode on 127.0.0.1; use it as a context manager or call start()/stop()."""

    def __init__(self, *, app_id: str = APP_ID) -> None:
        self.app_id = app_id
        self._ticket = secrets.token_urlsafe(16)
        self._cond = threading.Condition()
        self._connections: list[ServerConnection] = []  # open ones, oldest first
        self._connects = 0
        self._refused: list[str] = []  # request paths refused at the handshake
        self._acks: dict[str, Ack] = {}
        self._unexpected: list[str] = []  # messages that were not acks
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> SocketModeServer:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._check_request,
            compression=None,  # Slack's endpoint does not negotiate permessage-deflate with slack_sdk
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="socket-mode-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server, self._thread = None, None

    def __enter__(self) -> SocketModeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ticket(self) -> str:
        """The secret part of :attr:`url`; anyone holding the URL receives the app's payloads."""
        return self._ticket

    @property
    def url(self) -> str:
        """The URL apps.connections.open returns, shaped like Slack's ``wss://…/link/?ticket=…&app_id=…``."""
        if self._server is None:
            raise RuntimeError("server not started")
        port = self._server.socket.getsockname()[1]
        return f"ws://127.0.0.1:{port}{PATH}?ticket={self._ticket}&app_id={self.app_id}"

    # -- what the app did -------------------------------------------------------------------

    @property
    def connects(self) -> int:
        """Websocket connections accepted so far (each one was sent a hello)."""
        with self._cond:
            return self._connects

    @property
    def open_connections(self) -> int:
        with self._cond:
            return len(self._connections)

    @property
    def refused(self) -> list[str]:
        """Handshakes refused because they did not use :attr:`url` (wrong path or ticket)."""
        with self._cond:
            return list(self._refused)

    @property
    def unexpected(self) -> list[str]:
        """Messages from the app that were not acknowledgements of an envelope."""
        with self._cond:
            return list(self._unexpected)

    def acks(self) -> dict[str, Ack]:
        with self._cond:
            return dict(self._acks)

    def wait_connected(self, count: int = 1, timeout: float = 30) -> None:
        """Wait until ``count`` connections have been accepted in all and one is open."""
        with self._cond:
            done = self._cond.wait_for(lambda: self._connects >= count and self._connections, timeout)
        if not done:
            raise AssertionError(
                f"no Socket Mode connection #{count} within {timeout}s "
                f"(accepted {self.connects}, open {self.open_connections}, refused {self.refused})"
            )

    def wait_for_ack(self, envelope_id: str, timeout: float = 10) -> Ack:
        with self._cond:
            done = self._cond.wait_for(lambda: envelope_id in self._acks, timeout)
            if not done:
                raise AssertionError(
                    f"envelope {envelope_id} was not acknowledged within {timeout}s; "
                    f"acked: {sorted(self._acks)}, other messages: {self._unexpected}"
                )
            return self._acks[envelope_id]

    # -- what Slack sends -------------------------------------------------------------------

    def push(self, kind: str, payload: dict[str, Any], *, accepts_response_payload: bool = True) -> str:
        """Send one envelope to the newest open connection; returns its envelope_id."""
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        self._newest().send(json.dumps(envelope))
        return envelope_id

    def slash_command(
        self,
        user: str,
        text: str,
        *,
        response_url: str,
        trigger_id: str,
        command: str = "/jit",
        channel: str = "C0GENERAL01",
    ) -> str:
        """A slash command as Slack delivers it in Socket Mode: the HTTP form fields, as a JSON object."""
        payload = slash_command_fields(
            user,
            text,
            response_url=response_url,
            trigger_id=trigger_id,
            command=command,
            channel=channel,
            app_id=self.app_id,
        )
        return self.push("slash_commands", payload)

    def interactive(self, payload: dict[str, Any]) -> str:
        """An interaction (block_actions, view_submission, ...): the HTTP ``payload=`` JSON, as an object."""
        return self.push("interactive", payload)

    def refresh(self) -> None:
        """Tell the app this connection is about to go, as Slack does every few hours."""
        self._newest().send(
            json.dumps(
                {
                    "type": "disconnect",
                    "reason": "refresh_requested",
                    "debug_info": {"host": "standin-applink"},
                }
            )
        )

    # -- server side ------------------------------------------------------------------------

    def _newest(self) -> ServerConnection:
        with self._cond:
            if not self._connections:
                raise AssertionError("the app has no open Socket Mode connection")
            return self._connections[-1]

    def _check_request(self, _connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        ticket = parse_qs(url.query).get("ticket", [""])[0]
        if url.path == PATH and secrets.compare_digest(ticket, self._ticket):
            return None
        with self._cond:
            self._refused.append(url.path)
        headers = Headers([("Content-Type", "text/plain"), ("Connection", "close")])
        return Response(HTTPStatus.UNAUTHORIZED, "Unauthorized", headers, b"invalid ticket\n")

    def _handle(self, connection: ServerConnection) -> None:
        with self._cond:
            self._connects += 1
            self._connections.append(connection)
            number = self._connects
            self._cond.notify_all()
        try:
            connection.send(
                json.dumps(
                    {
                        "type": "hello",
                        "num_connections": number,
                        "debug_info": {
                            "host": "standin-applink",
                            "build_number": 1,
                            "approximate_connection_time": 18060,
                        },
                        "connection_info": {"app_id": self.app_id},
                    }
                )
            )
            for raw in connection:
                self._received(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))
        except ConnectionClosed:
            pass  # the app went away (stop, crash or refresh): nothing to answer
        finally:
            with self._cond:
                self._connections.remove(connection)
                self._cond.notify_all()

    def _received(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        with self._cond:
            if isinstance(message, dict) and isinstance(message.get("envelope_id"), str):
                payload = message.get("payload")
                self._acks[message["envelope_id"]] = Ack(
                    envelope_id=message["envelope_id"],
                    payload=payload if isinstance(payload, dict) else None,
                    message=message,
                )
            else:
                self._unexpected.append(raw)
            self._cond.notify_all()
