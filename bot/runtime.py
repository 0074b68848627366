"""The composition root: builds every part from Settings and a Policy, for the CLI and for tests."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from fastapi import FastAPI
from slack_bolt import App
from slack_sdk import WebClient
from sqlalchemy import Engine, text

from bot.config import Settings
from bot.domain.policy import Policy
from bot.services.requests import RequestService
from bot.services.voting import VotingService
from bot.slack.adapters import SlackDirectory, SlackNotifier
from bot.slack.app import build_bolt_app
from bot.slack.listeners import Listeners
from bot.store.db import make_engine
from bot.store.types import utcnow
from bot.web.app import create_web_app

# Lazy listeners do the slow part of each Slack interaction (database, Slack Web API) on these.
LISTENER_THREADS = 16


@dataclass
class Runtime:
    settings: Settings
    policy: Policy
    engine: Engine
    client: WebClient
    bolt_app: App
    web_app: FastAPI
    executor: ThreadPoolExecutor
    requests: RequestService
    voting: VotingService

    def close(self) -> None:
        # Finish work already acked to Slack before letting go of the database.
        self.executor.shutdown(wait=True)
        self.engine.dispose()


def build_runtime(
    settings: Settings,
    policy: Policy,
    *,
    engine: Engine | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Runtime:
    engine = engine or make_engine(settings.jit_database_url)
    client = WebClient(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url, timeout=10)
    directory = SlackDirectory(client)
    notifier = SlackNotifier(client)
    requests = RequestService(engine=engine, policy=policy, directory=directory, notifier=notifier, clock=clock)
    voting = VotingService(engine=engine, policy=policy, directory=directory, notifier=notifier, clock=clock)
    listeners = Listeners(policy=policy, requests=requests, voting=voting, directory=directory)
    executor = ThreadPoolExecutor(max_workers=LISTENER_THREADS, thread_name_prefix="jit-listener")
    bolt_app = build_bolt_app(
        client=client,
        signing_secret=settings.slack_signing_secret.get_secret_value(),
        listeners=listeners,
        executor=executor,
    )

    def health() -> dict[str, str]:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return {"database": "ok"}
        except Exception as exc:  # a health probe reports, it does not raise
            return {"database": f"error: {type(exc).__name__}"}

    web_app = create_web_app(bolt_app=None if settings.socket_mode else bolt_app, health=health)
    return Runtime(
        settings=settings,
        policy=policy,
        engine=engine,
        client=client,
        bolt_app=bolt_app,
        web_app=web_app,
        executor=executor,
        requests=requests,
        voting=voting,
    )
