"""The expiry engine's clockwork: one timer armed for the earliest due moment, and a periodic sweep.

The timer gives sub-second lag; the periodic sweep is the safety net (a timer lost in a crash, a
grant added by another replica, a retry coming due). Both call the same sweep, whose claims are
exclusive, so a timer and the sweep, or two replicas, firing together do no harm.

The sweep does nothing but claim due grants and re-arm the timer; the revocations themselves run on
the revocation workers. Its jobs run on the scheduler's expiry pool, apart from the housekeeping.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from bot.jobs.scheduler import AtStart, Every, JobScheduler, Pool, WhenArmed
from bot.services.revocation import RevocationService

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 2.0
TIMER_JOB = "expiry-timer"
SWEEP_JOB = "sweep"
STARTUP_SWEEP_JOB = "startup-sweep"


class ExpiryTimer:
    """``wake_at(when)``: make sure a sweep runs at ``when``. Built before the use cases, which are
    handed ``wake_at`` in their constructors (a new grant's expiry, a retry, an early revocation)."""

    def __init__(self, jobs: JobScheduler) -> None:
        self._jobs = jobs
        self._lock = threading.Lock()
        self._armed_for: datetime | None = None

    def wake_at(self, when: datetime) -> None:
        with self._lock:
            if self._armed_for is not None and self._armed_for <= when:
                return
            if self._jobs.arm(TIMER_JOB, when):
                self._armed_for = when

    def fired(self) -> None:
        with self._lock:
            self._armed_for = None


class ExpirySweep:
    def __init__(self, *, revocation: RevocationService, timer: ExpiryTimer) -> None:
        self._revocation = revocation
        self._timer = timer

    def register(self, jobs: JobScheduler, *, interval: float = SWEEP_INTERVAL_SECONDS) -> None:
        # Reconcile first: grants that expired while no bot was running are revoked right away.
        jobs.add(STARTUP_SWEEP_JOB, AtStart(), self.run, pool=Pool.EXPIRY)
        jobs.add(SWEEP_JOB, Every(interval), self.run, pool=Pool.EXPIRY)
        # The timer re-arms itself from inside its own run when the next expiry is already due;
        # with one run at a time APScheduler would skip that run and the wake-up would wait for the
        # periodic sweep. Claims are exclusive, so overlap is safe.
        jobs.add(TIMER_JOB, WhenArmed(overlap=4), self.timer_fired, pool=Pool.EXPIRY)

    def timer_fired(self) -> None:
        self._timer.fired()
        self.run()

    def run(self) -> None:
        """Claim what is due, then arm the timer for the next due moment. Nothing else."""
        try:
            self._revocation.sweep()
        except Exception:
            log.exception("sweep failed; the next one retries")
        # Forget the armed moment before reading the next one: a wake asked for meanwhile (a new grant
        # expiring sooner) then stands, instead of being replaced by the later moment read here.
        self._timer.fired()
        try:
            upcoming = self._revocation.next_due()
        except Exception:
            log.exception("could not read the next expiry; the periodic sweep covers it")
            return
        if upcoming is None:
            return
        if upcoming <= datetime.now(UTC) and not self._revocation.has_idle_worker():
            return  # due work waits for a worker; the first one to finish wakes the sweep
        self._timer.wake_at(upcoming)
