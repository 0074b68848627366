"""Work handed to a thread pool never fails silently: its exception is logged with a reference."""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.services.workers import submit_logged


def test_an_exception_in_submitted_work_is_logged_with_a_reference(caplog: pytest.LogCaptureFixture) -> None:
    def mint() -> None:
        raise RuntimeError("the IdP answered something nobody expected")

    caplog.set_level(logging.ERROR)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = submit_logged(pool, logging.getLogger("bot.test"), "mint of R123 failed", mint)
        with pytest.raises(RuntimeError):
            future.result()
    (record,) = [r for r in caplog.records if "mint of R123 failed" in r.getMessage()]
    assert re.search(r"\(ref [0-9a-f]{8}\)", record.getMessage())
    assert record.exc_info is not None and "nobody expected" in str(record.exc_info[1])
