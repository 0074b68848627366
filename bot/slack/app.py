"""Building the Bolt app: signature checks, the workspace guard, lazy listeners, our own worker pool."""

from __future__ import annotations

from concurrent.futures import Executor

from slack_bolt import App
from slack_sdk import WebClient

from bot.slack.guard import Workspace, guard_middleware
from bot.slack.listeners import Listeners


def build_bolt_app(
    *,
    client: WebClient,
    signing_secret: str,
    listeners: Listeners,
    executor: Executor,
    workspace: Workspace,
    hooks_url: str,
) -> App:
    app = App(
        client=client,
        signing_secret=signing_secret,
        # With lazy listeners this means: run the ack function, answer Slack, and hand the slow part
        # to `executor`. Bolt's other mode polls for the ack every 10 ms, which only adds latency.
        process_before_response=True,
        listener_executor=executor,
        # The token is checked once, explicitly, at start (Runtime.connect_slack) with a clear message.
        token_verification_enabled=False,
        raise_error_for_unhandled_request=False,
    )
    app.use(guard_middleware(workspace=workspace, hooks_url=hooks_url))
    listeners.register(app)
    return app
