"""How a use case asks for the expiry engine to run at a moment (a new grant's expiry, a retry).

Use cases are built before the engine's clockwork, so they get an Alarm in their constructor and the
clockwork binds itself to it when it is built. Until then (scripts, benchmarks), a wake is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime


class Alarm:
    def __init__(self) -> None:
        self._target: Callable[[datetime], None] | None = None

    def bind(self, target: Callable[[datetime], None]) -> None:
        self._target = target

    def wake_at(self, when: datetime) -> None:
        target = self._target
        if target is not None:
            target(when)
