"""Work handed to thread pools is never lost in them: its failure is logged with a reference id."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


def log_failure(logger: logging.Logger, what: str, exc: BaseException | None = None) -> str:
    """Log ``what`` at ERROR with the traceback and a short reference id, and return the id.

    Call it from an ``except`` block (or pass ``exc``); the reference is what people are shown.
    """
    ref = secrets.token_hex(4)
    if exc is None:
        logger.exception("%s (ref %s)", what, ref)
    else:
        logger.error("%s (ref %s)", what, ref, exc_info=exc)
    return ref


def submit_logged(
    executor: Executor, logger: logging.Logger, what: str, fn: Callable[..., Any], *args: Any
) -> Future[Any]:
    """``executor.submit(fn, *args)``, except that an exception it raises is logged, not dropped."""
    future = executor.submit(fn, *args)

    def report(done: Future[Any]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            log_failure(logger, what, exc)

    future.add_done_callback(report)
    return future
