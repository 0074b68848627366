"""Upgrading a database that holds data: every revision must run on a live deployment, not only on an empty one."""

from __future__ import annotations

import base64

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text

from bot.store.audit import bind_audit_key
from bot.store.db import MIGRATIONS, make_engine, migrate
from tests.world import AUDIT_KEY

AT = "2026-11-30 12:00:00+00:00"


def test_an_upgrade_keeps_requests_votes_grants_and_audit_events(database_url: str) -> None:
    engine = bind_audit_key(make_engine(database_url), base64.urlsafe_b64decode(AUDIT_KEY))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO access_request (id, requester_slack_id, requester_subject, resource, audience, scopes,"
                    " duration_seconds, reason, approvals_required, approver_channel, status, created_at, updated_at)"
                    " VALUES ('R000000001', 'U0REQUESTER', 'alice', 'prod-db', 'https://db.internal.example', 'read',"
                    " 1800, 'before the upgrade', 1, 'C0APPROVERS', 'active', :at, :at)"
                ),
                {"at": AT},
            )
            connection.execute(
                text(
                    "INSERT INTO vote (request_id, voter_slack_id, choice, created_at)"
                    " VALUES ('R000000001', 'U0APPROVER1', 'approve', :at)"
                ),
                {"at": AT},
            )
            connection.execute(
                text(
                    'INSERT INTO "grant" (request_id, status, audience, granted_scopes, token_type, token_fingerprint,'
                    " issued_at, expires_at, attempts) VALUES ('R000000001', 'active', 'https://db.internal.example',"
                    " 'read', 'Bearer', 'sha256:00', :at, :at, 0)"
                ),
                {"at": AT},
            )

        migrate(engine)

        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM vote")).scalar() == 1
            grant = connection.execute(text('SELECT status, refusal, in_attempt FROM "grant"')).one()
            assert (grant[0], grant[1], bool(grant[2])) == ("active", None, False)
            request = connection.execute(text("SELECT reason, origin, rule, approvers FROM access_request")).one()
            # A request from before rules were applied was decided by no rule, under its resource's approvers.
            assert tuple(request) == ("before the upgrade", None, None, None)
        indexes = {index["name"] for index in inspect(engine).get_indexes("access_request")}
        assert "ix_access_request_requester_rule" in indexes
        tables = set(inspect(engine).get_table_names())
        assert {"outbox", "access_request", "vote", "grant", "audit_event"} <= tables
    finally:
        engine.dispose()


def test_0006_downgrades_and_upgrades_again_keeping_requests(database_url: str) -> None:
    """The rule columns come off without losing the requests they were on, and go back on empty."""
    engine = bind_audit_key(make_engine(database_url), base64.urlsafe_b64decode(AUDIT_KEY))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        migrate(engine)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO access_request (id, requester_slack_id, requester_subject, resource, audience, scopes,"
                    " duration_seconds, reason, approvals_required, approver_channel, status, created_at, updated_at,"
                    " rule, approvers) VALUES ('R000000002', 'U0REQUESTER', 'alice', 'prod-db',"
                    " 'https://db.internal.example', 'write', 1800, 'two dbas', 2, 'C0APPROVERS', 'pending', :at, :at,"
                    " 'two-dbas', 'U0APPROVER2 U0GROUPMEMB')"
                ),
                {"at": AT},
            )
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0005")
        columns = {column["name"] for column in inspect(engine).get_columns("access_request")}
        assert not {"rule", "approvers"} & columns
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        with engine.connect() as connection:
            row = connection.execute(text("SELECT reason, rule, approvers FROM access_request")).one()
            assert tuple(row) == ("two dbas", None, None)
    finally:
        engine.dispose()


def test_0011_downgrades_and_upgrades_again_keeping_an_extension_s_requests(database_url: str) -> None:
    """The extension columns come off without losing the requests they were on, and go back on empty."""
    engine = bind_audit_key(make_engine(database_url), base64.urlsafe_b64decode(AUDIT_KEY))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        migrate(engine)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO access_request (id, requester_slack_id, requester_subject, resource, audience, scopes,"
                    " duration_seconds, reason, approvals_required, approver_channel, status, created_at, updated_at,"
                    " extends, prior_seconds) VALUES ('R000000003', 'U0REQUESTER', 'alice', 'prod-db',"
                    " 'https://db.internal.example', 'read', 1800, 'more time', 1, 'C0APPROVERS', 'pending', :at, :at,"
                    " 'R000000001', 3600)"
                ),
                {"at": AT},
            )
        assert "ix_access_request_extends" in {i["name"] for i in inspect(engine).get_indexes("access_request")}
        assert "replaced_by" in {column["name"] for column in inspect(engine).get_columns("grant")}
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0009")
        columns = {column["name"] for column in inspect(engine).get_columns("access_request")}
        assert not {"extends", "prior_seconds"} & columns
        assert "replaced_by" not in {column["name"] for column in inspect(engine).get_columns("grant")}
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        with engine.connect() as connection:
            row = connection.execute(text("SELECT reason, extends, prior_seconds FROM access_request")).one()
            assert tuple(row) == ("more time", None, None)
    finally:
        engine.dispose()
