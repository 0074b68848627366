"""What the benchmarks share: the Slack workspace the stand-in plays, and a bot served in this process
the way the tests serve theirs (``tests/world.py`` says who is who and how a bot is configured)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from socket import socket
from typing import Any

from bot.demo.slack_api import SlackStandIn
from bot.domain.policy import Policy
from bot.runtime import build_runtime
from bot.services.delivery import DeliveryPolicy
from bot.store.db import make_engine, migrate
from tests.harness import free_socket
from tests.testbot import Bot, serving_runtime
from tests.world import BOT_TOKEN, SLACK_USERS, USERGROUPS, build_settings, lifted_quota, policy_data

# One requester sends every request, many pending at once, so the per-requester quota is lifted.
BENCH_POLICY = policy_data(**lifted_quota(10_000))


def started_standin() -> SlackStandIn:
    """The Slack stand-in with the tests' people and usergroups, started."""
    return SlackStandIn(BOT_TOKEN, users=SLACK_USERS, usergroups=USERGROUPS).start()


@contextmanager
def workspace() -> Iterator[SlackStandIn]:
    """:func:`started_standin`, stopped afterwards."""
    slack = started_standin()
    try:
        yield slack
    finally:
        slack.stop()


@contextmanager
def bot_in_process(
    slack: SlackStandIn,
    database_url: str,
    policy: Policy,
    delivery: DeliveryPolicy,
    *,
    sock: socket | None = None,
    **settings: Any,
) -> Iterator[Bot]:
    """The app on a migrated ``database_url``, served on loopback (on ``sock`` if given) in this process,
    as the tests' ``bot`` fixture serves it; ``settings`` are added to the tests' own."""
    engine = make_engine(database_url)
    try:
        migrate(engine)
        sock = sock or free_socket()
        runtime = build_runtime(
            build_settings(slack, database_url, sock.getsockname()[1], **settings),
            policy,
            engine=engine,
            delivery=delivery,
        )
        with serving_runtime(runtime, sock, slack) as bot:  # stopping it waits for acked work
            yield bot
    finally:
        engine.dispose()
