"""Delivering the outbox to Slack: retried, paced per channel, in order per lane, once across replicas.

One pump thread claims lane heads that are due and hands each to a small pool of delivery threads;
the doorbell wakes it when a transaction queues something, a poll catches the rest (retries, other
replicas' rows). Network errors, 5xx and rate limits are retried with backoff, after Slack's
Retry-After when it gives one, and a rate-limited channel is held back as a whole. Only a
permanent refusal gives up, and then the sender acts on it: an approval card that cannot be posted
cancels its request (and the requester is told why), a pickup DM that cannot be delivered is an
alert.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session

from bot.domain.audit import AuditEventType
from bot.domain.policy import Policy
from bot.domain.status import RequestStatus
from bot.domain.text import one_line
from bot.services import lifecycle, notices
from bot.services.backlog import RevocationBacklog
from bot.services.notices import Notice
from bot.services.outbox import Announcer, Doorbell
from bot.services.ports import Delivered, DeliveryError, Notifier
from bot.services.snapshots import load_snapshot
from bot.services.workers import log_failure
from bot.store import break_glass as break_glass_store
from bot.store import digest as digest_store
from bot.store import outbox as outbox_store
from bot.store import requests as request_store
from bot.store.audit import append_event
from bot.store.crypto import TokenCipher
from bot.store.db import read_scope, session_scope
from bot.store.outbox import Claimed, OutboxStatus
from bot.store.transitions import BOT_ACTOR, cancel_request

log = logging.getLogger(__name__)

# The failure code of a request cancelled because its approval card could not be posted.
CARD_UNDELIVERABLE = "card_undeliverable"

# A message that keeps failing in ways we did not foresee (a bug while rendering it, say) is given
# up after this many tries rather than retried forever; it is logged with a reference each time.
MAX_UNEXPECTED_FAILURES = 5
PUMP_GATHER_SECONDS = 0.01


@dataclass(frozen=True)
class DeliveryPolicy:
    workers: int = 4
    # How long a claim lasts; renewed while a delivery runs, so only a dead worker loses it.
    lease: timedelta = timedelta(seconds=60)
    poll_interval: float = 1.0
    # Slack allows about one message per second per channel, with short bursts.
    channel_burst: int = 8
    channel_per_second: float = 1.0
    # Calls to one channel at once. One at Slack's pace, so that a 429 holds the channel before anything
    # else is sent to it; more only where the channel may take far more than Slack allows (a stand-in).
    channel_in_flight: int = 1
    first_retry: float = 1.0
    max_retry: float = 60.0
    keep_delivered: timedelta = timedelta(days=1)

    @classmethod
    def for_rate(cls, per_second: float) -> DeliveryPolicy:
        """Pacing of ``per_second`` messages per channel, with bursts of a couple of seconds' worth."""
        fast = per_second > 10  # only a stand-in (or a proxy in front of Slack) takes this pace
        return cls(
            channel_per_second=per_second,
            channel_burst=max(8, math.ceil(2 * per_second)),
            channel_in_flight=4 if fast else 1,
            workers=8 if fast else 4,
        )


class _Bucket:
    """A token bucket per channel: ``burst`` messages at once, then ``rate`` per second."""

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._at = now
        self.held_until = 0.0  # Slack said "Retry-After": nothing goes to this channel before

    def _refill(self, now: float) -> None:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now

    def ready_at(self, now: float) -> float:
        self._refill(now)
        wait = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._rate
        return max(now + wait, self.held_until)

    def take(self, now: float) -> bool:
        if self.ready_at(now) > now:
            return False
        self._tokens -= 1
        return True


class Dispatcher:
    def __init__(
        self,
        *,
        engine: Engine,
        policy: Policy,
        notifier: Notifier,
        announcer: Announcer,
        doorbell: Doorbell,
        clock: Callable[[], datetime],
        cipher: TokenCipher | None = None,
        settings: DeliveryPolicy | None = None,
        backlog: RevocationBacklog | None = None,
    ) -> None:
        self._engine = engine
        self._backlog = backlog
        self._policy = policy
        self._notifier = notifier
        self._announcer = announcer
        self._doorbell = doorbell
        self._clock = clock
        self._cipher = cipher
        self._settings = settings or DeliveryPolicy()
        self._claim_id = secrets.token_hex(16)
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._in_flight: dict[int, tuple[str, float]] = {}  # message id -> (channel, monotonic start)
        self._stopping = threading.Event()
        self._pump: threading.Thread | None = None
        self._workers: ThreadPoolExecutor | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._workers = ThreadPoolExecutor(max_workers=self._settings.workers, thread_name_prefix="jit-deliver")
        self._pump = threading.Thread(target=self._run, name="jit-outbox", daemon=True)
        self._pump.start()

    def stop(self) -> None:
        """Stop claiming; deliveries under way finish. What is left stays in the outbox for the next start."""
        self._stopping.set()
        self._doorbell.ring()
        if self._pump is not None:
            self._pump.join(timeout=30)
        if self._workers is not None:
            self._workers.shutdown(wait=True)

    def _run(self) -> None:
        last_renewal = last_round = time.monotonic()
        while not self._stopping.is_set():
            # Commits and finished deliveries ring in bursts; rounds a few milliseconds apart serve a
            # burst together, instead of one round (a query, a claim) for each ring.
            time.sleep(max(0.0, last_round + PUMP_GATHER_SECONDS - time.monotonic()))
            last_round = time.monotonic()
            try:
                self.pump()
                if time.monotonic() - last_renewal > self._settings.lease.total_seconds() / 3:
                    self._renew_leases()
                    last_renewal = time.monotonic()
            except Exception:
                log_failure(log, "the outbox pump failed; it tries again in a moment")
            self._doorbell.wait(self._settings.poll_interval)

    # --- claiming ------------------------------------------------------------------------------

    def pump(self) -> int:
        """Claim what can be sent now and start sending it. Returns how many were started.

        At Slack's pace one message per channel is in flight (so a 429 holds the channel before
        anything else goes to it), and only what the channel's pace allows now is claimed, so nothing
        claimed has to be put back. The search for candidates is a read; the write lock is taken only
        to claim.
        """
        workers = self._workers
        if workers is None:
            raise RuntimeError("the dispatcher is not started")
        with self._lock:
            # Revocations waiting for a worker come first: one message at a time until they catch up.
            allowed = 1 if self._backlog is not None and self._backlog.behind() else self._settings.workers
            free = allowed - len(self._in_flight)
            now_mono = time.monotonic()
            calls = Counter(channel for channel, _ in self._in_flight.values())
            full = {channel for channel, n in calls.items() if n >= self._settings.channel_in_flight}
            skip = full | {ch for ch, bucket in self._buckets.items() if bucket.ready_at(now_mono) > now_mono}
        if free <= 0:
            return 0
        now = self._clock()
        with read_scope(self._engine) as session:
            found = outbox_store.candidates(
                session=session, now=now, skip_channels=skip, limit=free, per_channel=self._settings.channel_in_flight
            )
        chosen: list[int] = []
        with self._lock:
            for candidate in found:
                if len(chosen) >= free:
                    break
                if calls[candidate.channel] >= self._settings.channel_in_flight:
                    continue
                if candidate.channel in skip or not self._bucket(candidate.channel).take(time.monotonic()):
                    continue
                calls[candidate.channel] += 1
                chosen.append(candidate.id)
        if not chosen:
            return 0
        with session_scope(self._engine) as session:
            claimed = outbox_store.claim(
                session=session, ids=chosen, now=now, claim_id=self._claim_id, lease_until=now + self._settings.lease
            )
        started = 0
        for message in claimed:
            with self._lock:
                self._in_flight[message.id] = (message.channel, time.monotonic())
            future = workers.submit(self.deliver, message)
            future.add_done_callback(functools.partial(self._done, message.id))
            started += 1
        return started

    def _bucket(self, channel: str) -> _Bucket:
        bucket = self._buckets.get(channel)
        if bucket is None:
            s = self._settings
            bucket = self._buckets[channel] = _Bucket(s.channel_burst, s.channel_per_second, time.monotonic())
        return bucket

    def _done(self, message_id: int, future: Future[None]) -> None:
        with self._lock:
            self._in_flight.pop(message_id, None)
        if future.exception() is not None:
            log_failure(log, f"delivery of outbox message {message_id} failed", future.exception())
        self._doorbell.ring()

    def _renew_leases(self) -> None:
        with self._lock:
            ids = list(self._in_flight)
        if not ids:
            return
        with session_scope(self._engine) as session:
            outbox_store.renew(
                session=session, claim_id=self._claim_id, ids=ids, lease_until=self._clock() + self._settings.lease
            )
        for message_id, (_, started) in self._in_flight_items():
            waited = time.monotonic() - started
            if waited > 30:
                log.warning("delivery of outbox message %s has been waiting on Slack for %.0f s", message_id, waited)

    def _in_flight_items(self) -> list[tuple[int, tuple[str, float]]]:
        with self._lock:
            return list(self._in_flight.items())

    # --- delivering ----------------------------------------------------------------------------

    def deliver(self, message: Claimed) -> None:
        """One attempt at one claimed message; its outcome is always recorded."""
        try:
            notice = notices.notice_codec().validate_python(message.payload)
        except ValidationError:
            log_failure(log, f"outbox message {message.id} cannot be read; it is dropped")
            self._finish(message, OutboxStatus.DROPPED, error="unreadable payload")
            return
        if isinstance(notice, notices.CardChanged):
            prepared = self._current_card(message, notice)
            if prepared is None:
                return
            notice = prepared
        if isinstance(notice, notices.ApprovalReminder):
            reminder = self._current_reminder(message, notice)
            if reminder is None:
                return
            notice = reminder
        if isinstance(notice, notices.BreakGlassAcknowledged):
            # The alerts it redraws are ahead of it in the lane, so their coordinates are stored by now.
            with read_scope(self._engine) as session:
                alert = break_glass_store.get_alert(session=session, request_id=notice.request.id)
                where = (alert.channel, alert.first_ts, alert.last_ts) if alert is not None else (None, None, None)
            stamps = tuple(dict.fromkeys(ts for ts in where[1:] if ts))
            notice = replace(notice, channel=where[0], ts=stamps if where[0] else ())
        if isinstance(notice, notices.DigestChart):
            # Its text is ahead of it in the lane, so it was sent (or given up) before this runs.
            with read_scope(self._engine) as session:
                posted = digest_store.posted_at(session=session, day=notice.day)
            notice = replace(notice, thread_ts=posted[1] if posted else None)
        try:
            secret = self._cipher.decrypt(message.secret) if message.secret is not None and self._cipher else None
            delivered = self._notifier.deliver(notice, secret=secret)
        except DeliveryError as exc:
            if exc.permanent:
                self._gave_up(message, notice, exc.code)
            else:
                self._retry_later(message, exc)
            return
        except Exception:
            ref = log_failure(log, f"unexpected error delivering outbox message {message.id} ({message.kind})")
            if message.attempts + 1 >= MAX_UNEXPECTED_FAILURES:
                self._gave_up(message, notice, f"internal_error (ref {ref})")
            else:
                self._put_back(message, seconds=self._backoff(message.attempts), error=f"internal_error (ref {ref})")
            return
        self._sent(message, notice, delivered)

    def _current_card(self, message: Claimed, notice: notices.CardChanged) -> notices.CardChanged | None:
        """The card's coordinates as stored now; None when this update is out of date or has no card."""
        # One read for both questions: this runs for every card update.
        with read_scope(self._engine) as session:
            newer = outbox_store.newer_in_lane(
                session=session, lane=message.lane, after_id=message.id, kind=message.kind
            )
            request = None if newer else request_store.get_request(session=session, request_id=notice.request.id)
            coordinates = (request.card_channel, request.card_ts) if request is not None else (None, None)
        if newer:
            self._finish(message, OutboxStatus.SUPERSEDED)
            return None
        channel, ts = coordinates
        if channel is None or ts is None:
            self._finish(message, OutboxStatus.DROPPED, error="the card was never posted")
            return None
        return notices.CardChanged(replace(notice.request, card_channel=channel, card_ts=ts))

    def _current_reminder(self, message: Claimed, notice: notices.ApprovalReminder) -> notices.ApprovalReminder | None:
        """The reminder with its card's coordinates as stored now; None (dropped) once the request is
        decided, however late Slack let it through: nobody is asked to decide what is decided."""
        with read_scope(self._engine) as session:
            request = request_store.get_request(session=session, request_id=notice.request.id)
            state = (request.status, request.card_channel, request.card_ts) if request is not None else None
        if state is None or state[0] != RequestStatus.PENDING.value:
            self._finish(message, OutboxStatus.DROPPED, error="the request was decided before the reminder was sent")
            return None
        _, channel, ts = state
        if channel is None or ts is None:
            self._finish(message, OutboxStatus.DROPPED, error="the card was never posted")
            return None
        return replace(notice, request=replace(notice.request, card_channel=channel, card_ts=ts))

    def _backoff(self, attempts: int) -> float:
        delay: float = self._settings.first_retry * 2.0 ** max(attempts, 0)
        return min(delay, self._settings.max_retry)

    def _retry_later(self, message: Claimed, exc: DeliveryError) -> None:
        wait = max(self._backoff(message.attempts), exc.retry_after or 0.0)
        if exc.retry_after is not None:
            with self._lock:
                bucket = self._bucket(message.channel)
                bucket.held_until = max(bucket.held_until, time.monotonic() + exc.retry_after)
        level = logging.WARNING if message.attempts < 5 else logging.ERROR
        log.log(
            level,
            "Slack did not take outbox message %s (%s to %s, attempt %d): %s; retrying in %.1f s",
            message.id,
            message.kind,
            message.channel,
            message.attempts + 1,
            exc.code,
            wait,
        )
        self._put_back(message, seconds=wait, error=exc.code)

    def _put_back(self, message: Claimed, *, seconds: float, error: str, count_attempt: bool = True) -> None:
        with session_scope(self._engine) as session:
            outbox_store.retry(
                session=session,
                message_id=message.id,
                claim_id=self._claim_id,
                at=self._clock() + timedelta(seconds=seconds),
                error=error,
                count_attempt=count_attempt,
            )

    def _finish(self, message: Claimed, status: OutboxStatus, *, error: str | None = None) -> None:
        with session_scope(self._engine) as session:
            outbox_store.finish(
                session=session,
                message_id=message.id,
                claim_id=self._claim_id,
                status=status,
                now=self._clock(),
                error=error,
            )

    def _sent(self, message: Claimed, notice: Notice, delivered: Delivered) -> None:
        now = self._clock()
        with session_scope(self._engine) as session:
            if not outbox_store.finish(
                session=session, message_id=message.id, claim_id=self._claim_id, status=OutboxStatus.SENT, now=now
            ):
                log.warning("outbox message %s was delivered after its claim moved on", message.id)
                return
            if isinstance(notice, notices.DigestPost) and delivered.channel and delivered.ts:
                digest_store.set_posted(session=session, day=notice.day, channel=delivered.channel, ts=delivered.ts)
            if isinstance(notice, notices.BreakGlassAlerted) and delivered.channel and delivered.ts:
                break_glass_store.set_posted(
                    session=session, request_id=notice.request.id, channel=delivered.channel, ts=delivered.ts
                )
            if isinstance(notice, notices.ApprovalCard) and delivered.channel and delivered.ts:
                request_store.set_card(
                    session=session, request_id=notice.request.id, channel=delivered.channel, ts=delivered.ts
                )
                append_event(
                    session=session,
                    at=now,
                    event_type=AuditEventType.CARD_POSTED.value,
                    actor=BOT_ACTOR,
                    request_id=notice.request.id,
                    details={"channel": delivered.channel, "ts": delivered.ts},
                )

    def _gave_up(self, message: Claimed, notice: Notice, code: str) -> None:
        """Slack will never take this message; whoever it was for must hear of it another way."""
        now = self._clock()
        code = one_line(code, 120)
        with session_scope(self._engine) as session:
            if not outbox_store.finish(
                session=session,
                message_id=message.id,
                claim_id=self._claim_id,
                status=OutboxStatus.FAILED,
                now=now,
                error=code,
            ):
                return
            match notice:
                case notices.ApprovalCard(request=request):
                    self._cancel_unposted(session, request.id, request.requester, request.approver_channel, code, now)
                case notices.PickupLink(request=request) | notices.RequesterTold(request=request):
                    what = "pickup link DM" if isinstance(notice, notices.PickupLink) else f"{request.status} DM"
                    append_event(
                        session=session,
                        at=now,
                        event_type=AuditEventType.DELIVERY_FAILED.value,
                        actor=BOT_ACTOR,
                        request_id=request.id,
                        details={"what": what, "slack_error": code},
                    )
                    if isinstance(notice, notices.PickupLink):
                        self._announcer.alert(
                            session,
                            notices.AlertKind.PICKUP_UNDELIVERABLE,
                            request.id,
                            requester=request.requester,
                            slack_error=code,
                        )
                case notices.CardChanged(request=request):
                    log.warning("the card of %s could not be updated: %s", request.id, code)
                case notices.ApprovalReminder(request=request):
                    log.warning("a reminder for %s could not be posted: %s", request.id, code)
                case notices.AuditSummary(request=request) | notices.EndSummary(request=request):
                    log.warning("audit summary for %s could not be posted: %s", request.id, code)
                case notices.DigestPost(day=day, channel=channel):
                    # The leads would otherwise just miss a day: they hear of it where alerts go, and
                    # /jit digest still shows that day's digest.
                    log.error("the digest of %s could not be posted to %s: %s", day, channel, code)
                    self._announcer.alert(
                        session,
                        notices.AlertKind.DIGEST_UNDELIVERABLE,
                        None,
                        day=day,
                        channel=channel,
                        slack_error=code,
                    )
                case notices.DigestChart(day=day):
                    log.warning("the chart of the digest of %s could not be uploaded: %s", day, code)
                case notices.BreakGlassAlerted(request=request) | notices.BreakGlassAcknowledged(request=request):
                    log.error("the break-glass alert of %s could not be posted (%s)", request.id, code)
                case notices.Alert():
                    log.error(
                        "ALERT could not be posted to the audit channel (%s): %s %s", code, notice.alert, notice.facts
                    )
        log.warning("gave up on outbox message %s (%s to %s): %s", message.id, message.kind, message.channel, code)

    def _cancel_unposted(
        self, session: Session, request_id: str, requester: str, channel: str, code: str, now: datetime
    ) -> None:
        won = cancel_request(
            session=session,
            request_id=request_id,
            actor=BOT_ACTOR,
            now=now,
            details={
                "cause": "approval card could not be posted",
                "slack_error": code,
                "requester": requester,
                "channel": channel,
            },
            failure_code=CARD_UNDELIVERABLE,
            failure_detail=code,
        )
        if won:
            view = load_snapshot(session, request_id, policy=self._policy)
            self._announcer.requester(session, view)
            self._announcer.audit_line(session, view)
            lifecycle.note(
                session, lifecycle.Step.CANCELLED, view, cause="approval card could not be posted", slack_error=code
            )

    # --- housekeeping --------------------------------------------------------------------------

    def purge(self) -> int:
        with session_scope(self._engine) as session:
            return outbox_store.purge(session=session, before=self._clock() - self._settings.keep_delivered)
