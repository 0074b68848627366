"""The composition root: builds every part from Settings and a Policy, for the CLI and for tests.

It reads top to bottom: the store and the scheduler, the Slack side, the IdP side (when configured),
the use cases, the jobs, the edges. Every part gets its collaborators in its constructor.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from fastapi import FastAPI
from pydantic import SecretStr
from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import Engine

from bot.config import ConfigError, Settings, key_bytes
from bot.domain.policy import Policy
from bot.files import beside_database, load_or_create_key
from bot.idp.client import IdPClient, IdPConfig
from bot.idp.discovery import discovery_problem
from bot.idp.errors import IdPError
from bot.idp.keys import SigningKey, jwks, load_or_create_signing_key, load_signing_key
from bot.jobs.expiry import SWEEP_INTERVAL_SECONDS, ExpirySweep, ExpiryTimer
from bot.jobs.scheduler import AtStart, Every, JobScheduler
from bot.redact import redact_url
from bot.rego.engine import RegoEngine, RegoEngineError, engine_for
from bot.services.backlog import RevocationBacklog
from bot.services.breakglass import REALERT_CHECK_SECONDS, BreakGlassService
from bot.services.context import ContextService
from bot.services.delivery import DeliveryPolicy, Dispatcher
from bot.services.digests import DigestService
from bot.services.early import EarlyEndService
from bot.services.expiry_notices import ExpiryNoticeService
from bot.services.extensions import ExtensionService
from bot.services.forwarding import AuditForwarder, ForwardingPolicy
from bot.services.listing import ListingService
from bot.services.minting import MintQueue, MintService, RetryPolicy
from bot.services.outbox import Announcer, Doorbell
from bot.services.pickup import PickupService
from bot.services.reminders import REMINDERS_INTERVAL_SECONDS, REMINDERS_JOB, ReminderService
from bot.services.requests import RequestService
from bot.services.revocation import RevocationService, RevocationTiming
from bot.services.timeouts import TimeoutService
from bot.services.voting import VotingService
from bot.slack.adapters import SlackDirectory, SlackNotifier
from bot.slack.app import build_bolt_app
from bot.slack.guard import Workspace
from bot.slack.listeners import Listeners
from bot.slack.web_client import SLACK_CALL_FAILURES, DeadlineWebClient, slack_call_problem
from bot.store.audit import bind_audit_forwarding, bind_audit_key
from bot.store.crypto import TokenCipher
from bot.store.db import health, make_engine
from bot.store.types import utcnow
from bot.web.app import create_web_app
from bot.web.slack_edge import SlackEdge

log = logging.getLogger(__name__)

# Lazy listeners do the slow part of each Slack interaction (database, Slack Web API) on these.
# Few on purpose: SQLite takes one writer at a time anyway, and every extra thread competes with the
# event loop for the interpreter lock, which is what Slack's 3-second acknowledgement waits on.
LISTENER_THREADS = 4
# Revocations in flight at once; each is two short IdP calls and a few database writes.
REVOCATION_THREADS = 8
MINT_THREADS = 4
AUDIT_KEY_FILE = "jit-audit-key"
HOUSEKEEPING_INTERVAL_SECONDS = 2.0
REQUEST_TIMEOUTS_JOB = "request-timeouts"
REVOCATION_WATCHDOG_JOB = "revocation-watchdog"
OUTBOX_PURGE_JOB = "outbox-purge"
AUDIT_FORWARD_PURGE_JOB = "audit-forward-purge"
HOUSEKEEPING_JOBS = (REQUEST_TIMEOUTS_JOB, REVOCATION_WATCHDOG_JOB, OUTBOX_PURGE_JOB, AUDIT_FORWARD_PURGE_JOB)
# The daily digest: looked for at start (a bot that was down at digest time posts it then) and every
# minute after, so it goes out within a minute of digest.time; the day's lease makes it once.
DIGEST_JOB = "digest-post"
DIGEST_AT_START_JOB = "digest-post-at-start"
DIGEST_CHECK_SECONDS = 60.0
# The expiry notice: a grant's notice goes out within this of its moment (each run is one guarded UPDATE).
EXPIRY_NOTICES_JOB = "expiry-notices"
EXPIRY_NOTICE_CHECK_SECONDS = 5.0
# Access that ends when its reason does: the requester's usergroups are read this often (one call per
# usergroup per run), so someone who leaves loses the access within a minute.
CONTEXT_ENDS_JOB = "context-ends"
CONTEXT_CHECK_SECONDS = 30.0
# Unacknowledged break-glass alerts, posted again every REALERT_INTERVAL (one replica each time).
BREAK_GLASS_REALERT_JOB = "break-glass-realert"


def _signing_secret(settings: Settings) -> str:
    """The secret that Slack's HTTP requests are verified with. Socket Mode serves no /slack/events and
    needs none; it gets a random one nobody knows, so nothing could ever verify against an empty key."""
    if settings.slack_signing_secret is not None:
        return settings.slack_signing_secret.get_secret_value()
    return secrets.token_hex(32)


@dataclass
class IdPSide:
    """Everything that exists only when an IdP is configured."""

    idp: IdPClient
    signing_key: SigningKey
    cipher: TokenCipher
    minting: MintService
    mint_queue: MintQueue
    mint_workers: ThreadPoolExecutor
    pickup: PickupService
    revocation: RevocationService
    revocation_workers: ThreadPoolExecutor


@dataclass
class Runtime:
    settings: Settings
    policy: Policy
    engine: Engine
    client: WebClient
    workspace: Workspace
    bolt_app: App
    web_app: FastAPI
    executor: ThreadPoolExecutor
    requests: RequestService
    voting: VotingService
    dispatcher: Dispatcher
    backlog: RevocationBacklog
    jobs: JobScheduler
    sweep: ExpirySweep | None
    idp_side: IdPSide | None
    digests: DigestService
    rego: RegoEngine | None = None
    breakglass: BreakGlassService | None = None
    # Only with JIT_AUDIT_WEBHOOK_URL.
    forwarder: AuditForwarder | None = None

    @property
    def minting(self) -> MintService | None:
        return self.idp_side.minting if self.idp_side else None

    @property
    def revocation(self) -> RevocationService | None:
        return self.idp_side.revocation if self.idp_side else None

    @property
    def signing_key(self) -> SigningKey | None:
        return self.idp_side.signing_key if self.idp_side else None

    def connect_slack(self) -> dict[str, object]:
        """auth.test: proves the bot token and learns which workspace's requests to accept."""
        try:
            identity = self.client.auth_test()
        except SlackApiError as exc:
            raise ConfigError([f"SLACK_BOT_TOKEN was refused by Slack: {exc.response.get('error')}"]) from None
        except SLACK_CALL_FAILURES as exc:
            # Unreachable, or no answer within SLACK_CALL_DEADLINE: one line, not the SDK's traceback.
            where = redact_url(self.settings.slack_api_url)
            deadline = self.settings.slack_call_deadline
            problem = slack_call_problem(exc, "auth.test", where, deadline, limit="SLACK_CALL_DEADLINE")
            raise ConfigError([problem]) from None
        self.workspace.learn(str(identity["team_id"]))
        return dict(identity.data) if isinstance(identity.data, dict) else {}

    def connect_idp(self) -> None:
        """Load the IdP's discovery document once: an IdP that cannot be reached, or that is not the
        issuer OIDC_ISSUER names, is found at start rather than at the first approval."""
        if self.idp_side is None:
            return
        issuer = self.idp_side.idp.issuer
        try:
            self.idp_side.idp.metadata()
        except IdPError as exc:
            url = redact_url(f"{issuer}/.well-known/openid-configuration")
            problem = discovery_problem(exc, url, self.idp_side.idp.timeout)
            raise ConfigError([f"the IdP's discovery document did not load: {problem}"]) from None

    def start_background(self) -> None:
        """Start delivering the outbox and the jobs (the expiry engine's first act is a reconciling sweep)."""
        self.dispatcher.start()
        if self.forwarder is not None:
            self.forwarder.start()
        self.jobs.start()

    def run_housekeeping(self) -> None:
        """Every housekeeping job once, in order (what the scheduler does every few seconds; for tools and tests)."""
        self.jobs.run_now(*(name for name in self.jobs.names if name in HOUSEKEEPING_JOBS))

    def close(self) -> None:
        # Stop new sweeps, finish work already acked to Slack or claimed, then let go of the database.
        self.jobs.stop()
        self.executor.shutdown(wait=True)
        if self.idp_side is not None:
            self.idp_side.mint_workers.shutdown(wait=True)
            self.idp_side.revocation_workers.shutdown(wait=True)
        self.dispatcher.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.rego is not None:
            self.rego.close()
        self.engine.dispose()


def build_runtime(
    settings: Settings,
    policy: Policy,
    *,
    engine: Engine | None = None,
    clock: Callable[[], datetime] = utcnow,
    mint_retry: RetryPolicy | None = None,
    sweep_interval: float = SWEEP_INTERVAL_SECONDS,
    delivery: DeliveryPolicy | None = None,
    revocation_timing: RevocationTiming | None = None,
    forwarding: ForwardingPolicy | None = None,
) -> Runtime:
    # The store: every transaction appends to the audit chain with the key bound here.
    engine = bind_audit_key(
        engine or make_engine(settings.jit_database_url),
        audit_key_for(settings.jit_database_url, settings.jit_audit_key),
    )
    if settings.jit_audit_webhook_url is not None:
        # ... and queues each event it appends for the audit webhook, in the same transaction.
        engine = bind_audit_forwarding(engine)
    # The scheduler comes first because use cases arm the expiry timer; jobs are registered below.
    jobs = JobScheduler()
    timer = ExpiryTimer(jobs)

    # The Slack side. The SDK's own retries are off: the outbox retries, and knows what was sent.
    # Every call ends within SLACK_CALL_DEADLINE, however slowly Slack answers.
    client = DeadlineWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=int(settings.slack_call_deadline),
        total_timeout=settings.slack_call_deadline,
        retry_handlers=[],
    )
    directory = SlackDirectory(client)
    workspace = Workspace()
    doorbell = Doorbell()
    cipher = (
        TokenCipher(settings.jit_encryption_key.get_secret_value()) if settings.jit_encryption_key is not None else None
    )
    announcer = Announcer(policy=policy, clock=clock, doorbell=doorbell, cipher=cipher)
    # Raised by the revocation engine while grants wait for a worker; the outbox yields to it.
    backlog = RevocationBacklog()
    dispatcher = Dispatcher(
        engine=engine,
        policy=policy,
        notifier=SlackNotifier(client, audit_channel=policy.channels.audit, security_leads=policy.security_leads),
        announcer=announcer,
        doorbell=doorbell,
        clock=clock,
        cipher=cipher,
        settings=delivery or DeliveryPolicy.for_rate(settings.slack_channel_rate),
        backlog=backlog,
    )

    # Without an IdP there is no expiry engine to wake (a grant left from an earlier run waits for one).
    wake = timer.wake_at if settings.idp_configured else _nothing_to_wake

    # The IdP side, when one is configured.
    idp_side = (
        _idp_side(
            settings,
            policy,
            engine=engine,
            announcer=announcer,
            wake=wake,
            backlog=backlog,
            clock=clock,
            retry=mint_retry,
            timing=revocation_timing,
        )
        if settings.idp_configured
        else None
    )
    submit_mint = idp_side.mint_queue.submit if idp_side is not None else None

    # The policy's Rego rules run in a worker process of their own (bot.rego.engine says why).
    try:
        rego = engine_for(policy, timeout=settings.jit_rego_timeout)
    except RegoEngineError as exc:
        raise ConfigError([str(exc)]) from None

    # The use cases.
    requests = RequestService(
        engine=engine,
        policy=policy,
        directory=directory,
        announcer=announcer,
        clock=clock,
        on_approved=submit_mint,
        rego=rego,
    )
    voting = VotingService(
        engine=engine, policy=policy, directory=directory, announcer=announcer, clock=clock, on_approved=submit_mint
    )
    early = EarlyEndService(
        engine=engine, policy=policy, directory=directory, announcer=announcer, clock=clock, wake=wake
    )
    listing = ListingService(engine=engine, policy=policy, clock=clock)
    timeouts = TimeoutService(engine=engine, policy=policy, announcer=announcer, clock=clock, submit_mint=submit_mint)
    digests = DigestService(engine=engine, policy=policy, directory=directory, announcer=announcer, clock=clock)
    expiry_notices = ExpiryNoticeService(engine=engine, policy=policy, announcer=announcer, clock=clock)
    context = ContextService(
        engine=engine, policy=policy, directory=directory, announcer=announcer, early=early, clock=clock
    )
    breakglass = BreakGlassService(
        engine=engine,
        policy=policy,
        directory=directory,
        announcer=announcer,
        clock=clock,
        # Asked of Slack at each use, uncached, as an approver's click is: break-glass has no approval to
        # stand between someone just taken off an allowed usergroup and the access.
        members_of=directory.usergroup_members,
        on_approved=submit_mint,
    )

    # The jobs.
    sweep = None
    if idp_side is not None:
        sweep = ExpirySweep(revocation=idp_side.revocation, timer=timer)
        sweep.register(jobs, interval=sweep_interval)
    jobs.add(REQUEST_TIMEOUTS_JOB, Every(HOUSEKEEPING_INTERVAL_SECONDS), timeouts.run)
    if idp_side is not None:
        jobs.add(REVOCATION_WATCHDOG_JOB, Every(HOUSEKEEPING_INTERVAL_SECONDS), idp_side.revocation.watch)
    jobs.add(OUTBOX_PURGE_JOB, Every(HOUSEKEEPING_INTERVAL_SECONDS), dispatcher.purge)
    forwarder = None
    if settings.jit_audit_webhook_url is not None:
        assert settings.jit_audit_webhook_secret is not None  # Settings refuses a URL without it
        forwarder = AuditForwarder(
            engine=engine,
            url=settings.jit_audit_webhook_url,
            secret=settings.jit_audit_webhook_secret,
            announcer=announcer,
            clock=clock,
            settings=forwarding or _forwarding_policy(settings.jit_audit_webhook_deadline),
        )
        jobs.add(AUDIT_FORWARD_PURGE_JOB, Every(HOUSEKEEPING_INTERVAL_SECONDS), forwarder.purge)
    if policy.has_reminders:
        # Only with reminders: a policy without them costs not even the job's query.
        reminders = ReminderService(engine=engine, policy=policy, announcer=announcer, clock=clock)
        jobs.add(REMINDERS_JOB, Every(REMINDERS_INTERVAL_SECONDS), reminders.run)
    # Registered whatever the policy says now: a break-glass used before break_glass was taken out of
    # the policy still needs a human's eyes (one indexed query of unacknowledged alerts when none is due).
    jobs.add(BREAK_GLASS_REALERT_JOB, Every(REALERT_CHECK_SECONDS), breakglass.realert)
    if policy.channels.digest is not None:
        jobs.add(DIGEST_AT_START_JOB, AtStart(), digests.post_due)
        jobs.add(DIGEST_JOB, Every(DIGEST_CHECK_SECONDS), digests.post_due)
    if policy.expiry_notice is not None or any(r.expiry_notice is not None for r in policy.resources):
        jobs.add(EXPIRY_NOTICES_JOB, Every(EXPIRY_NOTICE_CHECK_SECONDS), expiry_notices.send_due)
    # Always, even when no rule says revoke_when_context_ends any more: grants approved under an earlier
    # policy keep the usergroups they recorded for their whole life. Without such grants a run is one
    # SELECT and no Slack call.
    jobs.add(CONTEXT_ENDS_JOB, Every(CONTEXT_CHECK_SECONDS), context.check)

    # The edges.
    listeners = Listeners(
        policy=policy,
        requests=requests,
        voting=voting,
        early=early,
        listing=listing,
        digests=digests,
        directory=directory,
        hooks_url=settings.slack_hooks_url,
        breakglass=breakglass,
        extensions=ExtensionService(requests=requests),
    )
    executor = ThreadPoolExecutor(max_workers=LISTENER_THREADS, thread_name_prefix="jit-listener")
    signing_secret = _signing_secret(settings)
    bolt_app = build_bolt_app(
        client=client,
        signing_secret=signing_secret,
        listeners=listeners,
        executor=executor,
        workspace=workspace,
        hooks_url=settings.slack_hooks_url,
    )
    web_app = create_web_app(
        slack=None if settings.socket_mode else SlackEdge(bolt_app=bolt_app, signing_secret=signing_secret),
        health=lambda: health(engine),
        jwks=jwks([idp_side.signing_key]) if idp_side is not None else None,
        pickup=idp_side.pickup if idp_side is not None else None,
        trusted_proxies=settings.trusted_proxies,
    )
    return Runtime(
        settings=settings,
        policy=policy,
        engine=engine,
        client=client,
        workspace=workspace,
        bolt_app=bolt_app,
        web_app=web_app,
        executor=executor,
        requests=requests,
        voting=voting,
        dispatcher=dispatcher,
        backlog=backlog,
        jobs=jobs,
        sweep=sweep,
        idp_side=idp_side,
        digests=digests,
        rego=rego,
        forwarder=forwarder,
        breakglass=breakglass,
    )


def _forwarding_policy(deadline: float) -> ForwardingPolicy:
    # The lease outlasts the deadline several times over: clocks of replicas drift, sends must not overlap.
    return ForwardingPolicy(deadline=deadline, lease=timedelta(seconds=max(60.0, 3 * deadline)))


def _nothing_to_wake(_when: datetime) -> None:
    return None


def _idp_side(
    settings: Settings,
    policy: Policy,
    *,
    engine: Engine,
    announcer: Announcer,
    wake: Callable[[datetime], None],
    backlog: RevocationBacklog,
    clock: Callable[[], datetime],
    retry: RetryPolicy | None,
    timing: RevocationTiming | None,
) -> IdPSide:
    signing_key = signing_key_for(settings)
    assert settings.jit_encryption_key is not None and settings.oidc_issuer and settings.oidc_client_id
    cipher = TokenCipher(settings.jit_encryption_key.get_secret_value())
    idp = IdPClient(
        IdPConfig(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None,
            client_auth=settings.oidc_client_auth,
            lifetime_param=settings.oidc_token_lifetime_param,
        ),
        signing_key=signing_key,
    )
    minting = MintService(
        engine=engine,
        policy=policy,
        idp=idp,
        signing_key=signing_key,
        cipher=cipher,
        announcer=announcer,
        clock=clock,
        public_url=settings.public_url,
        wake=wake,
        retry=retry or RetryPolicy(),
    )
    # Mints run on their own threads: an IdP that is slow or down (seconds of retries) must not hold
    # up the listener threads that answer Slack, nor the scheduler's.
    mint_workers = ThreadPoolExecutor(max_workers=MINT_THREADS, thread_name_prefix="jit-mint")
    mint_queue = MintQueue(mint_workers, mint=minting.mint)
    revocation_workers = ThreadPoolExecutor(max_workers=REVOCATION_THREADS, thread_name_prefix="jit-revoke")
    revocation = RevocationService(
        engine=engine,
        policy=policy,
        idp=idp,
        cipher=cipher,
        announcer=announcer,
        clock=clock,
        workers=revocation_workers,
        worker_count=REVOCATION_THREADS,
        wake=wake,
        timing=timing or RevocationTiming(),
        backlog=backlog,
    )
    return IdPSide(
        idp=idp,
        signing_key=signing_key,
        cipher=cipher,
        minting=minting,
        mint_queue=mint_queue,
        mint_workers=mint_workers,
        pickup=PickupService(engine=engine, cipher=cipher, clock=clock, policy=policy, wake=wake),
        revocation=revocation,
        revocation_workers=revocation_workers,
    )


def signing_key_for(settings: Settings) -> SigningKey:
    """JIT_SIGNING_KEY_FILE, or a key generated on first start and kept beside the database."""
    if settings.jit_signing_key_file is not None:
        return load_signing_key(settings.jit_signing_key_file)
    path = default_signing_key_path(settings.jit_database_url)
    key, created = load_or_create_signing_key(path)
    if created:
        log.warning(
            "generated a new signing key at %s (kid %s); set JIT_SIGNING_KEY_FILE to manage it yourself, "
            "and keep it: every replica must use the same key",
            path,
            key.kid,
        )
    return key


def default_signing_key_path(database_url: str) -> Path:
    return beside_database(database_url, "jit-signing-key.pem")


def audit_key_for(database_url: str, configured: SecretStr | None) -> bytes:
    """JIT_AUDIT_KEY, or a key generated on first start and kept beside the database (not in it)."""
    if configured is not None:
        return key_bytes(configured)
    path = beside_database(database_url, AUDIT_KEY_FILE)
    key, created = load_or_create_key(path)
    if created:
        log.warning(
            "generated a new audit key at %s; set JIT_AUDIT_KEY to manage it yourself, keep it out of "
            "database backups, and give every replica the same key: without it the audit trail cannot be verified",
            path,
        )
    return key
