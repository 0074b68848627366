"""The expiry engine's clockwork: one timer armed for the earliest due moment, plus a periodic sweep.

The timer gives sub-second lag; the periodic sweep is the safety net (a timer lost in a crash, a
grant added by another replica, a retry coming due). Both call the same sweep, whose claims are
exclusive, so a timer and the sweep, or two replicas, firing together do no harm.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from bot.services.revocation import RevocationService
from bot.services.timeouts import TimeoutService

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 2.0
TIMER_JOB = "expiry-timer"
SWEEP_JOB = "sweep"


class ExpiryScheduler:
    def __init__(
        self,
        *,
        revocation: RevocationService | None,
        timeouts: TimeoutService,
        interval: float = SWEEP_INTERVAL_SECONDS,
    ) -> None:
        self._revocation = revocation
        self._timeouts = timeouts
        self._interval = interval
        self._lock = threading.Lock()
        self._armed_for: datetime | None = None
        self._stopping = False
        # Never drop a run for being late: a late revocation is still owed (misfire_grace_time=None),
        # and several missed runs of the same job collapse into one (coalesce).
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def start(self) -> None:
        self._scheduler.start()
        # Reconcile first: grants that expired while no bot was running are revoked right away.
        self._scheduler.add_job(self.sweep, "date", run_date=datetime.now(UTC), id="startup-sweep")
        self._scheduler.add_job(self.sweep, "interval", seconds=self._interval, id=SWEEP_JOB)

    def stop(self) -> None:
        # APScheduler's shutdown(wait=True) holds its job-store lock while it waits for running jobs,
        # and a running sweep re-arms the timer through add_job, which needs that lock. So: first
        # make sure no sweep will add a job again, then shut down.
        with self._lock:
            self._stopping = True
        self._scheduler.shutdown(wait=True)

    def sweep(self) -> None:
        """Revoke what is due, expire stale requests, then arm the timer for the next due moment."""
        try:
            if self._revocation is not None:
                self._revocation.sweep()
            self._timeouts.run()
        except Exception:
            log.exception("sweep failed; the next one retries")
        if self._revocation is None:
            return
        try:
            upcoming = self._revocation.next_due()
        except Exception:
            log.exception("could not read the next expiry; the periodic sweep covers it")
            return
        with self._lock:
            self._armed_for = None
        if upcoming is not None:
            self.wake_at(upcoming)

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
                )
            except Exception:
                # Not running (yet or any more); the next start-up sweep covers what is due.
                log.warning("could not arm the expiry timer for %s", when.isoformat())

    def _timer_fired(self) -> None:
        with self._lock:
            self._armed_for = None
        self.sweep()
