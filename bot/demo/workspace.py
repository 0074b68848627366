"""The demo's Slack workspace: its people, their channels and DMs, served as a page in the browser.

The page is served by the Slack stand-in itself (``SlackStandIn.pages``), beside the Web API the bot
calls. What a person does on the page reaches the bot exactly as from Slack: a signed slash command
or interaction payload to ``/slack/events``, built by :mod:`bot.demo.interactions` from the message or
view the stand-in holds (a button is looked up, never taken from the browser). What the bot sends back
arrives through the Web API and response_urls, validated by the stand-in as Slack validates it.

The page polls ``/workspace/state`` for what one person sees; nothing here keeps its own copy of a
message: channels, DMs, ephemerals and views are read from the stand-in each time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import httpx

from bot.demo.interactions import SlackRequests
from bot.demo.slack_api import BOT_ID, BOT_USER_ID, Answer, Page, SlackStandIn

_STATIC = {
    "/": ("workspace.html", "text/html; charset=utf-8"),
    "/workspace.js": ("workspace.js", "text/javascript; charset=utf-8"),
    "/workspace.css": ("workspace.css", "text/css; charset=utf-8"),
}
# The page is ours and loads nothing from elsewhere; the bot's pickup page opens in a tab of its own.
_PAGE_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data: http://127.0.0.1:*; frame-ancestors 'none'"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
)


@dataclass(frozen=True)
class Person:
    id: str  # a Slack user id
    name: str
    role: str  # what they do in the demo, shown in the switcher


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    about: str = ""


@dataclass(frozen=True)
class _Origin:
    """Who did something, and where: a response_url or trigger answers to them there."""

    person: str
    channel: str


@dataclass
class _Note:
    """Something Slack shows only to the person who acted: the bot's immediate answer, or an error."""

    person: str
    channel: str
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None = None
    typed: bool = False  # the person's own command, echoed as Slack shows it to them


@dataclass
class _Views:
    owner: dict[str, str] = field(default_factory=dict)  # trigger_id -> person
    closed: set[str] = field(default_factory=set)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)  # view id -> block id -> message


class WorkspaceError(Exception):
    """A request from the page that cannot be carried out (answered 400 with the reason)."""


class Workspace:
    """People acting on the bot through the stand-in, and the page that lets a browser be them."""

    def __init__(
        self,
        *,
        standin: SlackStandIn,
        people: list[Person],
        channels: list[Channel],
        bot_url: str,
        signing_secret: str,
        hints: list[str] | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self._standin = standin
        self._people = {p.id: p for p in people}
        self._channels = channels
        self._hints = hints or []
        self._send = SlackRequests.for_standin(bot_url, standin, signing_secret=signing_secret, http=http)
        self._lock = threading.Lock()
        self._origins: dict[str, _Origin] = {}  # response_url key -> who acted where
        self._notes: list[_Note] = []
        self._views = _Views()
        self._routes: dict[tuple[str, str], Callable[[dict[str, Any]], dict[str, Any]]] = {
            ("GET", "/workspace/people"): lambda _: self.directory(),
            ("GET", "/workspace/state"): lambda q: self.state(_person_arg(q)),
            ("POST", "/workspace/command"): self._command,
            ("POST", "/workspace/press"): self._press,
            ("POST", "/workspace/view/submit"): self._submit,
            ("POST", "/workspace/view/action"): self._view_action,
            ("POST", "/workspace/view/close"): self._close,
        }

    def attach(self) -> Workspace:
        """Serve the page from the stand-in's own port."""
        self._standin.pages = self.answer
        return self

    # -- what a person sees ---------------------------------------------------------------------

    def directory(self) -> dict[str, Any]:
        return {
            "people": [asdict(p) for p in self._people.values()],
            "channels": [asdict(c) for c in self._channels],
            "bot": {"id": BOT_USER_ID, "name": "jit-bot"},
            "hints": self._hints,
        }

    def dm_of(self, person: str) -> str:
        """The DM channel between ``person`` and the bot (the stand-in derives it from the user id)."""
        return "D" + person[1:]

    def state(self, person: str) -> dict[str, Any]:
        """Everything ``person`` sees: each channel's messages (with their ephemerals) and any open modal."""
        self._person(person)
        dm = self.dm_of(person)
        conversations = [*(c.id for c in self._channels), dm]
        feed: dict[str, list[dict[str, Any]]] = {c: [] for c in conversations}
        for channel in conversations:
            for message in self._standin.messages(channel):
                feed[channel].append(
                    {
                        "ts": message["ts"],
                        "thread_ts": message["thread_ts"],
                        "text": message["text"],
                        "blocks": message["blocks"],
                        "edited": bool(message["history"]),
                    }
                )
        for ephemeral in self._standin.ephemerals():
            channel = self._conversation(ephemeral["channel"], person)
            if ephemeral["user"] == person and channel in feed:
                feed[channel].append({**_content(ephemeral), "ts": ephemeral["ts"], "ephemeral": True})
        with self._lock:
            origins = dict(self._origins)
            notes = [n for n in self._notes if n.person == person]
        for post in self._standin.responses:
            origin = origins.get(post.key)
            if origin is None or not post.ok or origin.channel not in feed:
                continue
            payload = post.payload
            if payload.get("replace_original") or payload.get("delete_original"):
                continue  # applied to the message itself
            public = payload.get("response_type") == "in_channel"
            if public or origin.person == person:
                feed[origin.channel].append({**_content(payload), "ts": post.ts, "ephemeral": not public})
        for note in notes:
            if note.channel in feed:
                item = {"text": note.text, "blocks": note.blocks, "ts": note.ts, "ephemeral": True}
                feed[note.channel].append({**item, "typed": note.typed})
        for items in feed.values():
            items.sort(key=lambda item: float(item["ts"]))
        return {"person": person, "dm": dm, "feed": feed, "view": self._open_view(person)}

    def _open_view(self, person: str) -> dict[str, Any] | None:
        with self._lock:
            owner = dict(self._views.owner)
            closed = set(self._views.closed)
            errors = {k: dict(v) for k, v in self._views.errors.items()}
        latest = None
        for call in (*self._standin.calls_to("views.open"), *self._standin.calls_to("views.push")):
            if call.ok and owner.get(str(call.args.get("trigger_id"))) == person:
                view_id = call.response["view"]["id"]
                if view_id not in closed:
                    latest = view_id
        if latest is None:
            return None
        view = self._standin.view(latest)
        return {**view, "errors": errors.get(latest, {})}

    # -- what a person does ---------------------------------------------------------------------

    def type_command(self, person: str, channel: str, text: str) -> dict[str, Any]:
        """``person`` types ``text`` (``/jit …``) in ``channel``."""
        self._person(person)
        self._channel(channel, person)
        command, _, rest = text.strip().partition(" ")
        if command != "/jit":
            raise WorkspaceError("this workspace knows one command: /jit (try /jit help)")
        self._note(_Note(person, channel, self._standin.stamp(), text.strip(), typed=True))
        body, key, trigger = self._send.command_body(person, rest.strip(), channel=channel)
        self._remember(key, person, channel, trigger)
        return self._deliver(person, channel, lambda: self._send.post_signed(body))

    def press(self, person: str, channel: str, ts: str, block_id: str, action_id: str) -> dict[str, Any]:
        """``person`` presses a button on the bot's message ``ts`` in ``channel``."""
        self._person(person)
        self._channel(channel, person)
        try:
            message = self._standin.message(channel, ts)
        except KeyError:
            raise WorkspaceError("that message is gone") from None
        element = _button(message.get("blocks") or [], block_id, action_id)
        wire = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts, "text": message["text"] or ""}
        if message["blocks"] is not None:
            wire["blocks"] = message["blocks"]
        name = next((c.name for c in self._channels if c.id == channel), "directmessage")
        payload, key = self._send.press_payload(
            person, element, block_id=block_id, channel=channel, message=wire, channel_name=name
        )
        self._remember(key, person, channel, payload["trigger_id"])
        return self._deliver(person, channel, lambda: self._send.post_signed(self._send.payload_body(payload)))

    def submit(self, person: str, view_id: str, values: dict[str, Any]) -> dict[str, Any]:
        """``person`` presses the modal's submit button with these input values."""
        view = self._own_view(person, view_id)
        try:
            answer = self._send.submit_view(person, view, values)
        except httpx.HTTPError as exc:
            return {"ok": False, "error": _failed(exc)}
        if answer.status_code != 200:
            return {"ok": False, "error": f"We had some trouble connecting (the app answered {answer.status_code})."}
        action = _json(answer)
        with self._lock:
            if action.get("response_action") == "errors":
                self._views.errors[view_id] = {str(k): str(v) for k, v in (action.get("errors") or {}).items()}
                return {"ok": True, "closed": False}
            self._views.closed.add(view_id)
            self._views.errors.pop(view_id, None)
        return {"ok": True, "closed": True}

    def view_action(self, person: str, view_id: str, values: dict[str, Any], action: dict[str, Any]) -> dict[str, Any]:
        """``person`` changes an element that dispatches its action (choosing a resource redraws the form)."""
        view = self._own_view(person, view_id)
        try:
            self._send.view_action(person, {**view, "state": {"values": values}}, action)
        except httpx.HTTPError as exc:
            return {"ok": False, "error": _failed(exc)}
        return {"ok": True}

    def close(self, person: str, view_id: str) -> dict[str, Any]:
        view = self._own_view(person, view_id)
        with self._lock:
            self._views.closed.add(view_id)
        if view.get("notify_on_close"):
            try:
                self._send.close_view(person, view)
            except httpx.HTTPError:
                pass  # closing happens whatever the app says, as in Slack
        return {"ok": True}

    # -- helpers --------------------------------------------------------------------------------

    def _deliver(self, person: str, channel: str, post: Callable[[], httpx.Response]) -> dict[str, Any]:
        """Sends to the app; its immediate answer (an ack with a message) is shown to ``person`` only."""
        try:
            answer = post()
        except httpx.HTTPError as exc:
            self._note(_Note(person, channel, self._standin.stamp(), _failed(exc)))
            return {"ok": False}
        if answer.status_code != 200:
            said = f'/jit failed with the error "http_{answer.status_code}"'
            self._note(_Note(person, channel, self._standin.stamp(), said))
            return {"ok": False}
        body = _json(answer)
        if body.get("text") or body.get("blocks"):
            self._note(_Note(person, channel, self._standin.stamp(), body.get("text"), body.get("blocks")))
        return {"ok": True}

    def _remember(self, key: str, person: str, channel: str, trigger: str) -> None:
        with self._lock:
            self._origins[key] = _Origin(person, channel)
            self._views.owner[trigger] = person

    def _note(self, note: _Note) -> None:
        with self._lock:
            self._notes.append(note)

    def _person(self, person: str) -> Person:
        if person not in self._people:
            raise WorkspaceError(f"no such person in this workspace: {person!r}")
        return self._people[person]

    def _channel(self, channel: str, person: str) -> None:
        if channel != self.dm_of(person) and all(c.id != channel for c in self._channels):
            raise WorkspaceError(f"{person} cannot see channel {channel!r}")

    def _conversation(self, channel: str, person: str) -> str:
        # An ephemeral "to a user" in Slack lands in the DM with them.
        return self.dm_of(person) if channel == person else channel

    def _own_view(self, person: str, view_id: str) -> dict[str, Any]:
        self._person(person)
        current = self._open_view(person)
        if current is None or current["id"] != view_id:
            raise WorkspaceError("that form is not open")
        current.pop("errors", None)
        return current

    # -- HTTP --------------------------------------------------------------------------------------

    def answer(self, page: Page) -> Answer | None:
        if page.method == "GET" and page.path in _STATIC:
            name, content_type = _STATIC[page.path]
            body = resources.files("bot.demo").joinpath("static", name).read_bytes()
            return Answer(200, body, content_type, _PAGE_HEADERS)
        route = self._routes.get((page.method, page.path))
        if route is None:
            return None
        try:
            args = (
                _json_body(page.body) if page.method == "POST" else {k: v[-1] for k, v in parse_qs(page.query).items()}
            )
            result = route(args)
        except WorkspaceError as exc:
            return _json_answer(400, {"ok": False, "error": str(exc)})
        return _json_answer(200, result)

    def _command(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.type_command(_str(args, "person"), _str(args, "channel"), _str(args, "text"))

    def _press(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.press(
            _str(args, "person"),
            _str(args, "channel"),
            _str(args, "ts"),
            _str(args, "block_id"),
            _str(args, "action_id"),
        )

    def _submit(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.submit(_str(args, "person"), _str(args, "view_id"), _dict(args, "values"))

    def _view_action(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.view_action(
            _str(args, "person"), _str(args, "view_id"), _dict(args, "values"), _dict(args, "action")
        )

    def _close(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.close(_str(args, "person"), _str(args, "view_id"))


def _button(blocks: list[dict[str, Any]], block_id: str, action_id: str) -> dict[str, Any]:
    """The button a press names, from the message itself: the page cannot invent one."""
    for index, block in enumerate(blocks):
        if block.get("block_id", f"b{index}") != block_id:
            continue
        candidates = list(block.get("elements") or []) if block.get("type") == "actions" else []
        if block.get("type") == "section" and block.get("accessory"):
            candidates.append(block["accessory"])
        for element in candidates:
            if element.get("type") == "button" and element.get("action_id") == action_id:
                return dict(element)
    raise WorkspaceError("that button is not on the message (any more)")


def _content(message: dict[str, Any]) -> dict[str, Any]:
    return {"text": message.get("text"), "blocks": message.get("blocks")}


def _failed(exc: httpx.HTTPError) -> str:
    # What Slack shows when an app does not answer in time or at all.
    error = "operation_timeout" if isinstance(exc, httpx.TimeoutException) else "dispatch_failed"
    return f'/jit failed with the error "{error}"'


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise WorkspaceError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise WorkspaceError("the request body is not a JSON object")
    return data


def _json_answer(status: int, body: dict[str, Any]) -> Answer:
    return Answer(
        status, json.dumps(body).encode(), "application/json; charset=utf-8", (("Cache-Control", "no-store"),)
    )


def _person_arg(query: dict[str, Any]) -> str:
    return _str(query, "person")


def _str(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise WorkspaceError(f"{name} is missing")
    return value


def _dict(args: dict[str, Any], name: str) -> dict[str, Any]:
    value = args.get(name)
    if not isinstance(value, dict):
        raise WorkspaceError(f"{name} should be an object")
    return value
