"""Errors from the IdP, classified so callers know whether trying again can help."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from bot.bounded_http import CallBudget, retry_after_seconds

__all__ = ["IdPError", "idp_error_for", "retry_after_seconds", "waiting_within"]
from bot.domain.text import one_line


class IdPError(Exception):
    """``code`` is the OAuth error code (``invalid_scope``…) or one of ours (``idp_unreachable``…).

    The text is built from the IdP's error code and description only, never from what we sent, so
    it can be shown on a card and written to the audit trail. Both are flattened to one line: an
    IdP's text must not forge log lines or card lines. ``retry_after`` is the IdP's Retry-After, in
    seconds, when it sent one.
    """

    def __init__(
        self,
        code: str,
        description: str | None = None,
        *,
        transient: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        self.code = one_line(code, 64) or "unknown_error"
        self.description = one_line(description or "", 300)
        self.transient = transient
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"{self.code}: {self.description}" if self.description else self.code)


def idp_error_for(exc: httpx.HTTPError, budget: CallBudget, *, during: str) -> IdPError:
    """An httpx failure as an IdPError. A call that hit its deadline or its size cap says so."""
    if budget.too_large:
        return IdPError(
            "idp_answer_too_large", f"{during}: the answer exceeded {budget.max_bytes} bytes", transient=False
        )
    if budget.encoded is not None:
        return IdPError(
            "idp_answer_encoded",
            f"{during}: the answer was compressed ({one_line(budget.encoded, 32)}) though identity was asked for",
            transient=False,
        )
    if isinstance(exc, httpx.TimeoutException):
        return IdPError("idp_timeout", f"{during}: the IdP did not answer in time", transient=True)
    return IdPError("idp_unreachable", f"{during}: {type(exc).__name__}", transient=True)


@contextmanager
def waiting_within(lock: threading.Lock, budget: CallBudget, *, during: str) -> Iterator[None]:
    """Hold ``lock``, waiting for it no longer than what is left of ``budget``: a thread stuck on a
    slow IdP must not hold every other caller past its own deadline."""
    if not lock.acquire(timeout=max(budget.remaining(), 0.0)):
        raise IdPError("idp_timeout", f"{during}: another call to the IdP outlasted the deadline", transient=True)
    try:
        yield
    finally:
        lock.release()
