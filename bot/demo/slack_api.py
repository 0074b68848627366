"""A wire-level stand-in for the Slack Web API, for tests and the local demo (see "Tests" in
docs/architecture.md). The demo's workspace page (``bot/demo/workspace.py``) is served by this same
server, so what a test proves against it is what the demo shows.

Slack cannot be reached from the test machines, so the real ``slack_sdk.WebClient`` is pointed at
this server instead (``WebClient(token=..., base_url=standin.api_url)``). It speaks HTTP on
127.0.0.1 and answers the way Slack does: HTTP 200 with ``{"ok": false, "error": ...}`` for
refusals, HTTP 429 with ``Retry-After`` for rate limits. It refuses what Slack refuses (bad token,
unknown method, malformed channel ids, Block Kit limits) so a test that passes here does not
depend on Slack being lenient, and it records every call so tests can assert on what was sent.

Refusals are sorted into kinds, because tests care about them differently:

- ``rejected``: the request was malformed -- Slack would refuse it whatever the workspace holds
  (validation, auth, unknown method, reused trigger, updating a message that does not exist).
  These are bugs in the code under test; tests assert ``standin.rejected() == []``.
- ``not_found``: a well-formed call the workspace refuses: a lookup of something it does not hold
  (unknown user or usergroup), or a post to a channel the bot is not in (``not_in_channel``) or
  that is archived (``is_archived``). Code is expected to handle these, so they are not counted
  as rejections.
- ``injected``: failures a test asked for with ``fail_next``.
- ``ratelimited``: calls a ``rate_limit`` bucket refused (HTTP 429). Not counted as rejections
  either; ``ratelimited_calls()`` lists them.

Faults, for tests of how the bot copes with Slack under load and during outages (``reset()``
switches them all off, but does not end an outage):

- ``fail_next(method, error, times, status=...)``: the next calls fail with ``error``. Without
  ``status``: HTTP 200 ``ok: false``, or 429 + ``Retry-After`` for ``ratelimited``. With
  ``status`` (500, 502, 503, ...): that HTTP status, body ``{"ok": false, "error": error}``.
- ``rate_limit(method, burst=, per_second=)``: a token bucket per (method, channel), like Slack's
  per-method tiers and chat.postMessage's "about one message per second per channel". A call over
  the limit is answered 429 + ``Retry-After`` and has no effect. While a bucket's Retry-After
  runs, every call to it is answered 429 as well and listed by ``retry_after_violations()``:
  the client did not wait as told.
- ``go_away()`` / ``come_back()`` / ``with outage():``: connections are refused (the listening
  socket is closed) and open ones are cut, with no answer; calls made meanwhile are not recorded.
  It comes back on the same port with everything recorded so far.
- ``set_delay`` (answer after a pause), ``trickle`` (the whole response, status line and headers
  included, at a few bytes per second) and ``stall`` (the call is recorded and takes effect, but
  no answer comes until ``release``; ``reset()`` and ``stop()`` close it unanswered).
- channel membership (``channels_without_bot``, ``remove_bot_from``, ``archive``): chat.* posts
  to such channels get ``not_in_channel`` / ``is_archived``. DMs are unaffected.
- which channels exist: every well-formed C.../G... id, unless the constructor's ``channels``
  names them all; ``create_channel`` (public or private, with or without the bot) and
  ``delete_channel`` change that. Posts to and ``conversations.info`` of a channel that does not
  exist, or of a private one the bot is not in, get ``channel_not_found``, as on Slack.

Wire facts this relies on (slack_sdk 3.x, sync ``WebClient``): every request is a POST, even for
methods slack_sdk declares as GET; "json" methods (chat.*, views.*) send a JSON body, "params"
methods (auth.test, users.info, usergroups.list, usergroups.users.list, conversations.open,
conversations.info) send a form body; the
token always travels in ``Authorization: Bearer``. Query strings are accepted too, as Slack does.

Socket Mode: ``apps.connections.open`` takes the app-level token (``xapp-``, the ``app_token``
constructor argument) and every other method the bot token, as on Slack, where each token type is
refused by the other's methods with ``not_allowed_token_type``. It answers with ``socket_url``,
which a test points at its own websocket server (``tests/socket_mode_server.py``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import io
import itertools
import json
import math
import re
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

T = TypeVar("T")

# Channel ids as Slack issues them (C public, G private/mpim, D direct message, U user => DM).
# Slack also accepts channel *names* in chat.postMessage; the bot must not rely on that.
CHANNEL_ID = re.compile(r"^[CGDU][A-Z0-9]{2,}$")
USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")

BOT_USER_ID = "U0JITBOT01"
BOT_ID = "B0JITBOT01"
TEAM_ID = "T0STANDIN1"
APP_ID = "A0JITBOT01"


def slash_command_fields(
    user: str,
    text: str,
    *,
    response_url: str,
    trigger_id: str,
    command: str = "/jit",
    channel: str = "C0GENERAL01",
    app_id: str = APP_ID,
) -> dict[str, str]:
    """The fields Slack sends with a slash command typed in this workspace: the HTTP form over the
    Events API, the same fields as a JSON object in a Socket Mode envelope."""
    return {
        "token": "deprecated-verification-token",
        "team_id": TEAM_ID,
        "team_domain": "example",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": user.lower(),
        "command": command,
        "text": text,
        "api_app_id": app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id,
    }


MAX_MESSAGE_TEXT = 40_000
# What the POST of a file's bytes to its upload URL is recorded as (in calls, and for fail_next).
UPLOAD = "upload"
# files.getUploadURLExternal: what the stand-in accepts (Slack's own limit is 1 GB).
MAX_UPLOAD_BYTES = 50_000_000
MAX_MARKDOWN_TEXT = 12_000
MAX_MESSAGE_BLOCKS = 50
MAX_MODAL_BLOCKS = 100
RESPONSE_URL_USES = 5  # Slack allows a response_url to be used five times (within 30 minutes)
_APP_TOKEN_METHOD = "apps.connections.open"  # the one method here that takes the app-level token

# Element types by where Slack lets them appear.
_SELECTS = {
    "static_select",
    "external_select",
    "users_select",
    "conversations_select",
    "channels_select",
    "multi_static_select",
    "multi_external_select",
    "multi_users_select",
    "multi_conversations_select",
    "multi_channels_select",
}
_INTERACTIVE = _SELECTS | {
    "button",
    "checkboxes",
    "datepicker",
    "datetimepicker",
    "overflow",
    "radio_buttons",
    "timepicker",
    "workflow_button",
}
_INPUT_ELEMENTS = _SELECTS | {
    "plain_text_input",
    "checkboxes",
    "radio_buttons",
    "datepicker",
    "datetimepicker",
    "timepicker",
    "email_text_input",
    "url_text_input",
    "number_input",
    "rich_text_input",
    "file_input",
}
_SECTION_ACCESSORIES = _INTERACTIVE | {"image"}
_KNOWN_BLOCKS = {
    "section",
    "divider",
    "header",
    "context",
    "actions",
    "input",
    "image",
    "rich_text",
    "file",
    "video",
    "markdown",
}
_TEXT_TYPES = ("plain_text", "mrkdwn")


@dataclass(frozen=True)
class Call:
    """One request the stand-in received (Web API method, or ``"response_url"``). Stalled calls
    are recorded before they are answered; calls made during an outage are not recorded."""

    method: str
    args: dict[str, Any]
    ok: bool
    error: str | None
    response: dict[str, Any]
    kind: str = "ok"  # "ok" | "odd" | "rejected" | "not_found" | "injected" | "ratelimited"
    key: str | None = None  # the response_url key, for response_url posts


@dataclass(frozen=True)
class ResponseUrlPost:
    """One POST to a response_url, accepted or not."""

    key: str
    payload: dict[str, Any]
    ok: bool
    error: str | None
    ts: str = ""  # when it arrived, on the same clock as message ts values (for ordering)


class _Refusal(Exception):
    """Raised inside a method handler to answer ``ok: false`` the way Slack would."""

    def __init__(self, error: str, *, kind: str = "rejected", problems: list[str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.kind = kind
        self.problems = problems or []

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error": self.error}
        if self.problems:
            # Slack lists block problems in both places; slack_sdk surfaces response_metadata.
            body["errors"] = list(self.problems)
            body["response_metadata"] = {"messages": [f"[ERROR] {p}" for p in self.problems]}
        return body


@dataclass
class _Bucket:
    """One token bucket of a rate limit: a (method, channel) pair, or the method as a whole."""

    tokens: float
    stamp: float  # time.monotonic() of the last refill
    blocked_until: float = 0.0  # monotonic time the Retry-After of its last 429 runs out


@dataclass
class _RateLimit:
    burst: int
    per_second: float
    retry_after: int
    per_channel: bool
    buckets: dict[str | None, _Bucket] = field(default_factory=dict)


class _Conn:
    """A client connection being served. The stand-in cuts it off from other threads (outage,
    reset, stop); shutting the socket down wakes a handler blocked reading or writing it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.aborted = threading.Event()
        self.stalled_on: str | None = None  # the method whose answer is held back by stall()
        self.released = False
        self.trickling = False

    def abort(self) -> None:
        self.aborted.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


@dataclass
class _Reply:
    """What a handler writes back, and how."""

    status: int
    body: bytes
    ctype: str
    headers: dict[str, str] = field(default_factory=dict)
    trickle: int = 0  # bytes per second for the whole response; 0 writes it at once
    stalled: bool = False  # hold the answer until release() (or cut it off)


@dataclass(frozen=True)
class Page:
    """A request for a path that is not the Web API's, handed to ``SlackStandIn.pages``."""

    method: str
    path: str
    query: str
    body: bytes


@dataclass(frozen=True)
class Answer:
    """What ``SlackStandIn.pages`` answers with."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"


@dataclass
class _Upload:
    """A file announced by files.getUploadURLExternal: its bytes arrive at its upload URL, and
    files.completeUploadExternal shares it (once)."""

    file_id: str
    filename: str
    length: int
    data: bytes | None = None
    completed: bool = False


@dataclass
class _Message:
    channel: str
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False

    def replace(self, text: str | None, blocks: list[dict[str, Any]] | None) -> None:
        self.history.append({"text": self.text, "blocks": copy.deepcopy(self.blocks)})
        self.text, self.blocks = text, blocks

    def wire(self) -> dict[str, Any]:
        """The message as Slack returns it in API responses."""
        out: dict[str, Any] = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": self.ts}
        out["text"] = self.text or ""
        if self.blocks is not None:
            out["blocks"] = copy.deepcopy(self.blocks)
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        return out

    def snapshot(self) -> dict[str, Any]:
        """The message as tests see it: current state plus earlier versions, oldest first."""
        return {
            "channel": self.channel,
            "ts": self.ts,
            "text": self.text,
            "blocks": copy.deepcopy(self.blocks),
            "thread_ts": self.thread_ts,
            "history": copy.deepcopy(self.history),
            "deleted": self.deleted,
        }


class _BlockKit:
    """Checks blocks against Slack's Block Kit limits, collecting problems as Slack words them:
    ``"<what is wrong> [json-pointer:/blocks/0/text/text]"``. One instance per message or view,
    because action_id and block_id must be unique within one."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._action_ids: set[str] = set()
        self._block_ids: set[str] = set()

    def fail(self, pointer: str, what: str) -> None:
        self.problems.append(f"{what} [json-pointer:{pointer}]")

    # -- primitives -------------------------------------------------------------------------

    def string(self, value: Any, ptr: str, max_len: int, *, required: bool = False) -> None:
        if value is None:
            if required:
                self.fail(ptr, "missing required field")
            return
        if not isinstance(value, str):
            self.fail(ptr, "must be a string")
        elif len(value) > max_len:
            self.fail(ptr, f"must be less than {max_len + 1} characters")

    def items(self, value: Any, ptr: str, max_items: int, *, min_items: int = 1) -> list[Any]:
        if not isinstance(value, list):
            self.fail(ptr, "must be an array")
            return []
        if len(value) > max_items:
            self.fail(ptr, f"must provide no more than {max_items} items")
        if len(value) < min_items:
            self.fail(ptr, f"must provide at least {min_items} items")
        return value

    def text(self, obj: Any, ptr: str, max_len: int, *, plain: bool = False, required: bool = True) -> None:
        """A text composition object. ``plain`` where Slack accepts only plain_text."""
        if obj is None:
            if required:
                self.fail(ptr, "missing required field")
            return
        if not isinstance(obj, dict):
            self.fail(ptr, "must be a text object")
            return
        allowed = ("plain_text",) if plain else _TEXT_TYPES
        if obj.get("type") not in allowed:
            self.fail(f"{ptr}/type", f"must be one of {', '.join(allowed)}")
        text = obj.get("text")
        if not isinstance(text, str):
            self.fail(f"{ptr}/text", "must be a string")
        elif text == "":
            self.fail(f"{ptr}/text", "must be more than 0 characters")
        elif len(text) > max_len:
            self.fail(f"{ptr}/text", f"must be less than {max_len + 1} characters")

    def unique_id(self, value: Any, ptr: str, seen: set[str], name: str) -> None:
        if value is None:
            return
        self.string(value, ptr, 255)
        if isinstance(value, str):
            if value == "":
                self.fail(ptr, "must be more than 0 characters")
            elif value in seen:
                self.fail(ptr, f"duplicate {name} {value!r}")
            seen.add(value)

    # -- blocks -----------------------------------------------------------------------------

    def blocks(self, blocks: Any, ptr: str, max_blocks: int) -> None:
        for i, block in enumerate(self.items(blocks, ptr, max_blocks, min_items=0)):
            self.block(block, f"{ptr}/{i}")

    def kind_of(self, obj: Any, ptr: str, allowed: set[str], refusal: str) -> str | None:
        """The type of ``obj`` if it is an object of one of the ``allowed`` types; otherwise says why
        not (``refusal`` with the type in it) and returns None."""
        if not isinstance(obj, dict):
            self.fail(ptr, "must be an object")
            return None
        kind = obj.get("type")
        if kind not in allowed:
            self.fail(f"{ptr}/type", refusal.format(repr(kind)))
            return None
        return str(kind)

    def block(self, block: Any, ptr: str) -> None:
        kind = self.kind_of(block, ptr, _KNOWN_BLOCKS, "unknown block type {}")
        if kind is None:
            return
        self.unique_id(block.get("block_id"), f"{ptr}/block_id", self._block_ids, "block_id")
        if kind == "section":
            if block.get("text") is None and block.get("fields") is None:
                self.fail(ptr, "must provide either text or fields")
            self.text(block.get("text"), f"{ptr}/text", 3000, required=False)
            if block.get("fields") is not None:
                for i, f in enumerate(self.items(block["fields"], f"{ptr}/fields", 10)):
                    self.text(f, f"{ptr}/fields/{i}", 2000)
            if block.get("accessory") is not None:
                self.element(block["accessory"], f"{ptr}/accessory", _SECTION_ACCESSORIES)
        elif kind == "header":
            self.text(block.get("text"), f"{ptr}/text", 150, plain=True)
        elif kind == "actions":
            for i, el in enumerate(self.items(block.get("elements"), f"{ptr}/elements", 25)):
                self.element(el, f"{ptr}/elements/{i}", _INTERACTIVE)
        elif kind == "context":
            for i, el in enumerate(self.items(block.get("elements"), f"{ptr}/elements", 10)):
                if isinstance(el, dict) and el.get("type") == "image":
                    self.element(el, f"{ptr}/elements/{i}", {"image"})
                else:
                    self.text(el, f"{ptr}/elements/{i}", 3000)
        elif kind == "input":
            self.text(block.get("label"), f"{ptr}/label", 2000, plain=True)
            self.text(block.get("hint"), f"{ptr}/hint", 2000, plain=True, required=False)
            if block.get("element") is None:
                self.fail(f"{ptr}/element", "missing required field")
            else:
                self.element(block["element"], f"{ptr}/element", _INPUT_ELEMENTS)
        elif kind == "image":
            self.image(block, ptr)
            self.text(block.get("title"), f"{ptr}/title", 2000, plain=True, required=False)
        elif kind == "markdown":
            self.string(block.get("text"), f"{ptr}/text", MAX_MARKDOWN_TEXT, required=True)
        elif kind == "rich_text":
            self.items(block.get("elements"), f"{ptr}/elements", 10_000, min_items=0)
        # divider, file, video: nothing the bot would get wrong that we model.

    def image(self, obj: dict[str, Any], ptr: str) -> None:
        if obj.get("image_url") is None and obj.get("slack_file") is None:
            self.fail(ptr, "must provide either image_url or slack_file")
        self.string(obj.get("image_url"), f"{ptr}/image_url", 3000)
        self.string(obj.get("alt_text"), f"{ptr}/alt_text", 2000, required=True)

    # -- elements ---------------------------------------------------------------------------

    def element(self, el: Any, ptr: str, allowed: set[str]) -> None:
        kind = self.kind_of(el, ptr, allowed, "element type {} is not allowed here")
        if kind is None:
            return
        if kind == "image":
            self.image(el, ptr)
            return
        self.unique_id(el.get("action_id"), f"{ptr}/action_id", self._action_ids, "action_id")
        self.text(el.get("placeholder"), f"{ptr}/placeholder", 150, plain=True, required=False)
        if el.get("confirm") is not None:
            self.confirm(el["confirm"], f"{ptr}/confirm")
        if kind in ("button", "workflow_button"):
            self.text(el.get("text"), f"{ptr}/text", 75, plain=True)
            self.string(el.get("value"), f"{ptr}/value", 2000)
            self.string(el.get("url"), f"{ptr}/url", 3000)
            self.string(el.get("accessibility_label"), f"{ptr}/accessibility_label", 75)
            if el.get("style") not in (None, "primary", "danger"):
                self.fail(f"{ptr}/style", "must be one of primary, danger")
        elif kind in ("static_select", "multi_static_select"):
            self.select_options(el, ptr)
        elif kind == "overflow":
            self.options(el.get("options"), f"{ptr}/options", 5, plain=True, min_items=1)
        elif kind in ("checkboxes", "radio_buttons"):
            values = self.options(el.get("options"), f"{ptr}/options", 10, plain=False, min_items=1)
            self.initial(el, ptr, values)
        elif kind == "plain_text_input":
            self.string(el.get("initial_value"), f"{ptr}/initial_value", 3000)

    def select_options(self, el: dict[str, Any], ptr: str) -> None:
        has_options, has_groups = el.get("options") is not None, el.get("option_groups") is not None
        if has_options == has_groups:
            self.fail(ptr, "must provide exactly one of options or option_groups")
            return
        if has_options:
            values = self.options(el["options"], f"{ptr}/options", 100, plain=True)
        else:
            values = set()
            for i, group in enumerate(self.items(el["option_groups"], f"{ptr}/option_groups", 100)):
                gptr = f"{ptr}/option_groups/{i}"
                if not isinstance(group, dict):
                    self.fail(gptr, "must be an object")
                    continue
                self.text(group.get("label"), f"{gptr}/label", 75, plain=True)
                values |= self.options(group.get("options"), f"{gptr}/options", 100, plain=True)
        self.initial(el, ptr, values)

    def options(self, options: Any, ptr: str, max_items: int, *, plain: bool, min_items: int = 1) -> set[str]:
        """Checks option objects; returns their values so initial_option(s) can be checked."""
        values: set[str] = set()
        for i, opt in enumerate(self.items(options, ptr, max_items, min_items=min_items)):
            optr = f"{ptr}/{i}"
            if not isinstance(opt, dict):
                self.fail(optr, "must be an object")
                continue
            self.text(opt.get("text"), f"{optr}/text", 75, plain=plain)
            self.string(opt.get("value"), f"{optr}/value", 150, required=True)
            self.text(opt.get("description"), f"{optr}/description", 75, plain=plain, required=False)
            if isinstance(opt.get("value"), str):
                values.add(opt["value"])
        return values

    def initial(self, el: dict[str, Any], ptr: str, values: set[str]) -> None:
        # Slack refuses an initial option that is not one of the element's options.
        chosen = [el["initial_option"]] if el.get("initial_option") is not None else []
        chosen += el.get("initial_options") or []
        for opt in chosen:
            if not isinstance(opt, dict) or opt.get("value") not in values:
                self.fail(ptr, "initial option must exactly match one of the options")

    def confirm(self, obj: Any, ptr: str) -> None:
        if not isinstance(obj, dict):
            self.fail(ptr, "must be an object")
            return
        self.text(obj.get("title"), f"{ptr}/title", 100, plain=True)
        self.text(obj.get("text"), f"{ptr}/text", 300)
        self.text(obj.get("confirm"), f"{ptr}/confirm", 30, plain=True)
        self.text(obj.get("deny"), f"{ptr}/deny", 30, plain=True)

    # -- surfaces ---------------------------------------------------------------------------

    def modal(self, view: Any, ptr: str = "/view") -> None:
        if not isinstance(view, dict):
            self.fail(ptr, "must be a view object")
            return
        if view.get("type") != "modal":
            self.fail(f"{ptr}/type", "must be modal")
        self.text(view.get("title"), f"{ptr}/title", 24, plain=True)
        self.text(view.get("submit"), f"{ptr}/submit", 24, plain=True, required=False)
        self.text(view.get("close"), f"{ptr}/close", 24, plain=True, required=False)
        self.string(view.get("callback_id"), f"{ptr}/callback_id", 255)
        self.string(view.get("private_metadata"), f"{ptr}/private_metadata", 3000)
        self.string(view.get("external_id"), f"{ptr}/external_id", 255)
        if view.get("blocks") is None:
            self.fail(f"{ptr}/blocks", "missing required field")
            return
        self.blocks(view["blocks"], f"{ptr}/blocks", MAX_MODAL_BLOCKS)
        has_input = any(isinstance(b, dict) and b.get("type") == "input" for b in view["blocks"] or [])
        if has_input and view.get("submit") is None:
            self.fail(f"{ptr}/submit", "submit is required when an input block is present")


def _as_json(value: Any) -> Any:
    """Form-encoded calls carry blocks/view as JSON strings; Slack decodes them. Leaves
    undecodable strings alone so the method reports them as malformed."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def _truthy(value: Any) -> bool:
    # Booleans arrive as JSON booleans, or as "1"/"0"/"true" in form bodies.
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true"))


class SlackStandIn:
    """Serves a subset of the Slack Web API on 127.0.0.1, validating and recording every call.

    ``users`` maps user ids to user fields for users.info; ``email``, ``real_name`` and
    ``display_name`` go into the profile, anything else into the user object. ``usergroups`` maps
    usergroup ids (S...) to member user ids. When ``users`` is given, DMs and ephemerals to users
    not in it fail as they would for a user outside the workspace. ``channels_without_bot`` names
    channels (C... / G...) the bot is not a member of; posting there fails with ``not_in_channel``.
    ``channels``, when given, is every channel that exists (otherwise any well-formed id does).
    """

    def __init__(
        self,
        bot_token: str,
        *,
        users: dict[str, dict[str, Any]] | None = None,
        usergroups: dict[str, list[str]] | None = None,
        app_token: str | None = None,
        channels_without_bot: set[str] | None = None,
        channels: set[str] | None = None,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        # What apps.connections.open hands out; a test sets it once its websocket server listens.
        self.socket_url: str | None = None
        self._users = copy.deepcopy(users) if users is not None else None
        self._usergroups = copy.deepcopy(usergroups or {})
        self._without_bot_at_start = frozenset(_channel_with_members(c) for c in channels_without_bot or ())
        self._channels_at_start = (
            frozenset(_channel_with_members(c) for c in channels) if channels is not None else None
        )
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # stalled handlers wait on it for release()
        self._lifecycle = threading.Lock()  # serialises start/stop/go_away/come_back
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None  # kept while away, so the stand-in comes back where it was
        self._away = False
        self._placeholder: socket.socket | None = None  # holds the port while away (bound, not listening)
        self._conns: set[_Conn] = set()
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "users.info": self._users_info,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.open": self._conversations_open,
            "conversations.info": self._conversations_info,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
            _APP_TOKEN_METHOD: self._apps_connections_open,
        }
        self._delays: dict[str, float] = {}
        self._delayed_now = 0
        self._delayed_most = 0
        # Called with each recorded Web API call, outside the lock (benchmarks time events with it).
        self.observers: list[Callable[[Call], None]] = []
        # Answers requests for paths other than /api/ and /response/ (the demo's workspace page).
        self.pages: Callable[[Page], Answer | None] | None = None
        self._init_state()

    def _init_state(self) -> None:
        self._calls: list[Call] = []
        self._responses: list[ResponseUrlPost] = []
        self._channels: dict[str, dict[str, _Message]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._views: dict[str, dict[str, Any]] = {}
        self._used_triggers: set[str] = set()
        self._response_links: dict[str, tuple[str, str]] = {}
        self._response_uses: dict[str, int] = {}
        self._failures: dict[str, deque[tuple[str, int, int | None]]] = {}
        # Methods failing with this error on every call, once fail_next's queue is used up.
        self._failing: dict[str, str] = {}
        # Answers given instead of the method's own (``ok: true`` and these fields), one per call.
        self._odd_answers: dict[str, deque[dict[str, Any]]] = {}
        self._rate_limits: dict[str, _RateLimit] = {}
        self._violations: list[Call] = []
        self._trickles: dict[str, int] = {}
        self._stalls: set[str] = set()
        self._without_bot: set[str] = set(self._without_bot_at_start)
        self._archived: set[str] = set()
        # None: every well-formed channel id exists. Deleted channels never do.
        self._existing: set[str] | None = set(self._channels_at_start) if self._channels_at_start is not None else None
        self._deleted: set[str] = set()
        self._private: set[str] = set()
        self._channel_names: dict[str, str] = {}
        self._counter = itertools.count(1)
        # files.getUploadURLExternal's uploads by file id, until completed (then in _files too).
        self._uploads: dict[str, _Upload] = {}
        self._files: list[dict[str, Any]] = []
        # Slack ts values are "<unix seconds>.<6 digits>"; a single counter keeps them unique.
        self._ts_base = int(time.time())

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, port: int = 0) -> SlackStandIn:
        """Serves on 127.0.0.1:``port`` (0: any free port)."""
        with self._lifecycle:
            if self._port is not None:
                raise RuntimeError("stand-in already started")
            self._stopping.clear()
            self._serve(_Server.listen(port, retry=False))
        return self

    def stop(self) -> None:
        """Stops serving, also while away. Stalled and trickling answers are cut off (the
        connection is closed unanswered); other in-flight calls are left to finish."""
        with self._lifecycle:
            if self._port is None:
                return
            self._stopping.set()  # cuts injected delays short so shutdown does not wait on them
            self._unserve(everything=False)
            if self._placeholder is not None:
                self._placeholder.close()
            self._placeholder, self._port, self._away = None, None, False

    def go_away(self) -> None:
        """An outage: new connections are refused and open ones (kept alive, in flight, stalled)
        are closed without an answer. Nothing is recorded until ``come_back()``."""
        with self._lifecycle:
            if self._port is None:
                raise RuntimeError("stand-in not started")
            if self._away:
                return
            self._away = True
            self._unserve(everything=True)
            self._placeholder = _reserve(self._port)

    def come_back(self) -> None:
        """Ends an outage: serves again on the same port, with everything recorded before it."""
        with self._lifecycle:
            if self._port is None:
                raise RuntimeError("stand-in not started")
            if not self._away:
                return
            placeholder, self._placeholder = self._placeholder, None
            self._serve(_Server.listen(self._port, placeholder))
            self._away = False

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """``with standin.outage():`` -- unreachable inside the block, back after it."""
        self.go_away()
        try:
            yield
        finally:
            if self._away:  # not if the block stopped the stand-in
                self.come_back()

    def _serve(self, server: _Server) -> None:
        server.standin = self
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="slack-standin",
            daemon=True,
        )
        with self._lock:
            self._server, self._thread = server, thread
            self._port = server.server_address[1]
        thread.start()

    def _unserve(self, *, everything: bool) -> None:
        """Stops accepting and closes the listening socket. Cuts off every open connection, or
        only stalled and trickling ones, in the same step that retires the server, so nothing
        arriving from then on is recorded (``_connected`` cuts off stragglers of a retired
        server). Handler threads are not waited for."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
            self._abort(everything=everything)
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> SlackStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("stand-in not started; call start() or use it as a context manager")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        """slack_sdk's ``base_url``: it appends the method name, so the trailing slash matters."""
        return f"{self.base_url}/api/"

    def response_url(self, key: str, *, channel: str | None = None, ts: str | None = None) -> str:
        """A response_url for an interaction payload. Linked to a posted message (channel, ts),
        ``replace_original`` / ``delete_original`` act on that message as Slack's would."""
        if channel is not None and ts is not None:
            with self._lock:
                self._response_links[key] = (self._resolve_channel(channel), ts)
        return f"{self.base_url}/response/{key}"

    def stamp(self) -> str:
        """A fresh ts on the clock messages use, for ordering things the workspace adds itself."""
        with self._lock:
            return self._next_ts()

    def new_trigger_id(self) -> str:
        """A fresh trigger id in Slack's format, for interaction payloads built by tests."""
        return f"{next(self._counter) + 100_000}.424242.{secrets.token_hex(16)}"

    def set_usergroup(self, group: str, members: list[str]) -> None:
        """Who is in a usergroup from now on, as when an admin (or an on-call tool) changes it."""
        with self._lock:
            self._usergroups[group] = list(members)

    # -- failure injection ------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        error: str = "ratelimited",
        times: int = 1,
        *,
        retry_after: int = 1,
        status: int | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail with ``error``. ``ratelimited`` is
        answered as Slack does: HTTP 429 with a Retry-After header (``retry_after`` seconds).
        ``method`` may be ``"response_url"`` (answered with HTTP 404 and the error as body), or
        ``"upload"``, the POST of a file's bytes (answered with ``status``, default 500).

        ``status`` answers with that HTTP status instead (500, 502, 503: Slack having a bad
        day), body ``{"ok": false, "error": error}``; a 429 carries Retry-After. The failed calls
        are recorded with kind ``"injected"`` and have no effect. Rate limits (``rate_limit``)
        are checked first: a call they refuse does not use up an injected failure."""
        if status is not None and not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status}")
        with self._lock:
            self._failures.setdefault(method, deque()).extend([(error, retry_after, status)] * times)

    def fail_until_stopped(self, method: str, error: str = "internal_error") -> None:
        """Make every call of ``method`` fail with ``error`` (HTTP 200, ``ok: false``, as Slack answers
        an error) until ``stop_failing(method)``: an outage of one method that outlasts any count."""
        with self._lock:
            self._failing[method] = error

    def answer_oddly(self, method: str, fields: dict[str, Any], times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with ``ok: true`` and only ``fields``: a
        success that lacks what the method promises (Slack's answers are not always whole)."""
        with self._lock:
            self._odd_answers.setdefault(method, deque()).extend([copy.deepcopy(fields)] * times)

    def stop_failing(self, method: str) -> None:
        """Ends ``fail_until_stopped`` (and any failures ``fail_next`` still had queued) for ``method``."""
        with self._lock:
            self._failing.pop(method, None)
            self._failures.pop(method, None)

    def rate_limit(
        self,
        method: str,
        *,
        burst: int,
        per_second: float,
        retry_after: int = 1,
        per_channel: bool = True,
    ) -> None:
        """Rate-limit ``method`` with a token bucket per channel argument (per method when
        ``per_channel`` is false): ``burst`` calls at once, refilled at ``per_second``. Over the
        limit a call is answered HTTP 429, ``Retry-After: <retry_after>``, ``{"ok": false,
        "error": "ratelimited"}``, recorded with kind ``"ratelimited"``, and has no effect.
        Until that Retry-After has run out, every call to the bucket is answered 429 too and
        counted in ``retry_after_violations()``. Calling it again replaces the limit (with full
        buckets). Auth and unknown-method refusals come before the limit and use no tokens."""
        if method == "response_url":
            raise ValueError("rate_limit applies to Web API methods")
        if burst < 0 or per_second < 0 or retry_after < 0:
            raise ValueError("burst, per_second and retry_after must not be negative")
        with self._lock:
            self._rate_limits[method] = _RateLimit(burst, per_second, retry_after, per_channel)

    def clear_rate_limits(self) -> None:
        """Removes every rate limit (what was recorded stays)."""
        with self._lock:
            self._rate_limits.clear()

    def trickle(self, method: str, bytes_per_second: int) -> None:
        """Write every answer to ``method`` (or ``"response_url"``) at ``bytes_per_second`` --
        the whole response, so even the status line and headers arrive slowly. The call itself
        takes effect at once. 0 removes the trickle."""
        if bytes_per_second < 0:
            raise ValueError("bytes_per_second must not be negative")
        self._set_or_remove(self._trickles, method, bytes_per_second)

    def stall(self, method: str) -> None:
        """Accept calls to ``method`` (or ``"response_url"``) and record them -- they take effect,
        as on a Slack too slow to answer -- but send no answer until ``release(method)``.
        ``reset()``, ``stop()`` and ``go_away()`` close stalled connections unanswered."""
        with self._lock:
            self._stalls.add(method)

    def release(self, method: str) -> None:
        """Answers the calls to ``method`` stalled so far and stops stalling it."""
        with self._lock:
            self._stalls.discard(method)
            for conn in self._conns:
                if conn.stalled_on == method:
                    conn.released = True
            self._cond.notify_all()

    def most_delayed_at_once(self, *, reset: bool = False) -> int:
        """The most calls that were waiting out a ``set_delay`` at the same moment (how many calls
        the bot had in flight at once); ``reset`` starts counting afresh."""
        with self._lock:
            most = self._delayed_most
            if reset:
                self._delayed_most = self._delayed_now
            return most

    def set_delay(self, method: str, seconds: float) -> None:
        """Delay every answer to ``method`` (or ``"response_url"``); 0 removes the delay."""
        self._set_or_remove(self._delays, method, seconds)

    def _set_or_remove(self, faults: dict[str, Any], method: str, amount: float) -> None:
        """A per-method fault: set to ``amount``, or switched off by 0."""
        with self._lock:
            if amount > 0:
                faults[method] = amount
            else:
                faults.pop(method, None)

    # -- channel membership -----------------------------------------------------------------

    def remove_bot_from(self, channel: str) -> None:
        """The bot leaves (or was never in) ``channel``: chat.postMessage, chat.update and
        chat.postEphemeral there get ``not_in_channel`` (kind ``not_found``). Membership is checked
        right after the channel id, before the message itself, as a channel-level refusal."""
        self._mark(self._without_bot, channel, True)

    def add_bot_to(self, channel: str) -> None:
        self._mark(self._without_bot, channel, False)

    def archive(self, channel: str) -> None:
        """Archives ``channel``: chat.* posts there get ``is_archived`` (members or not)."""
        self._mark(self._archived, channel, True)

    def unarchive(self, channel: str) -> None:
        self._mark(self._archived, channel, False)

    def create_channel(
        self, channel: str, *, name: str | None = None, private: bool = False, bot_member: bool = True
    ) -> None:
        """A channel that exists from now on, public or private, with or without the bot in it.
        Slack hides a private channel from a bot that is not in it: ``channel_not_found``."""
        channel = _channel_with_members(channel)
        with self._lock:
            self._deleted.discard(channel)
            if self._existing is not None:
                self._existing.add(channel)
            self._channel_names[channel] = name or channel.lower()
            (self._private.add if private else self._private.discard)(channel)
            (self._without_bot.discard if bot_member else self._without_bot.add)(channel)

    def delete_channel(self, channel: str) -> None:
        """The channel is gone: every call naming it gets ``channel_not_found``."""
        channel = _channel_with_members(channel)
        with self._lock:
            self._deleted.add(channel)
            if self._existing is not None:
                self._existing.discard(channel)

    def _mark(self, marked: set[str], channel: str, on: bool) -> None:
        channel = _channel_with_members(channel)
        with self._lock:
            if on:
                marked.add(channel)
            else:
                marked.discard(channel)

    # -- recordings -------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        return self._calls_where(lambda c: c.method == method)

    def rejected(self) -> list[Call]:
        """Calls Slack would have refused as malformed. Tests assert this is empty."""
        return self._calls_where(lambda c: c.kind == "rejected")

    def ratelimited_calls(self) -> list[Call]:
        """Calls a ``rate_limit`` bucket answered with 429 (violations included)."""
        return self._calls_where(lambda c: c.kind == "ratelimited")

    def _calls_where(self, keep: Callable[[Call], bool]) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if keep(c)]

    def retry_after_violations(self) -> list[Call]:
        """Calls to a bucket made before the Retry-After of its last 429 had run out."""
        with self._lock:
            return list(self._violations)

    def open_connections(self) -> int:
        """Client connections open right now (accepted and not yet closed)."""
        with self._lock:
            return len(self._conns)

    @property
    def responses(self) -> list[ResponseUrlPost]:
        with self._lock:
            return list(self._responses)

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Current state of the bot's messages in ``channel`` (a user id means the DM with them),
        oldest first; deleted ones are left out."""
        with self._lock:
            found = self._channels.get(self._resolve_channel(channel), {})
            return [m.snapshot() for m in found.values() if not m.deleted]

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        with self._lock:
            found = self._channels.get(self._resolve_channel(channel), {})
            if ts not in found:
                raise KeyError(f"no message {ts} in {channel}; there: {sorted(found)}")
            return found[ts].snapshot()

    def ephemerals(self, channel: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(e) for e in self._ephemerals if channel in (None, e["channel"])]

    def files(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Files shared by files.completeUploadExternal, oldest first: id, filename, title, channel,
        thread_ts, initial_comment and the bytes uploaded (``data``)."""
        with self._lock:
            return [copy.deepcopy(f) for f in self._files if channel in (None, f["channel"])]

    def views(self) -> list[dict[str, Any]]:
        """Views opened or pushed, in their current state (after views.update)."""
        with self._lock:
            return [copy.deepcopy(v) for v in self._views.values()]

    def view(self, view_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._views[view_id])

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, description: str | None = None) -> T:
        """Poll ``predicate`` until it returns something truthy and return that. Exceptions from
        the predicate count as "not yet" (``messages(c)[0]`` before the post); on timeout the
        last one is chained to the AssertionError."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                result = predicate()
                if result:
                    return result
            except Exception as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        what = description or _describe(predicate)
        recent = "\n".join(f"  {c.method}: {'ok' if c.ok else f'{c.error} ({c.kind})'}" for c in self.calls[-15:])
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}\n"
            f"last error: {last_error!r}\nrecent calls:\n{recent or '  (none)'}"
        ) from last_error

    def reset(self) -> None:
        """Forget calls, messages, views, responses and injected failures (users stay). Every
        fault is switched off (delays, rate limits, trickles, stalls; stalled and trickling
        answers in flight are cut off) and channel membership is back to what the constructor
        said. An outage (``go_away``) is not ended by it."""
        with self._lock:
            self._abort(everything=False)
            self._init_state()
            self._delays.clear()

    # -- request handling (called from server threads) ---------------------------------------

    def _delay(self, method: str) -> None:
        with self._lock:
            seconds = self._delays.get(method, 0.0)
            if seconds:
                self._delayed_now += 1
                self._delayed_most = max(self._delayed_most, self._delayed_now)
        if seconds:
            try:
                self._stopping.wait(seconds)
            finally:
                with self._lock:
                    self._delayed_now -= 1

    def _injected(self, method: str) -> tuple[str, int, int | None] | None:
        queue = self._failures.get(method)
        if queue:
            return queue.popleft()
        error = self._failing.get(method)
        return (error, 1, None) if error is not None else None

    def _rate_check(self, method: str, args: dict[str, Any]) -> tuple[int, bool] | None:
        """Takes a token from the call's bucket. None if the call may go ahead, else the
        Retry-After to answer with and whether the call came before an earlier one ran out."""
        limit = self._rate_limits.get(method)
        if limit is None:
            return None
        channel = args.get("channel")
        key = self._resolve_channel(channel) if limit.per_channel and isinstance(channel, str) else None
        now = time.monotonic()
        bucket = limit.buckets.setdefault(key, _Bucket(float(limit.burst), now))
        bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.stamp) * limit.per_second)
        bucket.stamp = now
        if now < bucket.blocked_until:
            # Told to wait and did not: still limited, with what is left of the wait.
            return max(1, math.ceil(bucket.blocked_until - now)), True
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        bucket.blocked_until = now + limit.retry_after
        return limit.retry_after, False

    def _api(
        self,
        method: str,
        authorization: str | None,
        args: dict[str, Any],
        parse_error: str | None,
        conn: _Conn | None = None,
    ) -> _Reply | None:
        """Answers one Web API call; None when its connection was cut (the call never arrived)."""
        self._delay(method)
        status, headers = 200, {}
        violation = False
        with self._lock:
            if conn is not None and conn.aborted.is_set():
                return None
            try:
                self._authorize(method, authorization)
                handler = self._methods.get(method)
                if handler is None:
                    raise _Refusal("unknown_method")
                if parse_error:
                    raise _Refusal(parse_error)
                limited = self._rate_check(method, args)
                if limited is not None:
                    retry_after, violation = limited
                    status, headers = 429, {"Retry-After": str(retry_after)}
                    raise _Refusal("ratelimited", kind="ratelimited")
                injected = self._injected(method)
                if injected is not None:
                    error, retry_after, forced = injected
                    status = forced if forced is not None else 429 if error == "ratelimited" else 200
                    if status == 429:
                        headers = {"Retry-After": str(retry_after)}
                    raise _Refusal(error, kind="injected")
                odd = self._odd_answers.get(method)
                if odd:
                    body, kind = {"ok": True, **odd.popleft()}, "odd"
                else:
                    body, kind = {"ok": True, **handler(args)}, "ok"
            except _Refusal as refusal:
                body, kind = refusal.body(), refusal.kind
            call = Call(method, copy.deepcopy(args), body["ok"], body.get("error"), body, kind)
            self._calls.append(call)
            if violation:
                self._violations.append(call)
            reply = self._plan(method, conn, _Reply(status, json.dumps(body).encode(), _JSON, headers))
        for observer in self.observers:
            observer(call)
        return reply

    def _plan(self, method: str, conn: _Conn | None, reply: _Reply) -> _Reply:
        """Applies trickle/stall to an answer (lock held, when the call is recorded)."""
        reply.trickle = self._trickles.get(method, 0)
        if conn is not None:
            conn.trickling = reply.trickle > 0
            if method in self._stalls:
                conn.stalled_on, conn.released, reply.stalled = method, False, True
        return reply

    def _hold(self, conn: _Conn) -> bool:
        """Blocks a stalled answer until release() (True) or until it is cut off (False)."""
        with self._cond:
            while not conn.released and not conn.aborted.is_set():
                self._cond.wait(0.5)
            conn.stalled_on = None
            return not conn.aborted.is_set()

    def _abort(self, *, everything: bool) -> None:
        """Cuts off every connection, or only those of stalled and trickling answers (lock held)."""
        for conn in self._conns:
            if everything or conn.stalled_on is not None or conn.trickling:
                conn.abort()
        self._cond.notify_all()

    def _connected(self, sock: socket.socket, server: _Server) -> _Conn:
        conn = _Conn(sock)
        with self._lock:
            self._conns.add(conn)
            if server is not self._server:
                conn.abort()  # accepted just as its server went away or stopped
        return conn

    def _disconnected(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _authorize(self, method: str, authorization: str | None) -> None:
        """apps.connections.open takes only the app-level token, every other method only the bot token."""
        if not authorization:
            raise _Refusal("not_authed")
        wants_app_token = method == _APP_TOKEN_METHOD
        expected = self.app_token if wants_app_token else self.bot_token
        if expected is not None and authorization == f"Bearer {expected}":
            return
        other = self.bot_token if wants_app_token else self.app_token
        if other is not None and authorization == f"Bearer {other}":
            # A real token of the wrong type: Slack names the mistake rather than calling it invalid.
            raise _Refusal("not_allowed_token_type")
        raise _Refusal("invalid_auth")

    def _response_post(self, key: str, payload: Any, conn: _Conn | None = None) -> _Reply | None:
        """Answers a POST to a response_url with HTTP status and plain-text body, as Slack does;
        None when its connection was cut (the post never arrived)."""
        self._delay("response_url")
        with self._lock:
            if conn is not None and conn.aborted.is_set():
                return None
            status, kind, error = 200, "ok", None
            injected = self._injected("response_url")
            if injected is not None:
                status, kind, error = injected[2] or 404, "injected", injected[0]
            else:
                try:
                    self._apply_response(key, payload)
                    self._response_uses[key] = self._response_uses.get(key, 0) + 1
                except _Refusal as refusal:
                    kind, error = refusal.kind, refusal.error
                    status = 404 if error == "used_url" else 400
                    if refusal.problems:
                        error = f"{error}: {'; '.join(refusal.problems)}"
            record = payload if isinstance(payload, dict) else {"_raw": payload}
            self._responses.append(ResponseUrlPost(key, copy.deepcopy(record), error is None, error, self._next_ts()))
            body = {"ok": error is None, **({"error": error} if error else {})}
            self._calls.append(Call("response_url", copy.deepcopy(record), error is None, error, body, kind, key=key))
            return self._plan("response_url", conn, _Reply(status, (error or "ok").encode(), _TEXT))

    def _apply_response(self, key: str, payload: Any) -> None:
        if not isinstance(payload, dict):
            raise _Refusal("invalid_payload")
        if self._response_uses.get(key, 0) >= RESPONSE_URL_USES:
            raise _Refusal("used_url")
        if payload.get("response_type") not in (None, "in_channel", "ephemeral"):
            raise _Refusal("invalid_payload")
        link = self._response_links.get(key)
        if _truthy(payload.get("delete_original")):
            if link and link[1] in self._channels.get(link[0], {}):
                self._channels[link[0]][link[1]].deleted = True
            return
        text, blocks = self._content(payload, required=True)
        if link is None:
            return
        channel, ts = link
        if _truthy(payload.get("replace_original")):
            if ts in self._channels.get(channel, {}):
                self._channels[channel][ts].replace(text, blocks)
        elif payload.get("response_type") == "in_channel":
            self._store(channel, text, blocks, None)

    # -- helpers for method handlers (lock held) ----------------------------------------------

    def _resolve_channel(self, channel: str) -> str:
        # Posting to a user id posts in the bot's DM with them; the DM id is derived so tests
        # can predict it and conversations.open agrees with chat.postMessage.
        return "D" + channel[1:] if USER_ID.match(channel) else channel

    def _known_user(self, user: str) -> bool:
        return self._users is None or user in self._users

    def _channel(self, args: dict[str, Any], *, allow_user: bool = True) -> str:
        channel = args.get("channel")
        if not isinstance(channel, str) or not CHANNEL_ID.match(channel):
            raise _Refusal("channel_not_found")
        if USER_ID.match(channel):
            if not allow_user:  # chat.update wants the DM id (D...), not the user id
                raise _Refusal("channel_not_found")
            if not self._known_user(channel):
                raise _Refusal("channel_not_found", kind="not_found")
        elif not self._visible(channel):
            raise _Refusal("channel_not_found", kind="not_found")
        return self._resolve_channel(channel)

    def _visible(self, channel: str) -> bool:
        """Whether the bot can see a C.../G... channel: it exists, and is public or has the bot in it
        (DM ids, D..., are always visible here)."""
        if channel[0] not in "CG":
            return True
        if channel in self._deleted or (self._existing is not None and channel not in self._existing):
            return False
        return not (channel in self._private and channel in self._without_bot)

    def _member(self, channel: str) -> None:
        """Refuses posting to a channel that is archived or that the bot is not in."""
        if channel in self._archived:
            raise _Refusal("is_archived", kind="not_found")
        if channel in self._without_bot:
            raise _Refusal("not_in_channel", kind="not_found")

    def _content(self, args: dict[str, Any], *, required: bool) -> tuple[str | None, list[dict[str, Any]] | None]:
        """Validates message text/blocks. Returns (text, blocks); None means "not given"."""
        text, blocks, markdown = args.get("text"), args.get("blocks"), args.get("markdown_text")
        if text is not None and not isinstance(text, str):
            raise _Refusal("invalid_arguments", problems=["must be a string [json-pointer:/text]"])
        if blocks is not None and not isinstance(blocks, list):
            raise _Refusal("invalid_blocks_format")
        if markdown is not None:
            if text or blocks:
                raise _Refusal("markdown_text_conflict")
            if len(markdown) > MAX_MARKDOWN_TEXT:
                raise _Refusal("msg_too_long")
            return markdown, None
        if required and not text and not blocks and not args.get("attachments"):
            raise _Refusal("no_text")
        if text is not None and len(text) > MAX_MESSAGE_TEXT:
            raise _Refusal("msg_too_long")
        if blocks is not None:
            kit = _BlockKit()
            kit.blocks(blocks, "/blocks", MAX_MESSAGE_BLOCKS)
            if kit.problems:
                raise _Refusal("invalid_blocks", problems=kit.problems)
        return text, blocks

    def _next_ts(self) -> str:
        n = next(self._counter)
        return f"{self._ts_base + n // 1_000_000}.{n % 1_000_000:06d}"

    def _store(self, channel: str, text: str | None, blocks: Any, thread_ts: str | None) -> _Message:
        msg = _Message(channel, self._next_ts(), text, copy.deepcopy(blocks), thread_ts)
        self._channels.setdefault(channel, {})[msg.ts] = msg
        return msg

    def _trigger(self, args: dict[str, Any]) -> None:
        trigger = args.get("trigger_id") or args.get("interactivity_pointer")
        if not trigger:
            raise _Refusal("invalid_arguments", problems=["missing required field: trigger_id"])
        if not isinstance(trigger, str):
            raise _Refusal("invalid_trigger_id")
        # Any string is accepted as a trigger (test harnesses invent their own); Slack's
        # single-use rule is what catches a bot that opens two views from one interaction.
        if trigger in self._used_triggers:
            # Documented for views.open/push: "The trigger_id was already exchanged".
            raise _Refusal("exchanged_trigger_id")
        self._used_triggers.add(trigger)

    def _checked_view(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        kit = _BlockKit()
        kit.modal(view)
        if kit.problems:
            raise _Refusal("invalid_arguments", problems=kit.problems)
        assert isinstance(view, dict)
        return view

    def _store_view(self, view: dict[str, Any], view_id: str | None = None, root: str | None = None) -> dict[str, Any]:
        view_id = view_id or f"V{next(self._counter):09d}"
        external_id = view.get("external_id")
        if external_id and any(v["external_id"] == external_id and v["id"] != view_id for v in self._views.values()):
            raise _Refusal("duplicate_external_id")
        stored = {
            "id": view_id,
            "team_id": TEAM_ID,
            "app_id": APP_ID,
            "bot_id": BOT_ID,
            "type": "modal",
            "title": view["title"],
            "submit": view.get("submit"),
            "close": view.get("close"),
            "blocks": copy.deepcopy(view["blocks"]),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "external_id": external_id or "",
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "clear_on_close": _truthy(view.get("clear_on_close")),
            "notify_on_close": _truthy(view.get("notify_on_close")),
            "root_view_id": root or view_id,
            "previous_view_id": None,
        }
        self._views[view_id] = stored
        return copy.deepcopy(stored)

    # -- Web API methods (lock held; return the body without "ok") -----------------------------

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG002 - uniform signature
        return {
            "url": "https://standin.slack.com/",
            "team": "Stand-in",
            "user": "jit-bot",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        self._member(channel)
        text, blocks = self._content(args, required=True)
        msg = self._store(channel, text, blocks, args.get("thread_ts"))
        return {"channel": channel, "ts": msg.ts, "message": msg.wire()}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args, allow_user=False)
        self._member(channel)
        ts = args.get("ts")
        if not isinstance(ts, str) or ts not in self._channels.get(channel, {}):
            raise _Refusal("message_not_found")
        msg = self._channels[channel][ts]
        if msg.deleted:
            raise _Refusal("message_not_found")
        text, blocks = self._content(args, required=True)
        # Slack keeps what the update leaves out; an empty blocks array removes the blocks.
        msg.replace(text if text is not None else msg.text, blocks if blocks is not None else msg.blocks)
        return {"channel": channel, "ts": ts, "text": msg.text or "", "message": msg.wire()}

    def _chat_post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        self._member(channel)
        user = args.get("user")
        if not isinstance(user, str) or not USER_ID.match(user):
            raise _Refusal("user_not_found")
        if not self._known_user(user):
            raise _Refusal("user_not_found", kind="not_found")
        text, blocks = self._content(args, required=True)
        ts = self._next_ts()
        self._ephemerals.append({"channel": channel, "user": user, "ts": ts, "text": text, "blocks": blocks})
        return {"message_ts": ts}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        view = self._checked_view(args)
        self._trigger(args)  # after validation: Slack does not burn a trigger on a bad view
        return {"view": self._store_view(view)}

    def _views_push(self, args: dict[str, Any]) -> dict[str, Any]:
        view = self._checked_view(args)
        self._trigger(args)
        return {"view": self._store_view(view)}

    def _views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        view_id, external_id = args.get("view_id"), args.get("external_id")
        if not view_id and not external_id:
            raise _Refusal("invalid_arguments", problems=["missing required field: view_id or external_id"])
        current = None
        for candidate in self._views.values():
            if (view_id and candidate["id"] == view_id) or (not view_id and candidate["external_id"] == external_id):
                current = candidate
        if current is None:
            raise _Refusal("not_found")
        if args.get("hash") and args["hash"] != current["hash"]:
            raise _Refusal("hash_conflict")
        view = self._checked_view(args)
        view.setdefault("external_id", current["external_id"])  # an update keeps the view's external_id
        return {"view": self._store_view(view, current["id"], current["root_view_id"])}

    def _files_get_upload_url_external(self, args: dict[str, Any]) -> dict[str, Any]:
        filename, length = args.get("filename"), args.get("length")
        if not isinstance(filename, str) or not filename.strip():
            raise _Refusal("invalid_arguments", problems=["missing required field: filename"])
        try:
            size = int(str(length))
        except ValueError:
            raise _Refusal("invalid_arguments", problems=["must be an integer [json-pointer:/length]"]) from None
        if size <= 0:  # what Slack answers for length 0
            raise _Refusal("missing_argument")
        if size > MAX_UPLOAD_BYTES:
            raise _Refusal("file_upload_size_restricted")
        file_id = f"F{next(self._counter):010d}"
        self._uploads[file_id] = _Upload(file_id, filename, size)
        return {"upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def _upload(self, file_id: str, body: bytes) -> _Reply:
        """The POST of a file's bytes to its upload URL (raw bytes, as slack_sdk sends them). Slack
        answers 200 ``OK - <length>``; a file id it never handed out, bytes of another length than
        announced, or a second upload of the same file are refused."""
        with self._lock:
            upload = self._uploads.get(file_id)
            injected = self._injected(UPLOAD)
            if injected is not None:  # fail_next("upload", status=503): Slack's file service having a bad day
                error, _retry_after, forced = injected
                status, text = forced or 500, error
                self._calls.append(Call(UPLOAD, {"file_id": file_id, "bytes": len(body)}, False, text, {}, "injected"))
                return _Reply(status, text.encode(), "text/plain")
            if upload is None or upload.completed:
                status, text = 404, "file not found"
            elif upload.data is not None:
                status, text = 400, "already uploaded"
            elif len(body) != upload.length:
                status, text = 400, f"length mismatch: announced {upload.length} bytes, sent {len(body)}"
            else:
                upload.data, status, text = body, 200, f"OK - {len(body)}"
            ok = status == 200
            self._calls.append(
                Call(
                    UPLOAD,
                    {"file_id": file_id, "bytes": len(body)},
                    ok,
                    None if ok else text,
                    {},
                    "ok" if ok else "rejected",
                )
            )
        return _Reply(status, text.encode(), "text/plain")

    def _files_complete_upload_external(self, args: dict[str, Any]) -> dict[str, Any]:
        files = _as_json(args.get("files"))
        if not isinstance(files, list) or not files or not all(isinstance(f, dict) for f in files):
            raise _Refusal("invalid_arguments", problems=["must provide at least 1 file [json-pointer:/files]"])
        uploads = []
        for item in files:
            upload = self._uploads.get(str(item.get("id")))
            if upload is None or upload.completed:
                raise _Refusal("file_not_found")
            if upload.data is None:  # announced, but its bytes never arrived
                raise _Refusal("file_not_found")
            uploads.append((upload, item.get("title")))
        channel_id, thread_ts = args.get("channel_id"), args.get("thread_ts")
        if args.get("channels"):
            raise _Refusal("invalid_arguments", problems=["the stand-in shares to one channel_id only"])
        channel: str | None = None
        if channel_id:
            channel = self._channel({"channel": channel_id})
            self._member(channel)
            if thread_ts is not None and thread_ts not in self._channels.get(channel, {}):
                raise _Refusal("invalid_thread_ts")
        elif thread_ts is not None:
            raise _Refusal("invalid_arguments", problems=["thread_ts needs channel_id"])
        comment = args.get("initial_comment")
        if comment is not None and len(str(comment)) > MAX_MESSAGE_TEXT:
            raise _Refusal("msg_too_long")
        shared = []
        for upload, title in uploads:
            upload.completed = True
            record = {
                "id": upload.file_id,
                "name": upload.filename,
                "title": title or upload.filename,
                "size": upload.length,
                "channel": channel,
                "thread_ts": thread_ts,
                "initial_comment": comment,
                "data": upload.data,
            }
            self._files.append(record)
            shared.append({k: v for k, v in record.items() if k in ("id", "name", "title", "size")})
        return {"files": shared}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = args.get("user")
        if not isinstance(user, str) or not user:
            raise _Refusal("invalid_arguments", problems=["missing required field: user"])
        if not self._users or user not in self._users:
            raise _Refusal("user_not_found", kind="not_found")
        fields = copy.deepcopy(self._users[user])
        profile = fields.pop("profile", {})
        # Convenience: profile fields may be given flat; real_name lives in both places.
        for name in ("email", "display_name"):
            if name in fields:
                profile[name] = fields.pop(name)
        if "real_name" in fields:
            profile.setdefault("real_name", fields["real_name"])
        info = {"id": user, "team_id": TEAM_ID, "name": user.lower(), "deleted": False, "is_bot": False}
        return {"user": {**info, **fields, "profile": profile}}

    def _usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = args.get("usergroup")
        if not isinstance(group, str) or not group:
            raise _Refusal("invalid_arguments", problems=["missing required field: usergroup"])
        if group not in self._usergroups:
            raise _Refusal("no_such_subteam", kind="not_found")
        return {"users": list(self._usergroups[group])}

    def _usergroups_list(self, args: dict[str, Any]) -> dict[str, Any]:
        # Slack's usergroup object, with the fields the bot might read; users only when asked for.
        groups = []
        for group, members in self._usergroups.items():
            entry: dict[str, Any] = {
                "id": group,
                "team_id": TEAM_ID,
                "is_usergroup": True,
                "is_subteam": True,
                "name": group.lower(),
                "handle": group.lower(),
                "description": "",
                "is_external": False,
                "date_create": self._ts_base,
                "date_update": self._ts_base,
                "date_delete": 0,
                "auto_type": None,
                "prefs": {"channels": [], "groups": []},
            }
            if _truthy(args.get("include_count")):
                entry["user_count"] = len(members)
            if _truthy(args.get("include_users")):
                entry["users"] = list(members)
            groups.append(entry)
        return {"usergroups": groups}

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not isinstance(channel, str) or not channel:
            raise _Refusal("invalid_arguments", problems=["missing required field: channel"])
        if not CHANNEL_ID.match(channel):
            raise _Refusal("channel_not_found")
        if USER_ID.match(channel) or not self._visible(channel):
            # A user id is not a conversation id, and a channel the bot cannot see does not exist for it.
            raise _Refusal("channel_not_found", kind="not_found")
        if channel[0] == "D":
            return {"channel": {"id": channel, "is_im": True, "user": "U" + channel[1:], "is_org_shared": False}}
        private = channel in self._private or channel[0] == "G"
        name = self._channel_names.get(channel, channel.lower())
        return {
            "channel": {
                "id": channel,
                "name": name,
                "name_normalized": name,
                "is_channel": not private,
                "is_group": private,
                "is_im": False,
                "is_mpim": False,
                "is_private": private,
                "is_archived": channel in self._archived,
                "is_general": False,
                "is_shared": False,
                "is_ext_shared": False,
                "is_org_shared": False,
                "is_member": channel not in self._without_bot,
                "created": self._ts_base,
                "context_team_id": TEAM_ID,
            }
        }

    def _conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        users = args.get("users")
        if not users:
            if args.get("channel"):
                return {"channel": {"id": self._channel(args)}}
            raise _Refusal("users_list_not_supplied")
        ids = users.split(",") if isinstance(users, str) else users
        if not isinstance(ids, list) or not all(isinstance(u, str) and USER_ID.match(u) for u in ids):
            raise _Refusal("user_not_found")
        if len(ids) > 8:
            raise _Refusal("too_many_users")
        if not all(self._known_user(u) for u in ids):
            raise _Refusal("user_not_found", kind="not_found")
        if len(ids) == 1:
            return {"channel": {"id": self._resolve_channel(ids[0])}}
        digest = hashlib.sha1(",".join(sorted(ids)).encode()).hexdigest()[:10].upper()
        if self._existing is not None:
            self._existing.add(f"G{digest}")  # the group DM exists from now on
        return {"channel": {"id": f"G{digest}"}}

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG002 - uniform signature
        if self.socket_url is None:
            # Not a Slack error code: the test has not pointed the stand-in at a websocket server.
            raise _Refusal("standin_no_socket_url", kind="not_found")
        return {"url": self.socket_url}


def _channel_with_members(channel: str) -> str:
    """A channel id that has members (C... public, G... private): DMs have no membership to lose."""
    if not isinstance(channel, str) or not CHANNEL_ID.match(channel) or channel[0] not in "CG":
        raise ValueError(f"not a channel id with members (C... or G...): {channel!r}")
    return channel


def _reserve(port: int) -> socket.socket | None:
    """Binds ``port`` without listening: connections to it are refused, and no other socket can
    take the port while the stand-in is away. None if that fails (come_back binds afresh)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def _describe(predicate: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: SlackStandIn

    @classmethod
    def listen(cls, port: int, bound: socket.socket | None = None, *, retry: bool = True) -> _Server:
        """A server listening on 127.0.0.1:``port`` (0: any free port), on the socket ``bound`` to
        it already when given. Waits a little for the port if it is taken (coming back)."""
        if bound is not None:
            server = cls(("127.0.0.1", port), _Handler, bind_and_activate=False)
            server.socket.close()
            server.socket = bound
            server.server_address = bound.getsockname()
            server.server_name, server.server_port = "127.0.0.1", port
            try:
                server.server_activate()
            except OSError:
                server.server_close()
                raise
            return server
        deadline = time.monotonic() + 5
        while True:
            try:
                return cls(("127.0.0.1", port), _Handler)
            except OSError:
                if port == 0 or not retry or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client gave up, or the stand-in cut the connection: nothing to report
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    conn: _Conn

    def setup(self) -> None:
        super().setup()
        self.conn = self.server.standin._connected(self.connection, self.server)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.standin._disconnected(self.conn)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean; calls are recorded instead

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        standin = self.server.standin
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply: _Reply | None
        if url.path.startswith("/api/"):
            args, parse_error = self._args(url.query, body)
            method, authorization = url.path[len("/api/") :], self.headers.get("Authorization")
            reply = standin._api(method, authorization, args, parse_error, self.conn)
        elif url.path.startswith("/upload/") and self.command == "POST":
            reply = standin._upload(url.path[len("/upload/") :], body)
        elif url.path.startswith("/response/") and self.command == "POST":
            try:
                payload: Any = json.loads(body or b"null")
            except ValueError:
                payload = body.decode("utf-8", "replace")
            reply = standin._response_post(url.path[len("/response/") :], payload, self.conn)
        else:
            answer = standin.pages(Page(self.command, url.path, url.query, body)) if standin.pages else None
            if answer is None:
                reply = _Reply(404, b"not found", "text/plain")
            else:
                reply = _Reply(answer.status, answer.body, answer.content_type, dict(answer.headers))
        if reply is None or (reply.stalled and not standin._hold(self.conn)):
            self.close_connection = True  # cut off: closed without an answer
            return
        self._send(reply)

    def _args(self, query: str, body: bytes) -> tuple[dict[str, Any], str | None]:
        """Merges query-string and body arguments; JSON-ish arguments are decoded."""
        args: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        ctype = self.headers.get_content_type()
        if body and ctype == "application/json":
            try:
                decoded = json.loads(body)
            except ValueError:
                return args, "invalid_json"
            if not isinstance(decoded, dict):
                return args, "invalid_json"
            args.update(decoded)
        elif body and ctype == "application/x-www-form-urlencoded":
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
            args.update({k: v[-1] for k, v in form.items()})
        elif body:
            return args, "invalid_post_type"
        args.pop("token", None)  # only the Authorization header counts here
        for name in ("blocks", "view", "attachments", "metadata"):
            if name in args:
                args[name] = _as_json(args[name])
        return args, None

    def _send(self, reply: _Reply) -> None:
        wire, self.wfile = self.wfile, io.BytesIO()  # the whole response first, to trickle it all
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.ctype)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
            data = self.wfile.getvalue()
        finally:
            self.wfile = wire
        if not reply.trickle:
            self.wfile.write(data)
            return
        # A schedule from the first byte rather than a sleep per chunk: a thread that wakes late
        # catches up, but never gets ahead of the rate.
        step, start = max(1, reply.trickle // 50), time.monotonic()
        try:
            for sent in range(0, len(data), step):
                if self.conn.aborted.wait(max(0.0, start + sent / reply.trickle - time.monotonic())):
                    self.close_connection = True
                    return
                self.wfile.write(data[sent : sent + step])
        finally:
            self.conn.trickling = False
