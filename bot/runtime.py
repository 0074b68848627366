"""The composition root: builds every part from Settings and a Policy, for the CLI and for tests."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI
from slack_bolt import App
from slack_sdk import WebClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from bot.config import Settings
from bot.domain.policy import Policy
from bot.idp.client import IdPClient, IdPConfig
from bot.idp.keys import SigningKey, jwks, load_or_create_signing_key, load_signing_key
from bot.jobs.expiry import SWEEP_INTERVAL_SECONDS, ExpiryScheduler
from bot.services.early import EarlyEndService
from bot.services.minting import MintService, RetryPolicy
from bot.services.pickup import PickupService
from bot.services.requests import RequestService
from bot.services.revocation import RevocationService
from bot.services.timeouts import TimeoutService
from bot.services.voting import VotingService
from bot.slack.adapters import SlackDirectory, SlackNotifier
from bot.slack.app import build_bolt_app
from bot.slack.listeners import Listeners
from bot.store.crypto import TokenCipher
from bot.store.db import make_engine
from bot.store.types import utcnow
from bot.web.app import create_web_app

log = logging.getLogger(__name__)

# Lazy listeners do the slow part of each Slack interaction (database, Slack Web API) on these.
# Few on purpose: SQLite takes one writer at a time anyway, and every extra thread competes with the
# event loop for the interpreter lock, which is what Slack's 3-second acknowledgement waits on.
LISTENER_THREADS = 4
# Revocations in flight at once; each is two short IdP calls and a few database writes.
REVOCATION_THREADS = 8
MINT_THREADS = 4


@dataclass
class Runtime:
    settings: Settings
    policy: Policy
    engine: Engine
    client: WebClient
    bolt_app: App
    web_app: FastAPI
    executor: ThreadPoolExecutor
    requests: RequestService
    voting: VotingService
    minting: MintService | None = None
    signing_key: SigningKey | None = None
    revocation: RevocationService | None = None
    scheduler: ExpiryScheduler | None = None
    revocation_workers: ThreadPoolExecutor | None = None
    mint_workers: ThreadPoolExecutor | None = None

    def start_background(self) -> None:
        """Start the expiry engine (its first act is a reconciling sweep)."""
        if self.scheduler is not None:
            self.scheduler.start()

    def close(self) -> None:
        # Stop new sweeps, finish work already acked to Slack or claimed, then let go of the database.
        if self.scheduler is not None:
            self.scheduler.stop()
        self.executor.shutdown(wait=True)
        if self.mint_workers is not None:
            self.mint_workers.shutdown(wait=True)
        if self.revocation_workers is not None:
            self.revocation_workers.shutdown(wait=True)
        self.engine.dispose()


def build_runtime(
    settings: Settings,
    policy: Policy,
    *,
    engine: Engine | None = None,
    clock: Callable[[], datetime] = utcnow,
    mint_retry: RetryPolicy | None = None,
    sweep_interval: float = SWEEP_INTERVAL_SECONDS,
) -> Runtime:
    engine = engine or make_engine(settings.jit_database_url)
    client = WebClient(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url, timeout=10)
    directory = SlackDirectory(client)
    notifier = SlackNotifier(client)
    requests = RequestService(engine=engine, policy=policy, directory=directory, notifier=notifier, clock=clock)
    voting = VotingService(engine=engine, policy=policy, directory=directory, notifier=notifier, clock=clock)
    minting: MintService | None = None
    pickup: PickupService | None = None
    signing_key: SigningKey | None = None
    revocation: RevocationService | None = None
    revocation_workers: ThreadPoolExecutor | None = None
    mint_workers: ThreadPoolExecutor | None = None
    early = EarlyEndService(engine=engine, policy=policy, directory=directory, notifier=notifier, clock=clock)
    timeouts = TimeoutService(engine=engine, policy=policy, notifier=notifier, clock=clock)
    if settings.idp_configured:
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
            notifier=notifier,
            clock=clock,
            public_url=settings.public_url,
            retry=mint_retry or RetryPolicy(),
        )
        # Mints run on their own threads: an IdP that is slow or down (10 s of retries) must not
        # hold up the listener threads that answer Slack.
        mint_workers = ThreadPoolExecutor(max_workers=MINT_THREADS, thread_name_prefix="jit-mint")
        mint = minting.mint
        voting.on_approved = lambda request_id: mint_workers.submit(mint, request_id)
        timeouts.mint = minting.mint
        pickup = PickupService(engine=engine, cipher=cipher, clock=clock)
        revocation_workers = ThreadPoolExecutor(max_workers=REVOCATION_THREADS, thread_name_prefix="jit-revoke")
        revocation = RevocationService(
            engine=engine,
            policy=policy,
            idp=idp,
            cipher=cipher,
            notifier=notifier,
            clock=clock,
            workers=revocation_workers,
        )
    scheduler = ExpiryScheduler(revocation=revocation, timeouts=timeouts, interval=sweep_interval)
    if revocation is not None and minting is not None:
        revocation.on_schedule = scheduler.wake_at
        minting.on_grant_active = scheduler.wake_at
        early.on_schedule = scheduler.wake_at
    listeners = Listeners(policy=policy, requests=requests, voting=voting, early=early, directory=directory)
    executor = ThreadPoolExecutor(max_workers=LISTENER_THREADS, thread_name_prefix="jit-listener")
    bolt_app = build_bolt_app(
        client=client,
        signing_secret=settings.slack_signing_secret.get_secret_value(),
        listeners=listeners,
        executor=executor,
    )

    def health() -> dict[str, str]:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return {"database": "ok"}
        except Exception as exc:  # a health probe reports, it does not raise
            return {"database": f"error: {type(exc).__name__}"}

    web_app = create_web_app(
        bolt_app=None if settings.socket_mode else bolt_app,
        health=health,
        jwks=jwks([signing_key]) if signing_key is not None else None,
        pickup=pickup,
    )
    return Runtime(
        settings=settings,
        policy=policy,
        engine=engine,
        client=client,
        bolt_app=bolt_app,
        web_app=web_app,
        executor=executor,
        requests=requests,
        voting=voting,
        minting=minting,
        signing_key=signing_key,
        revocation=revocation,
        scheduler=scheduler,
        revocation_workers=revocation_workers,
        mint_workers=mint_workers,
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
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        return Path(url.database).resolve().parent / "jit-signing-key.pem"
    return Path.cwd() / "jit-signing-key.pem"
