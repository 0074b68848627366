"""The bot under test as a person in Slack sees it: what it posted (readers) and what people do to it
(actions), over signed HTTP to the served app and the Slack stand-in's records.

Readers that need only the stand-in are plain functions, so tests of a `jit-bot serve` process (which
have no in-process app) read Slack the same way.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import httpx
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.demo.slack_api import Call, ResponseUrlPost, SlackStandIn
from bot.domain.policy import Policy
from bot.idp.client import IdPClient
from bot.runtime import Runtime, build_runtime
from bot.services.delivery import DeliveryPolicy
from bot.slack.forms import DenyForm, RequestForm
from bot.slack.ids import ActionId
from bot.store.models import AccessRequest, AuditEvent, Grant, OutboxMessage
from bot.store.types import utcnow
from tests.harness import ServedApp, SlackRequests, free_socket
from tests.world import APPROVER_1, CARD_ID, REQUESTER, build_settings

T = TypeVar("T")

# A pickup link in a DM to the requester.
PICKUP_LINK = re.compile(r"(http://127\.0\.0\.1:\d+/pickup/[A-Za-z0-9_-]+)")


# --- reading what the bot sent to Slack ---------------------------------------------------------------


class Card(NamedTuple):
    """Where an approval card was posted."""

    request_id: str
    channel: str
    ts: str


def card_of(call: Call) -> Card | None:
    """The approval card this call posted, if it is an accepted post of one."""
    match = CARD_ID.search(str(call.args.get("text", "")))
    if call.method != "chat.postMessage" or not call.ok or match is None or not call.args.get("blocks"):
        return None
    return Card(match.group(1), str(call.response["channel"]), str(call.response["ts"]))


def cards_posted(slack: SlackStandIn, calls: list[Call] | None = None) -> list[Card]:
    """Every approval card Slack accepted (among ``calls``, by default all), in the order posted."""
    return [card for call in (slack.calls if calls is None else calls) if (card := card_of(call))]


def accepted_posts(slack: SlackStandIn) -> list[Call]:
    """Messages Slack accepted: posts and updates."""
    return [c for c in slack.calls if c.ok and c.method in ("chat.postMessage", "chat.update")]


def posts_to(slack: SlackStandIn, channel: str, containing: str = "", *, accepted: bool = True) -> list[str]:
    """The text of every message posted to ``channel`` (a user id: their DM) that contains ``containing``."""
    return [
        str(c.args.get("text"))
        for c in slack.calls_to("chat.postMessage")
        if c.args.get("channel") == channel and (c.ok or not accepted) and containing in str(c.args.get("text"))
    ]


def dms_to(slack: SlackStandIn, user: str, containing: str = "", *, accepted: bool = True) -> list[str]:
    return posts_to(slack, user, containing, accepted=accepted)


def card_text(message: dict[str, Any]) -> str:
    """Everything a person reads on a message, flattened: its text, block texts, fields and elements."""
    parts: list[str] = [str(message.get("text") or "")]
    for block in message.get("blocks") or []:
        if isinstance(block.get("text"), dict):
            parts.append(block["text"]["text"])
        parts.extend(field["text"] for field in block.get("fields") or [])
        for element in block.get("elements") or []:
            label = element.get("text")  # a button's is a text object, a context element's a string
            if isinstance(label, dict):
                parts.append(label["text"])
            elif isinstance(label, str):
                parts.append(label)
    return "\n".join(parts)


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The buttons on a message, in order."""
    return [e for b in message.get("blocks") or [] if b["type"] == "actions" for e in b["elements"]]


def opened_views(slack: SlackStandIn, containing: str = "") -> list[dict[str, Any]]:
    """Modals Slack opened, whose private metadata contains ``containing``."""
    return [
        c.response["view"]
        for c in slack.calls_to("views.open")
        if c.ok and containing in str(c.response["view"].get("private_metadata", ""))
    ]


# --- what a person types into a modal -------------------------------------------------------------------


def deny_form(reason: str) -> dict[str, dict[str, Any]]:
    """The values of a submitted Deny modal."""
    return {DenyForm.REASON_BLOCK: {DenyForm.REASON_ACTION: {"type": "plain_text_input", "value": reason}}}


def request_form(resource: str, scopes: list[str], duration: str, reason: str) -> dict[str, dict[str, Any]]:
    """The values of a submitted request modal; the scopes and duration blocks are per resource."""
    block, action = RequestForm.BlockId, RequestForm.ActionId
    return {
        block.RESOURCE: {action.RESOURCE: {"type": "static_select", "selected_option": {"value": resource}}},
        f"{block.SCOPES}:{resource}": {
            action.SCOPES: {"type": "multi_static_select", "selected_options": [{"value": s} for s in scopes]}
        },
        f"{block.DURATION}:{resource}": {
            action.DURATION: {"type": "static_select", "selected_option": {"value": duration}}
        },
        block.REASON: {action.REASON: {"type": "plain_text_input", "value": reason}},
    }


# --- the bot ---------------------------------------------------------------------------------------------


@dataclass
class Bot:
    """The app served over HTTP, the Slack stand-in it talks to, and its database."""

    served: ServedApp
    slack: SlackStandIn
    engine: Engine
    send: SlackRequests

    def eventually(self, predicate: Callable[[], T], timeout: float = 10.0) -> T:
        """Wait for ``predicate`` to hold (``SlackStandIn.wait_for``: exceptions count as "not yet")."""
        return self.slack.wait_for(predicate, timeout=timeout)

    # -- actions --

    def request(self, user: str, text: str) -> Card:
        """Type ``/jit <text>`` and wait for the card: returns (request id, card channel, card ts)."""
        before = len(self.slack.calls)
        response, _key = self.command(user, text)
        assert response.status_code == 200, response.text

        def card_posted() -> Card | None:
            return next(iter(cards_posted(self.slack, self.slack.calls[before:])), None)

        try:
            found = self.eventually(card_posted)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noutbox:\n{self.outbox_state()}") from None
        # The card's coordinates are stored just after the post; votes need them to update it.
        self.eventually(lambda: self.stored(found.request_id).card_ts is not None)
        return found

    def command(self, user: str, text: str) -> tuple[httpx.Response, str]:
        """Type ``/jit <text>`` (the ``/jit`` may be spelled out): returns the answer and the response_url key."""
        response, key, _trigger = self.send.slash(user, text.removeprefix("/jit").strip())
        return response, key

    def click(
        self, user: str, action: ActionId, request_id: str, *, channel: str | None = None, ts: str | None = None
    ) -> tuple[httpx.Response, str]:
        """Press a button on the request's card (or, given ``channel`` and ``ts``, on that message):
        returns the acknowledgement and the click's response_url key."""
        channel, ts = self._where(request_id, channel, ts)
        return self.send.click(user, action, request_id, channel=channel, ts=ts)

    def click_body(
        self, user: str, action: ActionId, request_id: str, *, channel: str | None = None, ts: str | None = None
    ) -> str:
        """The signed-to-be body of a click, for tests that send it themselves (races, replays)."""
        channel, ts = self._where(request_id, channel, ts)
        return self.send.payload_body(self.send.click_payload(user, action, request_id, channel=channel, ts=ts)[0])

    def open_deny_modal(self, user: str, request_id: str) -> dict[str, Any]:
        """Press Deny on the card and return the reason modal Slack opened for it."""
        before = len(opened_views(self.slack, request_id))
        self.click(user, ActionId.DENY, request_id)
        (view,) = self.eventually(lambda: opened_views(self.slack, request_id)[before:])
        return view

    def deny(self, user: str, request_id: str, reason: str) -> httpx.Response:
        """Press Deny and submit ``reason``: returns the answer to the submission."""
        return self.send.submit_view(user, self.open_deny_modal(user, request_id), deny_form(reason))

    def _where(self, request_id: str, channel: str | None, ts: str | None) -> tuple[str, str]:
        if channel is None or ts is None:
            row = self.stored(request_id)
            channel, ts = channel or str(row.card_channel), ts or str(row.card_ts)
        return channel, ts

    # -- readers --

    def replies(self, key: str) -> list[ResponseUrlPost]:
        """Wait for, and return, the answers sent to the response_url with this key."""
        return self.eventually(lambda: [r for r in self.slack.responses if r.key == key])

    def reply_text(self, key: str) -> str:
        return str(self.replies(key)[0].payload["text"])

    def dms_to(self, user: str, containing: str = "") -> list[str]:
        return dms_to(self.slack, user, containing)

    def posts_to(self, channel: str, containing: str = "", *, accepted: bool = True) -> list[str]:
        return posts_to(self.slack, channel, containing, accepted=accepted)

    def card(self, request_id: str) -> dict[str, Any]:
        """The request's approval card as it stands now in Slack (blocks and text)."""
        channel, ts = self._where(request_id, None, None)
        return self.slack.message(channel, ts)

    def card_showing(self, request_id: str, words: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the card reads ``words`` somewhere, and return it."""
        return self.eventually(lambda: (c := self.card(request_id)) and words in card_text(c) and c, timeout)

    def buttons(self, request_id: str) -> list[dict[str, Any]]:
        return buttons(self.card(request_id))

    def stored(self, request_id: str) -> AccessRequest:
        with Session(self.engine) as session:
            row = session.get(AccessRequest, request_id)
            assert row is not None, f"request {request_id} not in the database"
            return row

    def grant(self, request_id: str) -> Grant:
        grant = self.find_grant(request_id)
        assert grant is not None, f"no grant for {request_id} in the database"
        return grant

    def find_grant(self, request_id: str) -> Grant | None:
        with Session(self.engine) as session:
            return session.get(Grant, request_id)

    def audit(self, request_id: str | None = None) -> list[AuditEvent]:
        with Session(self.engine) as session:
            query = select(AuditEvent)
            if request_id is not None:
                query = query.where(AuditEvent.request_id == request_id)
            return list(session.exec(query.order_by(AuditEvent.seq)).all())

    def events(self, request_id: str, event_type: str) -> list[AuditEvent]:
        return [e for e in self.audit(request_id) if e.event_type == event_type]

    def request_count(self) -> int:
        with Session(self.engine) as session:
            return len(session.exec(select(AccessRequest)).all())

    def outbox_state(self) -> str:
        """The outbox as the bot sees it, one line a message: what a failed wait should show."""
        with Session(self.engine) as session:
            rows = session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all()  # type: ignore[arg-type]
        return "\n".join(
            f"  {m.id} {m.lane} {m.kind} {m.status} attempts={m.attempts} due={m.next_attempt_at} error={m.last_error}"
            for m in rows
        )


class TestClock:
    """The bot's clock, movable forward by tests (pickup links and grants expire by it)."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> Any:
        from bot.store.types import utcnow

        return utcnow() + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class MintingBot(Bot):
    """A bot with an IdP: approvals mint tokens, which the requester picks up."""

    idp: Any = None
    clock: Any = None
    public_url: str = ""
    log_records: Any = None

    def approve(self, text: str = "request prod-db read 30m checking INC-1234", *, minted: bool = True) -> str:
        """REQUESTER asks, APPROVER_1 approves; waits for the mint to end (``minted``) or the vote to count."""
        request_id = self.request(REQUESTER, text).request_id
        self.click(APPROVER_1, ActionId.APPROVE, request_id)
        if minted:
            self.eventually(lambda: self.stored(request_id).status in ("active", "failed"), timeout=15)
        else:
            self.eventually(lambda: self.stored(request_id).status != "pending")
        return request_id

    def pickup_url(self, request_id: str) -> str:
        """The pickup link the requester was sent for this grant."""
        dms = self.eventually(lambda: [t for t in self.dms_to(REQUESTER, request_id) if PICKUP_LINK.search(t)])
        match = PICKUP_LINK.search(dms[-1])
        assert match is not None
        return match.group(1)

    def token(self, request_id: str) -> str:
        """Follow the pickup link (as JSON) and return the access token."""
        answer = httpx.get(self.pickup_url(request_id), headers={"Accept": "application/json"}).json()
        return str(answer["access_token"])

    @property
    def idp_client(self) -> IdPClient:
        """The bot's own client of the IdP (the one its mints and revocations use)."""
        minting = self.served.runtime.minting
        assert minting is not None
        return minting.idp

    def introspect(self, token: str) -> dict[str, Any]:
        """The IdP's own word on ``token``, over plain HTTP with the client's credentials: not the bot's
        IdP client, whose bugs would otherwise prove its own revocations."""
        return self.idp.introspect(token)


@contextmanager
def serving_runtime(
    runtime: Runtime, sock: socket.socket, slack: SlackStandIn, kind: type[Bot] = Bot, **extra: Any
) -> Iterator[Any]:
    """Serve ``runtime`` on ``sock`` and yield it as a ``kind`` bot; stopped (work in hand finished) after."""
    served = ServedApp(runtime, sock).start()
    send = SlackRequests.for_standin(served.base_url, slack)
    try:
        yield kind(served=served, slack=slack, engine=runtime.engine, send=send, **extra)
    finally:
        send.http.close()
        served.stop()


@contextmanager
def serving(
    engine: Engine,
    database_url: str,
    policy: Policy,
    slack: SlackStandIn,
    delivery: DeliveryPolicy,
    *,
    slack_call_deadline: float = 15.0,
    clock: Callable[[], datetime] = utcnow,
) -> Iterator[Bot]:
    """One bot, served on loopback, talking to ``slack``; a second call on the same database is a replica."""
    sock = free_socket()
    settings = build_settings(slack, database_url, sock.getsockname()[1], slack_call_deadline=slack_call_deadline)
    runtime = build_runtime(settings, policy, engine=engine, delivery=delivery, clock=clock)
    with serving_runtime(runtime, sock, slack) as bot:
        yield bot
