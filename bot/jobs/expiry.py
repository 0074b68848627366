"""The expiry engine's clockwork: one timer armed for the earliest due moment, a periodic sweep, and
the housekeeping jobs beside them.

The timer gives sub-second lag; the periodic sweep is the safety net (a timer lost in a crash, a
grant added by another replica, a retry coming due). Both call the same sweep, whose claims are
exclusive, so a timer and the sweep, or two replicas, firing together do no harm.

The sweep is kept apart from everything else: it runs on an executor of its own, does nothing but
claim due grants and re-arm the timer, and hands the revocations to the revocation workers. The
housekeeping (request timeouts, interrupted mints, the watchdog, old outbox rows) runs on the other
executor, so nothing it waits on can delay a revocation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from bot.services.alarm import Alarm
from bot.services.revocation import RevocationService

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 2.0
HOUSEKEEPING_INTERVAL_SECONDS = 2.0
TIMER_JOB = "expiry-timer"
SWEEP_JOB = "sweep"
SWEEP_EXECUTOR = "sweep"


class ExpiryScheduler:
    def __init__(
        self,
        *,
        revocation: RevocationService | None,
        alarm: Alarm,
        housekeeping: list[tuple[str, Callable[[], object]]],
        interval: float = SWEEP_INTERVAL_SECONDS,
        housekeeping_interval: float = HOUSEKEEPING_INTERVAL_SECONDS,
    ) -> None:
        self._revocation = revocation
        self._housekeeping = housekeeping
        self._interval = interval
        self._housekeeping_interval = housekeeping_interval
        self._lock = threading.Lock()
        self._armed_for: datetime | None = None
        self._stopping = False
        # Never drop a run for being late: a late revocation is still owed (misfire_grace_time=None),
        # and several missed runs of the same job collapse into one (coalesce).
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(4), SWEEP_EXECUTOR: ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        alarm.bind(self.wake_at)

    def start(self) -> None:
        self._scheduler.start()
        # Reconcile first: grants that expired while no bot was running are revoked right away.
        self._scheduler.add_job(
            self.sweep, "date", run_date=datetime.now(UTC), id="startup-sweep", executor=SWEEP_EXECUTOR
        )
        self._scheduler.add_job(self.sweep, "interval", seconds=self._interval, id=SWEEP_JOB, executor=SWEEP_EXECUTOR)
        for name, job in self._housekeeping:
            self._scheduler.add_job(
                _logged(name, job), "interval", seconds=self._housekeeping_interval, id=name, executor="default"
            )

    def stop(self) -> None:
        # APScheduler's shutdown(wait=True) holds its job-store lock while it waits for running jobs,
        # and a running sweep re-arms the timer through add_job, which needs that lock. So: first
        # make sure no sweep will add a job again, then shut down.
        with self._lock:
            self._stopping = True
        self._scheduler.shutdown(wait=True)

    def sweep(self) -> None:
        """Claim what is due, then arm the timer for the next due moment. Nothing else."""
        if self._revocation is None:
            return
        try:
            self._revocation.sweep()
        except Exception:
            log.exception("sweep failed; the next one retries")
        try:
            upcoming = self._revocation.next_due()
        except Exception:
            log.exception("could not read the next expiry; the periodic sweep covers it")
            return
        with self._lock:
            self._armed_for = None
        if upcoming is None:
            return
        if upcoming <= datetime.now(UTC) and not self._revocation.has_idle_worker():
            return  # due work waits for a worker; the first one to finish wakes the sweep
        self.wake_at(upcoming)

    def run_housekeeping(self) -> None:
        """Every housekeeping job once, in order (what the periodic jobs do; for tools and tests)."""
        for name, job in self._housekeeping:
            _logged(name, job)()

    def wake_at(self, when: datetime) -> None:
        """Make sure a sweep runs at ``when`` (a new grant's expiry, a retry, an early revocation)."""
        with self._lock:
            if self._stopping or (self._armed_for is not None and self._armed_for <= when):
                return
            self._armed_for = when
            run_date = max(when, datetime.now(UTC))
            try:
                # The timer re-arms itself from inside its own run when the next expiry is already
                # due; with the default max_instances=1 APScheduler would skip that run and the
                # wake-up would wait for the periodic sweep. Claims are exclusive, so overlap is safe.
                self._scheduler.add_job(
                    self._timer_fired,
                    "date",
                    run_date=run_date,
                    id=TIMER_JOB,
                    replace_existing=True,
                    max_instances=4,
                    executor=SWEEP_EXECUTOR,
                )
            except Exception:
                # Not running (yet or any more); the next start-up sweep covers what is due.
                log.warning("could not arm the expiry timer for %s", when.isoformat())

    def _timer_fired(self) -> None:
        with self._lock:
            self._armed_for = None
        self.sweep()


def _logged(name: str, job: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            job()
        except Exception:
            log.exception("%s failed; it runs again shortly", name)

    run.__name__ = name
    return run
