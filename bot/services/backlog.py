"""Revocations first: a flag the revocation engine raises while grants wait for a worker.

Ending access is the promise; telling people about it can wait a little. While the flag is up the
outbox delivers one message at a time instead of several, so the interpreter's time (one core, under
the GIL) goes to the revocations until they have caught up. Nothing is dropped: what the outbox did
not send yet it sends once the flag is down.
"""

from __future__ import annotations


class RevocationBacklog:
    def __init__(self) -> None:
        # A plain attribute: one writer at a time (under the engine's lock), readers tolerate a stale
        # value for one pump round.
        self._behind = False

    def report(self, *, behind: bool) -> None:
        self._behind = behind

    def behind(self) -> bool:
        return self._behind
