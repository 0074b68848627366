"""The bot's one scheduler and its registration point.

Every background job is registered by name with ``add(name, trigger, fn)``: the expiry timer and the
periodic sweep, the request timeouts, the revocation watchdog, the outbox purge, and whatever later
features need (reminders, re-alerts, the digest). A job that raises is logged and runs again at its
next moment; it never stops the scheduler.

Jobs run on one of two pools. ``Pool.EXPIRY`` is kept for the expiry engine alone, so nothing the
housekeeping jobs wait on (a slow database query, Slack) can delay a revocation.

APScheduler says every run at INFO ("Running job …", "Job … executed successfully", "Added job …"):
the timer and the sweeps run several times a second under load, so those lines are DEBUG here,
and the log at INFO keeps what the bot itself says about its jobs (a job that failed, a lost arm).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from bot.logs import info_as_debug

log = logging.getLogger(__name__)


class Pool(StrEnum):
    HOUSEKEEPING = "default"
    EXPIRY = "expiry"


@dataclass(frozen=True)
class Every:
    """Run every ``seconds``, the first time one interval after start."""

    seconds: float


@dataclass(frozen=True)
class AtStart:
    """Run once, as soon as the scheduler starts."""


@dataclass(frozen=True)
class WhenArmed:
    """Run at the moment given to ``arm(name, when)``; arming again moves it. ``overlap``: how many
    runs may be in flight at once (a job that re-arms itself from inside its own run needs two or
    more, or APScheduler would skip the new run)."""

    overlap: int = 1


Trigger = Every | AtStart | WhenArmed


@dataclass(frozen=True)
class _Job:
    name: str
    trigger: Trigger
    fn: Callable[[], None]
    pool: Pool


class JobScheduler:
    def __init__(self, *, housekeeping_threads: int = 4, expiry_threads: int = 2) -> None:
        info_as_debug("apscheduler.scheduler", *(f"apscheduler.executors.{pool.value}" for pool in Pool))
        # Never drop a run for being late: a late revocation is still owed (misfire_grace_time=None),
        # and several missed runs of the same job collapse into one (coalesce).
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={
                Pool.HOUSEKEEPING.value: ThreadPoolExecutor(housekeeping_threads),
                Pool.EXPIRY.value: ThreadPoolExecutor(expiry_threads),
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._started = False
        self._stopping = False

    def add(self, name: str, trigger: Trigger, fn: Callable[[], object], *, pool: Pool = Pool.HOUSEKEEPING) -> None:
        """Register a job; those added before ``start`` begin with it, later ones at once."""
        if name in self._jobs:
            raise ValueError(f"a job named {name!r} is already registered")
        job = _Job(name, trigger, _logged(name, fn), pool)
        with self._lock:
            self._jobs[name] = job
            if self._started and not self._stopping:
                self._schedule(job)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._jobs)

    def arm(self, name: str, when: datetime) -> bool:
        """Run the ``WhenArmed`` job ``name`` at ``when`` (now, if that has passed). False when the
        scheduler is stopping or not started: the start-up sweep covers whatever was due."""
        job = self._jobs[name]
        if not isinstance(job.trigger, WhenArmed):
            raise ValueError(f"job {name!r} is not armed on demand")
        with self._lock:
            if self._stopping or not self._started:
                return False
            try:
                self._scheduler.add_job(
                    job.fn,
                    "date",
                    run_date=max(when, datetime.now(UTC)),
                    id=name,
                    replace_existing=True,
                    max_instances=job.trigger.overlap,
                    executor=job.pool.value,
                )
            except Exception:
                log.warning("could not arm %s for %s", name, when.isoformat())
                return False
        return True

    def run_now(self, *names: str) -> None:
        """Run the named jobs once, in order, on the calling thread (for tools, benchmarks and tests)."""
        for name in names:
            self._jobs[name].fn()

    def start(self) -> None:
        with self._lock:
            self._scheduler.start()
            self._started = True
            for job in self._jobs.values():
                self._schedule(job)

    def stop(self) -> None:
        # APScheduler's shutdown(wait=True) holds its job-store lock while it waits for running jobs,
        # and a running job that arms another (the sweep re-arming the timer) needs that lock. So
        # first make sure nothing will add a job again, then shut down.
        with self._lock:
            self._stopping = True
            started = self._started
        if started:
            # shutdown() marks the scheduler stopped without APScheduler's job-store lock; a pass over
            # due jobs still running then fails to remove a one-shot job it just ran, and the
            # scheduler thread dies with a traceback. Emptying the store first takes that lock, so it
            # waits for such a pass to end, and leaves the next one nothing to do.
            self._scheduler.remove_all_jobs()
            self._scheduler.shutdown(wait=True)

    def _schedule(self, job: _Job) -> None:
        options: dict[str, Any] = {"id": job.name, "executor": job.pool.value}
        match job.trigger:
            case Every(seconds=seconds):
                self._scheduler.add_job(job.fn, "interval", seconds=seconds, **options)
            case AtStart():
                self._scheduler.add_job(job.fn, "date", run_date=datetime.now(UTC), **options)
            case WhenArmed():
                pass  # scheduled by arm()


def _logged(name: str, fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("%s failed; it runs again at its next moment", name)

    run.__name__ = run.__qualname__ = name  # what APScheduler calls the job in its DEBUG lines
    return run
