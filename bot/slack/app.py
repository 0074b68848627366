"""Building the Bolt app: signature checks, lazy listeners, our own worker pool."""

from __future__ import annotations

from concurrent.futures import Executor

from slack_bolt import App
from slack_sdk import WebClient

from bot.slack.listeners import Listeners


def build_bolt_app(*, client: WebClient, signing_secret: str, listeners: Listeners, executor: Executor) -> App:
    app = App(
        client=client,
        signing_secret=signing_secret,
        # With lazy listeners this means: run the ack function, answer Slack, and hand the slow part
        # to `executor`. Bolt's other mode polls for the ack every 10 ms, which only adds latency.
        process_before_response=True,
        listener_executor=executor,
        # The token is checked once, explicitly, by `jit-bot serve` with a clear message.
        token_verification_enabled=False,
        raise_error_for_unhandled_request=False,
    )
    listeners.register(app)
    return app
