"""The scheduler's registration point: jobs by name, their triggers, failures and a deadlock-free stop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from bot.jobs.expiry import TIMER_JOB, ExpiryTimer
from bot.jobs.scheduler import AtStart, Every, JobScheduler, Pool, WhenArmed


def _counter() -> tuple[list[datetime], threading.Event, Callable[[], None]]:
    runs: list[datetime] = []
    ran = threading.Event()

    def job() -> None:
        runs.append(datetime.now(UTC))
        ran.set()

    return runs, ran, job


def _second_run() -> tuple[threading.Event, Callable[[], None]]:
    """A job body, and an event set once it has run twice."""
    runs: list[int] = []
    twice = threading.Event()

    def run() -> None:
        runs.append(1)
        if len(runs) >= 2:
            twice.set()

    return twice, run


def test_jobs_added_before_start_begin_with_it_and_run_by_their_trigger() -> None:
    jobs = JobScheduler()
    at_start, started, first = _counter()
    twice, tick = _second_run()
    jobs.add("first", AtStart(), first)
    jobs.add("tick", Every(0.05), tick, pool=Pool.EXPIRY)
    assert not started.is_set(), "nothing runs before start"
    jobs.start()
    try:
        assert started.wait(5), "an AtStart job runs when the scheduler starts"
        assert twice.wait(5), "an Every job runs again and again"
        assert len(at_start) == 1
        assert jobs.names == ("first", "tick")
    finally:
        jobs.stop()


def test_an_armed_job_runs_at_its_moment_and_arming_again_moves_it() -> None:
    jobs = JobScheduler()
    runs, ran, job = _counter()
    jobs.add("timer", WhenArmed(), job)
    assert not jobs.arm("timer", datetime.now(UTC)), "not started: the start-up sweep covers what is due"
    jobs.start()
    try:
        assert jobs.arm("timer", datetime.now(UTC) + timedelta(hours=1))
        assert jobs.arm("timer", datetime.now(UTC) - timedelta(seconds=1)), "a moment in the past runs now"
        assert ran.wait(5)
        assert len(runs) == 1, "re-arming replaced the hour-away run instead of adding one"
    finally:
        jobs.stop()
    assert not jobs.arm("timer", datetime.now(UTC)), "stopped: nothing is armed again"


def test_a_failing_job_is_logged_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    jobs = JobScheduler()
    again, count = _second_run()

    def flaky() -> None:
        count()
        raise RuntimeError("boom")

    jobs.add("flaky", Every(0.05), flaky)
    with caplog.at_level(logging.ERROR, logger="bot.jobs.scheduler"):
        jobs.start()
        try:
            assert again.wait(5), "a job that raised runs at its next moment"
        finally:
            jobs.stop()
    assert any("flaky failed" in r.getMessage() for r in caplog.records)


def test_a_name_is_registered_once() -> None:
    jobs = JobScheduler()
    jobs.add("digest", Every(60), lambda: None)
    with pytest.raises(ValueError, match="digest"):
        jobs.add("digest", Every(60), lambda: None)


def test_stop_returns_while_a_running_job_keeps_arming_another() -> None:
    """APScheduler's shutdown holds its job-store lock while it waits for running jobs; a job that arms
    the timer needs that lock. Stopping must still finish (the expiry sweep does exactly this)."""
    jobs = JobScheduler()
    inside = threading.Event()
    release = threading.Event()

    def sweep() -> None:
        inside.set()
        release.wait(5)
        for _ in range(50):
            jobs.arm("timer", datetime.now(UTC) + timedelta(seconds=30))

    jobs.add("sweep", AtStart(), sweep, pool=Pool.EXPIRY)
    jobs.add("timer", WhenArmed(), lambda: None, pool=Pool.EXPIRY)
    jobs.start()
    assert inside.wait(5)
    stopper = threading.Thread(target=jobs.stop)
    stopper.start()
    release.set()
    stopper.join(20)
    assert not stopper.is_alive(), "stop() deadlocked with a job arming the timer"


def test_the_expiry_timer_keeps_the_earliest_moment() -> None:
    jobs = JobScheduler()
    fired = threading.Event()
    timer = ExpiryTimer(jobs)
    jobs.add(TIMER_JOB, WhenArmed(), fired.set)
    jobs.start()
    try:
        timer.wake_at(datetime.now(UTC) + timedelta(hours=1))
        timer.wake_at(datetime.now(UTC) + timedelta(hours=2))  # later: ignored, the hour stays armed
        assert not fired.wait(0.3)
        timer.wake_at(datetime.now(UTC))  # earlier: moves the timer
        assert fired.wait(5)
    finally:
        jobs.stop()
