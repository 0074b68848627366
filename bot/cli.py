"""The ``jit-bot`` command."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from collections.abc import Sequence

from bot.config import ConfigError, Settings, StoreSettings, load_policy, load_settings
from bot.domain.durations import format_duration
from bot.domain.policy import Policy

log = logging.getLogger("jit-bot")


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Client libraries log request details at DEBUG; keep them well above that so no token can slip out.
    for name in ("slack_sdk", "slack_bolt", "urllib3", "httpx", "httpcore", "authlib", "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Bolt reads SLACK_BOT_TOKEN from the environment itself and warns that it is unused, since we hand
    # it a ready client; the warning is noise on every start.
    logging.getLogger("slack_bolt.App").addFilter(lambda record: "will be unused" not in record.getMessage())


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    # uvicorn re-raises SIGTERM after its graceful shutdown; SystemExit lets cmd_serve's `finally` run.
    raise SystemExit(0)


def _load() -> tuple[Settings, Policy]:
    settings = load_settings()
    policy = load_policy(settings.jit_policy_file)
    return settings, policy


def cmd_check(_args: argparse.Namespace) -> int:
    settings, policy = _load()
    _out("settings: ok")
    _out(f"  mode: {'Socket Mode' if settings.socket_mode else 'HTTP'}")
    _out(f"  Slack API: {settings.slack_api_url}")
    _out(f"  database: {_redact_url(settings.jit_database_url)}")
    _out(f"  listening on: {settings.jit_http_host}:{settings.jit_http_port}; public URL {settings.public_url}")
    if settings.idp_configured:
        _out(
            f"  IdP: {settings.oidc_issuer} as client {settings.oidc_client_id} "
            f"({settings.oidc_client_auth.value}); lifetime parameter: {settings.oidc_token_lifetime_param or '(none)'}"
        )
        _out(f"  subject assertions: iss {settings.public_url}, JWKS {settings.public_url}/.well-known/jwks.json")
    else:
        _out("  IdP: not configured (OIDC_ISSUER unset): approvals only, no tokens minted")
    _out(f"policy: {settings.jit_policy_file}: ok")
    _out(f"  request_timeout: {format_duration(policy.request_timeout)}")
    _out(f"  audit channel: {policy.channels.audit or '(none)'}")
    fallback = "on" if policy.identity.email_fallback else "off"
    _out(f"  identities: {len(policy.identities)} mapped; email fallback {fallback}")
    for resource in policy.resources:
        _out(
            f"  resource {resource.name}: scopes {', '.join(resource.scopes)}; "
            f"max {format_duration(resource.max_duration)}; "
            f"{resource.approvals_required} of {', '.join(resource.approvers)} in {resource.approver_channel}"
        )
    return 0


def _redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_migrate(_args: argparse.Namespace) -> int:
    from bot.store.db import make_engine, migrate

    engine = make_engine(StoreSettings().jit_database_url)
    migrate(engine)
    engine.dispose()
    _out("database is at the newest schema")
    return 0


def cmd_serve(_args: argparse.Namespace) -> int:
    import uvicorn
    from slack_sdk.errors import SlackApiError

    from bot.runtime import build_runtime
    from bot.store.db import make_engine, migrate

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings, policy = _load()
    engine = make_engine(settings.jit_database_url)
    migrate(engine)
    runtime = build_runtime(settings, policy, engine=engine)
    try:
        identity = runtime.client.auth_test()
    except SlackApiError as exc:
        raise ConfigError([f"SLACK_BOT_TOKEN was refused by Slack: {exc.response.get('error')}"]) from None
    log.info("connected to Slack as %s in team %s", identity.get("user"), identity.get("team"))
    socket_handler = None
    if settings.slack_app_token is not None:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        socket_handler = SocketModeHandler(runtime.bolt_app, settings.slack_app_token.get_secret_value())
        try:
            socket_handler.connect()  # type: ignore[no-untyped-call]
        except SlackApiError as exc:
            raise ConfigError([f"SLACK_APP_TOKEN was refused by Slack: {exc.response.get('error')}"]) from None
        if socket_handler.client.is_connected():
            log.info("Socket Mode connected")
        else:
            # slack_sdk keeps retrying in the background; say so instead of claiming success.
            log.warning("Socket Mode is not connected yet; retrying in the background")
    # Everything built so far lives as long as the process: moving it out of the collector's reach
    # keeps full collections (which stop every thread) short, and so keeps acks fast.
    gc.collect()
    gc.freeze()
    runtime.start_background()
    log.info("serving on http://%s:%s", settings.jit_http_host, settings.jit_http_port)
    try:
        uvicorn.run(
            runtime.web_app,
            host=settings.jit_http_host,
            port=settings.jit_http_port,
            # Access logs would record URLs, and later pickup URLs are secrets.
            access_log=False,
            log_level="info",
        )
    finally:
        if socket_handler is not None:
            socket_handler.close()  # type: ignore[no-untyped-call]
        runtime.close()
    return 0


def cmd_audit_verify(_args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from bot.store.audit import verify_chain
    from bot.store.db import make_engine, session_scope

    engine = make_engine(StoreSettings().jit_database_url)
    try:
        with session_scope(engine) as session:
            report = verify_chain(session=session)
    except (OperationalError, ProgrammingError) as exc:
        raise ConfigError(
            [
                f"JIT_DATABASE_URL: cannot read the audit trail ({type(exc.orig).__name__}); "
                "is it the right database, migrated?"
            ]
        ) from None
    finally:
        engine.dispose()
    if report.intact:
        _out(f"audit trail intact: {report.events} events")
        return 0
    _err(f"audit trail BROKEN at event {report.first_bad_seq}: {report.problem}")
    return 1


def cmd_keygen(_args: argparse.Namespace) -> int:
    from bot.store.crypto import TokenCipher

    _out(TokenCipher.generate_key())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jit-bot", description="Just-in-time access through Slack and your IdP.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run migrations, then serve Slack and HTTP").set_defaults(func=cmd_serve)
    commands.add_parser("check", help="validate settings and the policy file").set_defaults(func=cmd_check)
    commands.add_parser("migrate", help="bring the database schema up to date").set_defaults(func=cmd_migrate)
    commands.add_parser("keygen", help="print a new JIT_ENCRYPTION_KEY").set_defaults(func=cmd_keygen)
    audit = commands.add_parser("audit", help="audit trail tools").add_subparsers(dest="audit_command", required=True)
    audit.add_parser("verify", help="check the hash chain of the audit trail").set_defaults(func=cmd_audit_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        for line in exc.lines:
            _err(f"jit-bot: {line}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
