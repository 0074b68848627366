"""The ``jit-bot`` command."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy.exc import DBAPIError, OperationalError

from bot.config import (
    ConfigError,
    Settings,
    load_policy,
    load_settings,
    load_store_settings,
    misspelt_settings,
    policy_file_setting,
)
from bot.domain.durations import format_duration
from bot.domain.policy import Policy
from bot.domain.policy_rules import Rule, rule_warnings
from bot.domain.text import one_line
from bot.files import KeyFileError
from bot.idp.keys import SigningKeyError
from bot.logs import LogFormat, configure_logging
from bot.redact import redact_url

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from bot.rego.engine import RegoEngine

log = logging.getLogger("jit-bot")
T = TypeVar("T")

# The environment variable that --log-format falls back to.
LOG_FORMAT_ENV = "JIT_LOG_FORMAT"
# Set by main. With --log-format json, what the command says on stderr is a log record like any
# other, so a log pipeline reading stderr sees only JSON objects.
_stderr_as_log = False


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _err(line: str, level: int = logging.ERROR) -> None:
    if _stderr_as_log:
        said = line.removeprefix("jit-bot: ")
        log.log(level, "%s", said.removeprefix("warning: ") if level == logging.WARNING else said)
    else:
        sys.stderr.write(line + "\n")


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    # uvicorn re-raises SIGTERM after its graceful shutdown; SystemExit lets cmd_serve's `finally` run.
    raise SystemExit(0)


def _load() -> tuple[Settings, Policy]:
    settings = load_settings()
    policy = load_policy(settings.jit_policy_file)
    return settings, policy


def cmd_check(args: argparse.Namespace) -> int:
    """Report the settings, the policy file and every check of bot.preflight, one line each.

    Exit 2: the settings or the policy file do not load; 1: they do, and a check found a problem."""
    from bot.preflight import preflight

    settings = _loaded(load_settings)
    if settings is not None:
        _settings_summary(settings)
    # Placeholders from .env.example are the usual reason settings do not load; the policy is still checked.
    policy_file = settings.jit_policy_file if settings is not None else policy_file_setting()
    policy = _loaded(lambda: load_policy(policy_file))
    if policy is not None:
        _policy_summary(policy_file, policy)
    if settings is None:
        _out("database, signing key, Slack and IdP: not checked: the settings do not load")
        return 2
    findings = preflight(settings, policy, offline=args.offline)
    for finding in findings:
        _out(finding.line())
    problems = sum(finding.problem for finding in findings)
    for warning in plain_http_warnings(settings):
        _err(f"jit-bot: warning: {warning}", logging.WARNING)
    if policy is None:
        return 2
    return 1 if problems else 0


def _loaded(load: Callable[[], T]) -> T | None:
    """What ``load`` returns, or None after its ConfigError lines went to stderr."""
    try:
        return load()
    except ConfigError as exc:
        for line in exc.lines:
            _err(f"jit-bot: {line}")
        return None


def _settings_summary(settings: Settings) -> None:
    _out("settings: ok")
    _out(f"  mode: {'Socket Mode' if settings.socket_mode else 'HTTP'}")
    _out(f"  Slack API: {redact_url(settings.slack_api_url)}; replies only to {redact_url(settings.slack_hooks_url)}")
    _out(f"  database: {redact_url(settings.jit_database_url)}")
    _out(
        f"  listening on: {settings.jit_http_host}:{settings.jit_http_port}; "
        f"public URL {redact_url(settings.public_url)}"
    )
    if settings.idp_configured:
        assert settings.oidc_issuer is not None
        _out(
            f"  IdP: {redact_url(settings.oidc_issuer)} as client {settings.oidc_client_id} "
            f"({settings.oidc_client_auth.value}); lifetime parameter: {settings.oidc_token_lifetime_param or '(none)'}"
        )
        public = redact_url(settings.public_url)
        _out(f"  subject assertions: iss {public}, JWKS {public}/.well-known/jwks.json")
    else:
        _out("  IdP: not configured (OIDC_ISSUER unset): approvals only, no tokens minted")
    _out(f"  audit key: {_audit_key_line(settings)}")


def _policy_summary(path: Path, policy: Policy) -> None:
    _out(f"policy: {path}: ok")
    _out(f"  request_timeout: {format_duration(policy.request_timeout)}")
    _out(f"  audit channel: {policy.channels.audit or '(none)'}")
    digest, hours = policy.digest, policy.digest.business_hours
    _out(
        f"  digest: {digest.time:%H:%M} {digest.timezone} to {policy.channels.digest or '(no channel)'}; "
        f"business hours {','.join(hours.days)} {hours.start:%H:%M}-{hours.end:%H:%M}"
    )
    _out(f"  security leads: {', '.join(policy.security_leads) or '(none)'}")
    fallback = "on" if policy.identity.email_fallback else "off"
    _out(f"  identities: {len(policy.identities)} mapped; email fallback {fallback}")
    _out(f"  limits: {policy.limits.pending_per_requester} pending requests per requester")
    for resource in policy.resources:
        _out(
            f"  resource {resource.name}: scopes {', '.join(resource.scopes)}; "
            f"max {format_duration(resource.max_duration)}; "
            f"{resource.approvals_required} of {', '.join(resource.approvers)} in {resource.approver_channel}"
        )
    for rule in policy.rules:
        _out(f"  rule {rule.name}: {_rule_line(rule)}")
    for warning in rule_warnings(policy.rules, [resource.name for resource in policy.resources]):
        _out(f"  warning: {warning}")


def _rule_line(rule: Rule) -> str:
    """What a rule does, in the order it is evaluated: its effect, its conditions, its limit."""
    said = rule.effect.value if rule.effect is not None else f"rego {rule.rego.path if rule.rego else ''}"
    if rule.approvals is not None or rule.approvers is not None:
        approvals = rule.approvals if rule.approvals is not None else "the resource's"
        approvers = ", ".join(rule.approvers) if rule.approvers is not None else "the resource's approvers"
        said += f" {approvals} of {approvers}"
    said += f"; when {', '.join(rule.when.names) or 'always'}"
    if rule.unless is not None:
        said += f"; unless {', '.join(rule.unless.names)}"
    if rule.limit is not None:
        said += f"; at most {rule.limit.count} per {format_duration(rule.limit.per)}"
    return said


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_warnings(settings: Settings) -> list[str]:
    """Plain http:// is fine on loopback (a local trial); anywhere else tokens and assertions cross in the clear."""
    from urllib.parse import urlsplit

    found = []
    for name, url in (("OIDC_ISSUER", settings.oidc_issuer), ("JIT_PUBLIC_URL", settings.public_url)):
        if url and url.startswith("http://") and not _is_loopback(urlsplit(url).hostname or ""):
            found.append(f"{name} is plain http:// on a non-loopback host ({redact_url(url)}); use https://")
    return found


def _audit_key_line(settings: Settings) -> str:
    from bot.files import beside_database, load_key
    from bot.runtime import AUDIT_KEY_FILE

    if settings.jit_audit_key is not None:
        return "JIT_AUDIT_KEY"
    path = beside_database(settings.jit_database_url, AUDIT_KEY_FILE)
    if path.exists():
        load_key(path)
        return f"{path} (generated earlier)"
    return f"none yet: one is generated at {path} on first start"


def _store_engine(*, create_key: bool) -> Engine:
    """The database, with the audit key bound (migrations may re-link the audit chain).

    Without JIT_AUDIT_KEY the key file beside the database is used; only a command that writes
    (``migrate``) may create it, since verifying with a fresh key would call every event altered.
    """
    from bot.config import key_bytes
    from bot.files import KeyFileError, beside_database, load_key
    from bot.runtime import AUDIT_KEY_FILE, audit_key_for
    from bot.store.audit import bind_audit_forwarding, bind_audit_key
    from bot.store.db import make_engine

    store = load_store_settings()
    if not create_key:
        _refuse_missing_sqlite_file(store.jit_database_url)
    if create_key:
        key = audit_key_for(store.jit_database_url, store.jit_audit_key)
    elif store.jit_audit_key is not None:
        key = key_bytes(store.jit_audit_key)
    else:
        path = beside_database(store.jit_database_url, AUDIT_KEY_FILE)
        if not path.exists():
            raise ConfigError([f"JIT_AUDIT_KEY is not set and there is no audit key file at {path}"])
        try:
            key = load_key(path)
        except KeyFileError as exc:
            raise ConfigError([str(exc)]) from None
    engine = bind_audit_key(make_engine(store.jit_database_url), key)
    return bind_audit_forwarding(engine) if store.jit_audit_webhook_url else engine


def _refuse_missing_sqlite_file(database_url: str) -> None:
    """A command that only reads must not leave an empty database behind (opening SQLite creates the
    file), least of all in a folder it was run in by mistake."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise ConfigError(
            [
                f"JIT_DATABASE_URL: there is no database at {Path(url.database).resolve()}; "
                "run this where the bot's .env is, or set JIT_DATABASE_URL to its database"
            ]
        )


def cmd_migrate(_args: argparse.Namespace) -> int:
    from bot.store.db import migrate

    engine = _store_engine(create_key=True)
    migrate(engine)
    engine.dispose()
    _out("database is at the newest schema")
    return 0


def cmd_serve(_args: argparse.Namespace) -> int:
    from bot.serving import listen, serve

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings, policy = _load()
    # Bound first: a port already in use is one line before anything else starts, and "serving on"
    # is only ever said of a socket that is listening.
    listener = listen(settings.jit_http_host, settings.jit_http_port)
    for warning in plain_http_warnings(settings):
        log.warning(warning)
    serve(settings, policy, listener)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bot.demo.run import run_demo

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return run_demo(folder=args.dir, port=args.port)


def _expected_head(text: str | None) -> tuple[int, str] | None:
    """--expect-head SEQ:HASH, as a digest publishes it."""
    if text is None:
        return None
    import re

    found = re.fullmatch(r"\s*(\d{1,12}):([0-9a-f]{64})\s*", text)
    if found is None or int(found.group(1)) < 1:
        raise ConfigError([f"--expect-head: '{text[:80]}' is not SEQ:HASH (an event number, a colon, 64 hex digits)"])
    return int(found.group(1)), found.group(2)


def _trail_unreadable(exc: DBAPIError) -> ConfigError:
    return ConfigError(
        [
            f"JIT_DATABASE_URL: cannot read the audit trail ({type(exc.orig).__name__}); "
            "is it the right database, migrated?"
        ]
    )


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from bot.store.audit import audit_key_of, head_problem, verify_chain
    from bot.store.db import read_scope

    expected = _expected_head(args.expect_head)
    engine = _store_engine(create_key=False)
    try:
        with read_scope(engine) as session:
            # One snapshot for the whole verify on PostgreSQL too (the events, their last seq and the
            # head row agree), which also lets verify_chain check a long trail in two processes.
            options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
            key = audit_key_of(session.connection(execution_options=options))
            report = verify_chain(session=session, key=key, watch=expected[0] if expected else None)
    except (OperationalError, ProgrammingError) as exc:
        raise _trail_unreadable(exc) from None
    finally:
        engine.dispose()
    if not report.intact:
        _err(f"audit trail BROKEN at event {report.first_bad_seq}: {report.problem}")
        return 1
    if report.unkeyed:
        _err(
            f"audit trail NOT VERIFIED: events 1 to {report.unkeyed} (of {report.events}) are not linked with "
            "JIT_AUDIT_KEY, so anyone who could write to the database could have rewritten them. If they predate "
            "the key (an upgrade), check them with the old version, then run `jit-bot audit rekey` once"
        )
        return 1
    if expected is not None:
        problem = head_problem(report, *expected)
        if problem is not None:
            _err(f"audit trail does NOT hold the expected head {expected[0]}: {problem}")
            return 1
        _out(f"audit trail intact: {report.events} events, holding the expected head {expected[0]}")
        return 0
    _out(f"audit trail intact: {report.events} events")
    return 0


def _moment(text: str | None, flag: str) -> datetime | None:
    """--since/--until: a span back from now (30d, 12h, 90m), a date (UTC midnight) or an ISO time."""
    if text is None:
        return None
    import re
    from datetime import datetime

    from bot.store.types import utcnow

    if re.fullmatch(r"\s*\d{1,6}\s*[dhm]\s*", text):
        return utcnow() - _since(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            [f"{flag}: '{text[:40]}' is not a span like 30d, a date like 2026-12-01 or a time like 2026-12-01T09:00Z"]
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# The columns of `jit-bot audit export --format csv`, in order; details is its JSON text.
EXPORT_COLUMNS = ("seq", "at", "event_type", "actor", "request_id", "details", "prev_hash", "hash")


def cmd_audit_export(args: argparse.Namespace) -> int:
    """Every event in the window, oldest first, one line each, streamed: nothing is held but a batch."""
    import csv

    from sqlalchemy.exc import OperationalError, ProgrammingError

    from bot.store.audit import export_events
    from bot.store.db import read_scope

    since, until = _moment(args.since, "--since"), _moment(args.until, "--until")
    if since is not None and until is not None and since >= until:
        raise ConfigError(["--since must be before --until"])
    engine = _store_engine(create_key=False)
    writer = csv.writer(sys.stdout, lineterminator="\n") if args.format == "csv" else None
    if writer is not None:
        writer.writerow(EXPORT_COLUMNS)
    count = 0
    try:
        with read_scope(engine) as session:
            for event in export_events(session=session, since=since, until=until):
                at = event.at.isoformat().replace("+00:00", "Z")
                details = json.dumps(event.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                if writer is not None:
                    row = (event.seq, at, event.event_type, event.actor, event.request_id or "", details)
                    writer.writerow((*row, event.prev_hash, event.hash))
                else:
                    record = {
                        "seq": event.seq,
                        "at": at,
                        "event_type": event.event_type,
                        "actor": event.actor,
                        "request_id": event.request_id,
                        "details": event.details,
                        "prev_hash": event.prev_hash,
                        "hash": event.hash,
                    }
                    sys.stdout.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
                count += 1
    except (OperationalError, ProgrammingError) as exc:
        raise _trail_unreadable(exc) from None
    except BrokenPipeError:
        # `jit-bot audit export | head`: the reader has what it wanted.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit; this one takes it
        return 0
    finally:
        engine.dispose()
    _err(f"jit-bot: exported {count} event(s)", logging.INFO)
    return 0


def cmd_audit_rekey(_args: argparse.Namespace) -> int:
    """Link an upgraded trail's unkeyed events with JIT_AUDIT_KEY: an operator's decision, never automatic."""
    from bot.store.audit import audit_key_of, rekey
    from bot.store.db import session_scope
    from bot.store.types import utcnow

    engine = _store_engine(create_key=False)
    try:
        with session_scope(engine) as session:
            before = rekey(session=session, key=audit_key_of(session.connection()), at=utcnow())
    except ValueError as exc:
        _err(f"jit-bot: nothing re-keyed: {exc}")
        return 1
    finally:
        engine.dispose()
    _out(f"re-linked {before.events} events with JIT_AUDIT_KEY ({before.unkeyed} were unkeyed)")
    _out(f"the trail's last link before re-keying was {before.tip}: compare it with a copy kept elsewhere")
    return 0


def _digest_date(text: str | None, zone: ZoneInfo, now: datetime) -> date:
    """--date YYYY-MM-DD (default: yesterday in digest.timezone); a day that has not begun there is refused."""
    import re

    from bot.domain.digest import yesterday

    if text is None:
        return yesterday(now, zone)
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            raise ValueError
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError([f"--date: '{text[:40]}' is not a date like 2026-10-25"]) from None
    if day > now.astimezone(zone).date():
        raise ConfigError([f"--date: {day} has not begun yet in {zone.key}"])
    return day


def _chart_target(path: Path) -> Path:
    """Said before the digest is computed, so a wrong path does not cost a verify of the whole trail."""
    folder = path.parent
    if path.is_dir():
        raise ConfigError([f"--chart: {path} is a folder; give a file name like digest.png"])
    if not folder.is_dir():
        raise ConfigError([f"--chart: cannot write {path}: there is no folder {folder}"])
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError([f"--chart: cannot write {path}: permission denied"])
    return path


def cmd_digest(args: argparse.Namespace) -> int:
    """The security leads' digest of one day, from the database and the policy's digest settings; read-only."""
    from sqlalchemy.exc import DatabaseError

    from bot.domain.digest import Digest, digest_json, digest_text, plan_digest
    from bot.store.audit import audit_key_of
    from bot.store.db import read_scope
    from bot.store.digest import audit_anchor, read_figures
    from bot.store.types import utcnow

    policy = load_policy(policy_file_setting())
    now = utcnow()
    day = _digest_date(args.date, policy.digest.zone, now)
    chart = _chart_target(args.chart) if args.chart is not None else None
    plan = plan_digest(day, policy.digest, now=now)
    engine = _store_engine(create_key=False)
    cannot_read = (
        "JIT_DATABASE_URL: cannot read the requests and the audit trail ({}); is it the right database, migrated?"
    )
    try:
        try:
            # A server that cannot be reached is main's one line; a file that is not a database is ours.
            engine.connect().close()
        except OperationalError:
            raise
        except DatabaseError as exc:
            raise ConfigError([cannot_read.format(type(exc.orig).__name__)]) from None
        try:
            with read_scope(engine) as session:
                figures = read_figures(session=session, plan=plan)
                anchor = audit_anchor(session=session, key=audit_key_of(session.connection()))
        except DatabaseError as exc:
            raise ConfigError([cannot_read.format(type(exc.orig).__name__)]) from None
    finally:
        engine.dispose()
    digest = Digest(plan, figures, anchor)
    if chart is not None:
        from bot.domain.digest_chart import chart_png

        try:
            chart.write_bytes(chart_png(digest))
        except OSError as exc:
            raise ConfigError([f"--chart: cannot write {chart}: {exc.strerror or type(exc).__name__}"]) from None
        _err(f"jit-bot: chart written to {chart}", logging.INFO)
    _out(json.dumps(digest_json(digest)) if args.format == "json" else digest_text(digest))
    # Written either way (the digest says why on its last line), but a script that mails it can
    # also tell from the exit code, as from `audit verify`'s.
    return 0 if anchor.verified else 1


def _policy_path(given: Path | None) -> Path:
    return given if given is not None else policy_file_setting()


@contextmanager
def _rego_engine(policy: Policy) -> Iterator[RegoEngine | None]:
    """The policy's Rego rules' engine for one command, stopped after it (None: it has none)."""
    from bot.rego.engine import RegoEngineError, engine_for

    try:
        engine = engine_for(policy, timeout=_rego_timeout())
    except RegoEngineError as exc:
        raise ConfigError([str(exc)]) from None
    try:
        yield engine
    finally:
        if engine is not None:
            engine.close()


def _rego_timeout() -> float:
    """JIT_REGO_TIMEOUT for the policy commands, which need none of the bot's other settings."""
    from bot.domain.rego import DEFAULT_TIMEOUT_SECONDS

    raw = os.environ.get("JIT_REGO_TIMEOUT", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        raise ConfigError([f"JIT_REGO_TIMEOUT must be a number of seconds, not {raw!r}"]) from None
    if not 0 < value <= 10:
        raise ConfigError([f"JIT_REGO_TIMEOUT must be more than 0 and at most 10 seconds, not {raw}"])
    return value


def cmd_policy_check(args: argparse.Namespace) -> int:
    from bot.domain.policy_lint import lint

    path = _policy_path(args.file)
    policy = load_policy(path)
    found = lint(policy)
    _out(
        f"{path}: ok ({len(policy.resources)} resource(s), {len(policy.rules)} rule(s), {len(policy.groups)} group(s))"
    )
    if not policy.rules:
        _out("  no rules: every request goes to its resource's approvers")
    for line in found.rules:
        _out(f"  {line}")
    for warning in found.warnings:
        _out(f"warning: {warning}")
    return 1 if found.warnings and args.strict else 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    from bot.config import load_cases
    from bot.domain.policy_cases import explain, run_cases

    policy = load_policy(args.file)
    cases = load_cases(args.cases)
    with _rego_engine(policy) as rego:
        try:
            results = run_cases(policy, cases, rego=rego)
        except ValueError as exc:
            raise ConfigError([f"{args.cases}: {exc}"]) from None
    width = max(len(result.case.description) for result in results)
    for result in results:
        got = f"{result.decision.effect.value} ({result.decision.rule or 'no rule'})"
        wanted = f"{result.case.expect.effect.value} ({result.case.expect.rule or 'any rule'})"
        mark = "pass" if result.passed else "FAIL"
        _out(
            f"{mark}  {result.case.description.ljust(width)}  got {got}"
            + ("" if result.passed else f", expected {wanted}")
        )
        if not result.passed:
            for line in explain(result.decision):
                _out(f"        {line}")
    failed = sum(not result.passed for result in results)
    _out(f"{len(results) - failed} of {len(results)} case(s) passed")
    return 1 if failed else 0


def cmd_policy_replay(args: argparse.Namespace) -> int:
    """Recorded requests decided again with a proposed policy: read-only, nothing is sent anywhere."""
    from bot.domain.replay import replay
    from bot.store import requests as request_store
    from bot.store.db import make_engine, read_scope
    from bot.store.types import utcnow

    policy = load_policy(args.file)
    window = _since(args.since)
    usergroups = _replay_usergroups(args.usergroups)
    store = load_store_settings()
    _refuse_missing_sqlite_file(store.jit_database_url)
    engine = make_engine(store.jit_database_url)
    try:
        with read_scope(engine) as session:
            rows = request_store.recorded_since(session=session, since=utcnow() - window)
            with _rego_engine(policy) as rego:
                result = replay(policy, rows, usergroups=usergroups, rego=rego)
    finally:
        engine.dispose()
    if args.format == "json":
        _out(
            json.dumps(
                {
                    "requests": result.requests,
                    "changed": len(result.changes),
                    "counts": dict(result.counts),
                    "skipped_unknown_resource": result.skipped,
                    "changes": [
                        {
                            "request_id": c.request.id,
                            "created_at": c.request.created_at.isoformat(),
                            "requester": c.request.requester,
                            "resource": c.request.resource,
                            "before": c.before.value,
                            "after": c.after.effect.value,
                            "rule": c.after.rule,
                        }
                        for c in result.changes
                    ],
                }
            )
        )
        return 0
    _out(f"{result.requests} request(s) since {args.since.strip()} ago decided again with {args.file}")
    for change in result.changes:
        _out(
            f"  {change.request.id}  {change.request.created_at:%Y-%m-%d %H:%M} UTC  {change.request.requester}  "
            f"{change.request.resource}: {change.before.value} -> {change.after.effect.value} "
            f"(rule {change.after.rule})"
        )
    for kind, count in sorted(result.counts.items()):
        _out(f"{count} request(s) that {kind}")
    if not result.changes:
        _out("no decision would change")
    if result.skipped:
        _out(f"{len(result.skipped)} request(s) for resources the proposed policy no longer has were left out")
    if usergroups is None:
        _out(
            "usergroups were not known (give --usergroups): rules that need them decided nothing, as when Slack is down"
        )
    return 0


def _since(text: str) -> timedelta:
    """How far back a replay looks: 30d, 12h, 90m (no 7-day cap: this is history, not a grant)."""
    import re

    found = re.fullmatch(r"\s*(\d{1,6})\s*([dhm])\s*", text)
    if found is None:
        raise ConfigError([f"--since: '{text}' is not a span like 30d, 12h or 90m"])
    unit = {"d": "days", "h": "hours", "m": "minutes"}[found.group(2)]
    return timedelta(**{unit: int(found.group(1))})


def _replay_usergroups(path: Path | None) -> dict[str, frozenset[str]] | None:
    if path is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: cannot be read as YAML ({type(exc).__name__})"]) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(g, str) for g in v) for k, v in data.items()
    ):
        raise ConfigError([f"{path}: must map each Slack user id to a list of usergroup ids, e.g. U0ALICE: [S0ONCALL]"])
    return {user: frozenset(groups) for user, groups in data.items()}


def cmd_keygen(_args: argparse.Namespace) -> int:
    from bot.store.crypto import TokenCipher

    _out(TokenCipher.generate_key())
    return 0


# Where every command that reads settings looks, said once so each --help says the same.
_READS_WHERE = ".env in the working folder and the environment (the environment wins)"
_READS_SETTINGS = f"the settings (SLACK_*, OIDC_*, JIT_*) from {_READS_WHERE}"


def _log_format_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--log-format",
        choices=[f.value for f in LogFormat],
        default=default,
        help=f"text (the default) or json: one JSON object per line, for log pipelines (or set {LOG_FORMAT_ENV})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jit-bot", description="Just-in-time access through Slack and your IdP.")
    parser.add_argument("--version", action="version", version=f"jit-bot {importlib.metadata.version('jit-bot')}")
    _log_format_option(parser, None)
    # Each sub-command takes it too (`jit-bot serve --log-format json`); unset there, it leaves
    # whatever was given before the sub-command.
    common = argparse.ArgumentParser(add_help=False)
    _log_format_option(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        parents=[common],
        help="run migrations, then serve Slack and HTTP",
        description=(
            f"Reads {_READS_SETTINGS} and the policy file JIT_POLICY_FILE (default policy.yml). Checks "
            "the token with Slack and runs the database migrations, then serves /slack/events (HTTP mode) or "
            "Socket Mode (SLACK_APP_TOKEN set), the pickup page and the JWKS on JIT_HTTP_HOST:JIT_HTTP_PORT. "
            "Exit codes: 0 stopped (SIGTERM), 2 cannot start (one line says why), 130 interrupted."
        ),
    ).set_defaults(func=cmd_serve)
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="try the bot in a browser: a local Slack workspace, the dev IdP and the bot, on loopback",
        description=(
            "Starts the bot, the dev IdP (devidp/, needs Node.js and `npm ci` there) and a local Slack "
            "workspace on 127.0.0.1, with SQLite in --dir. Ignores .env: the demo makes its own secrets. "
            "Exit codes: 0 stopped, 2 cannot start (the reason is one line)."
        ),
    )
    demo.add_argument("--port", type=int, default=3000, help="the workspace page's port (default 3000; 0: any)")
    demo.add_argument("--dir", type=Path, default=Path(".jit-demo"), help="where the demo keeps its data")
    demo.set_defaults(func=cmd_demo)
    check = commands.add_parser(
        "check",
        parents=[common],
        help="check the settings, the policy file, the database, Slack, the IdP and the signing key",
        description=(
            "Reads the settings from the environment and .env in the working folder, and the policy file "
            "JIT_POLICY_FILE names (default policy.yml), then checks, one line each, without changing anything: "
            "the database (reachable, its schema current or migratable), the signing key (it signs), Slack "
            "(auth.test with SLACK_BOT_TOKEN; each channel, user and usergroup the policy names) and the IdP "
            "(its discovery document and endpoints; the client credentials, by introspecting a made-up token). "
            "Exit codes: 0 everything is ok, 1 a check found a problem, 2 the settings or the policy file do not load."
        ),
    )
    check.add_argument("--offline", action="store_true", help="skip the checks that talk to Slack and the IdP")
    check.set_defaults(func=cmd_check)
    commands.add_parser(
        "migrate",
        parents=[common],
        help="bring the database schema up to date",
        description=(
            f"Reads JIT_DATABASE_URL and JIT_AUDIT_KEY from {_READS_WHERE}; creates the SQLite file and the audit "
            "key file beside it when they do not exist yet (serve does this too, at start). "
            "Exit codes: 0 the schema is current, 2 cannot (one line says why)."
        ),
    ).set_defaults(func=cmd_migrate)
    commands.add_parser(
        "keygen",
        parents=[common],
        help="print a new key (for JIT_ENCRYPTION_KEY or JIT_AUDIT_KEY)",
        description="Reads nothing and writes nothing: prints 32 random bytes in URL-safe base64. Exit code: 0.",
    ).set_defaults(func=cmd_keygen)
    policy = commands.add_parser(
        "policy",
        parents=[common],
        help="check and test the policy file before it ships",
        description="Tools for the policy file; see check and test.",
    ).add_subparsers(dest="policy_command", required=True)
    policy_check = policy.add_parser(
        "check",
        parents=[common],
        help="validate a policy file and say what each rule does and what looks wrong",
        description=(
            "Reads FILE (default: JIT_POLICY_FILE from .env in the working folder and the environment, or "
            "policy.yml) and nothing else. Lists each rule with what it matches, then warns about rules that "
            "can never match or that an earlier rule always takes first, groups no rule uses, and resources "
            "no rule names. Exit codes: 0 valid (warnings or not; 1 with --strict when there are warnings), "
            "2 the file is not a valid policy (one line per problem)."
        ),
    )
    policy_check.add_argument("file", nargs="?", type=Path, help="the policy file (default: JIT_POLICY_FILE)")
    policy_check.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    policy_check.set_defaults(func=cmd_policy_check)
    policy_test = policy.add_parser(
        "test",
        parents=[common],
        help="decide a table of example requests with a policy file and compare with what you expect",
        description=(
            "Reads FILE (a policy) and CASES (YAML: cases: [{description, requester, groups, resource, scopes, "
            "duration, reason, time, expect: {effect, rule}}]); talks to nothing. Prints pass or FAIL per case "
            "and, for a failure, what each rule made of the request. "
            "Exit codes: 0 every case passed, 1 a case failed, 2 a file is not valid (one line per problem)."
        ),
    )
    policy_test.add_argument("file", type=Path, help="the policy file")
    policy_test.add_argument("cases", type=Path, help="the cases file")
    policy_test.set_defaults(func=cmd_policy_test)
    policy_replay = policy.add_parser(
        "replay",
        parents=[common],
        help="decide recorded requests again with a proposed policy and say what would change",
        description=(
            f"Reads FILE (the proposed policy) and the recorded requests in JIT_DATABASE_URL (from {_READS_WHERE}), "
            "read-only; sends nothing. Prints each request whose decision would change (request, when, requester, "
            "old, new, rule) and counts by kind of change. The usergroups requesters were in are not recorded: "
            "--usergroups FILE (YAML: U0ALICE: [S0ONCALL]) says what to assume; without it they are unknown. "
            "Exit codes: 0 replayed, 2 a file, the database or an option is wrong (one line)."
        ),
    )
    policy_replay.add_argument("file", type=Path, help="the proposed policy file")
    policy_replay.add_argument("--since", default="30d", help="how far back (a duration, default 30d)")
    policy_replay.add_argument("--usergroups", type=Path, help="YAML: each requester's usergroups to assume")
    policy_replay.add_argument("--format", choices=["text", "json"], default="text")
    policy_replay.set_defaults(func=cmd_policy_replay)
    audit = commands.add_parser(
        "audit",
        parents=[common],
        help="audit trail tools",
        description="Tools for the audit trail; see verify and rekey.",
    ).add_subparsers(dest="audit_command", required=True)
    audit_verify = audit.add_parser(
        "verify",
        parents=[common],
        help="check the keyed hash chain of the audit trail",
        description=(
            f"Reads JIT_DATABASE_URL and JIT_AUDIT_KEY (or the jit-audit-key file beside the database) from "
            f"{_READS_WHERE}. Writes and creates nothing. "
            "Exit codes: 0 intact, 1 broken, not verified or not holding the expected head (the event is "
            "named), 2 cannot read the trail."
        ),
    )
    audit_verify.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        help="a head published earlier (a digest ends with it): fail unless the trail still holds that event "
        "with that link, so a tail cut off or a rewritten head is caught",
    )
    audit_verify.set_defaults(func=cmd_audit_verify)
    audit_export = audit.add_parser(
        "export",
        parents=[common],
        help="print audit events for a SIEM, one per line, with their seq and hash",
        description=(
            f"Reads JIT_DATABASE_URL from {_READS_WHERE}; streams the events oldest first in constant memory. "
            "--since and --until take a span back from now (30d, 12h), a date (UTC) or an ISO time; "
            "--until is exclusive. csv columns: " + ", ".join(EXPORT_COLUMNS) + " (details as JSON text). "
            "Exit codes: 0 exported (the count goes to stderr; also when the reader stops early, as head does), "
            "2 an option or the database is wrong (one line)."
        ),
    )
    audit_export.add_argument("--since", metavar="WHEN")
    audit_export.add_argument("--until", metavar="WHEN")
    audit_export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    audit_export.set_defaults(func=cmd_audit_export)
    audit.add_parser(
        "rekey",
        parents=[common],
        help="link a trail written before JIT_AUDIT_KEY existed with the key (once, after an upgrade)",
        description=(
            f"Reads JIT_DATABASE_URL and JIT_AUDIT_KEY from {_READS_WHERE}; checks the old unkeyed links, then "
            "re-links the whole chain with the key and records that it did. "
            "Exit codes: 0 re-linked, 1 refused (the reason is printed; nothing changed), 2 cannot read the trail."
        ),
    ).set_defaults(func=cmd_audit_rekey)
    digest = commands.add_parser(
        "digest",
        parents=[common],
        help="the security leads' digest of one day: counts against the week before, anomalies, the audit head",
        description=(
            f"Reads the policy file JIT_POLICY_FILE (its digest: settings), JIT_DATABASE_URL and JIT_AUDIT_KEY (or "
            f"the jit-audit-key file beside the database) from {_READS_WHERE}; read-only, sends nothing. The day is "
            "a local date in digest.timezone (default: yesterday there). It verifies the whole audit trail, and "
            "ends with the chain's head and whether it verified. --chart FILE also writes a PNG: the last 7 days "
            "by outcome and the day's top resources. "
            "Exit codes: 0 written, 1 written but the audit trail did not verify (the digest's last line says "
            "why), 2 an option, the policy or the database is wrong (one line)."
        ),
    )
    digest.add_argument("--date", metavar="YYYY-MM-DD", help="the local day (default: yesterday in digest.timezone)")
    digest.add_argument("--format", choices=["text", "json"], default="text")
    digest.add_argument("--chart", metavar="FILE", type=Path, help="also write a PNG chart to FILE")
    digest.set_defaults(func=cmd_digest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    global _stderr_as_log
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = args.log_format or os.environ.get(LOG_FORMAT_ENV) or LogFormat.TEXT.value
    if chosen not in {f.value for f in LogFormat}:
        parser.error(f"{LOG_FORMAT_ENV}={chosen!r}: choose text or json")
    log_format = LogFormat(chosen)
    configure_logging(log_format=log_format)
    _stderr_as_log = log_format is LogFormat.JSON
    for line in misspelt_settings(os.environ):
        _err(f"jit-bot: warning: {line}", logging.WARNING)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        for line in exc.lines:
            _err(f"jit-bot: {line}")
        return 2
    except (SigningKeyError, KeyFileError) as exc:
        _err(f"jit-bot: {exc}")
        return 2
    except OperationalError as exc:
        # The driver's own first line says what failed (refused, unknown host, no such file); the URL,
        # which may hold a password, is not repeated.
        said = str(exc.orig or exc).strip()
        reason = one_line(said.splitlines()[0] if said else type(exc).__name__, 200)
        _err(f"jit-bot: cannot reach the database ({reason}); is it running, and is JIT_DATABASE_URL right?")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
