"""Settings from the environment / .env, and the policy file: defaults, and errors that name the problem."""

from __future__ import annotations

import copy
import os
import re
import traceback
from collections.abc import Callable
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from pydantic import ValidationError

from bot.config import ConfigError, Settings, load_policy, load_settings, load_store_settings, misspelt_settings
from tests.world import (
    APPROVER_1,
    APPROVER_2,
    APPROVERS_CHANNEL,
    AUDIT_CHANNEL,
    BOT_TOKEN,
    GROUP_MEMBER,
    POLICY,
    REQUESTER,
    SIGNING_SECRET,
)

APP_TOKEN = "xapp-1-A0JITBOT01-1234567890-0a1b2c3d4e5f6a7b8c9d"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable from the developer's shell and no stray .env may leak into these tests."""
    for name in list(os.environ):
        if name.lower() in Settings.model_fields:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def good_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)


def config_lines(**overrides: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    return caught.value.lines


# --- settings: values and defaults ----------------------------------------------------------------


def test_defaults() -> None:
    settings = Settings(_env_file=None, slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET)  # type: ignore[call-arg]
    assert settings.slack_bot_token.get_secret_value() == BOT_TOKEN
    assert settings.slack_signing_secret.get_secret_value() == SIGNING_SECRET
    assert settings.slack_app_token is None
    assert settings.socket_mode is False
    assert settings.slack_api_url == "https://slack.com/api/"
    assert settings.jit_database_url == "sqlite:///jit.db"
    assert settings.jit_policy_file == Path("policy.yml")
    assert settings.jit_http_host == "127.0.0.1"
    assert settings.jit_http_port == 3000
    assert settings.public_url == "http://127.0.0.1:3000"


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    good_env(monkeypatch)
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9999/api")
    monkeypatch.setenv("JIT_DATABASE_URL", "postgresql+psycopg://jit@db.internal/jit")
    monkeypatch.setenv("JIT_POLICY_FILE", "/etc/jit/policy.yml")
    monkeypatch.setenv("JIT_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("JIT_HTTP_PORT", "8080")

    settings = load_settings()

    assert settings.slack_bot_token.get_secret_value() == BOT_TOKEN
    assert settings.slack_signing_secret.get_secret_value() == SIGNING_SECRET
    assert settings.slack_app_token is not None and settings.slack_app_token.get_secret_value() == APP_TOKEN
    assert settings.socket_mode is True
    # slack_sdk appends the method name to the base URL, so the slash is added when missing.
    assert settings.slack_api_url == "http://127.0.0.1:9999/api/"
    assert settings.jit_database_url == "postgresql+psycopg://jit@db.internal/jit"
    assert settings.jit_policy_file == Path("/etc/jit/policy.yml")
    assert (settings.jit_http_host, settings.jit_http_port) == ("0.0.0.0", 8080)
    assert settings.public_url == "http://0.0.0.0:8080"


def test_dotenv_is_read_and_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"SLACK_BOT_TOKEN={BOT_TOKEN}\n"
        f"SLACK_SIGNING_SECRET={SIGNING_SECRET}\n"
        "SLACK_APP_TOKEN=\n"
        "JIT_HTTP_PORT=4000\n"
        "JIT_POLICY_FILE=from-dotenv.yml\n"
    )
    monkeypatch.setenv("JIT_HTTP_PORT", "5000")

    settings = load_settings()

    assert settings.slack_bot_token.get_secret_value() == BOT_TOKEN
    assert settings.jit_policy_file == Path("from-dotenv.yml")
    assert settings.jit_http_port == 5000
    # An empty SLACK_APP_TOKEN= line (what .env.example says for HTTP mode) means HTTP mode.
    assert settings.slack_app_token is None
    assert settings.socket_mode is False


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        pytest.param(None, "http://10.0.0.5:8443", id="default-from-host-and-port"),
        pytest.param("https://jit.example.com", "https://jit.example.com", id="override"),
        pytest.param("https://jit.example.com/bot/", "https://jit.example.com/bot", id="trailing-slash-dropped"),
    ],
)
def test_public_url(monkeypatch: pytest.MonkeyPatch, public_url: str | None, expected: str) -> None:
    good_env(monkeypatch)
    monkeypatch.setenv("JIT_HTTP_HOST", "10.0.0.5")
    monkeypatch.setenv("JIT_HTTP_PORT", "8443")
    if public_url is not None:
        monkeypatch.setenv("JIT_PUBLIC_URL", public_url)
    assert load_settings().public_url == expected


# --- settings: secrets never shown --------------------------------------------------------------


def test_secrets_are_hidden_in_repr_str_and_dumps() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET, slack_app_token=APP_TOKEN
    )
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        for secret in (BOT_TOKEN, SIGNING_SECRET, APP_TOKEN):
            assert secret not in shown
        assert "**********" in shown


def test_config_errors_never_carry_the_rejected_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    user_token = "xoxp-9999999999-8888888888-userTOKENsecret"
    app_token_in_wrong_place = "xoxb-7777777777-6666666666-botTOKENsecret"
    monkeypatch.setenv("SLACK_BOT_TOKEN", user_token)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)
    monkeypatch.setenv("SLACK_APP_TOKEN", app_token_in_wrong_place)
    monkeypatch.setenv("JIT_HTTP_PORT", "not-a-port")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    error = caught.value
    assert len(error.lines) == 3
    rendered = "".join(traceback.format_exception(error)) + repr(error) + str(error)
    for secret in (user_token, app_token_in_wrong_place, SIGNING_SECRET):
        assert secret not in rendered
    # pydantic's report (which quotes the input) is not chained into the traceback.
    assert "input_value" not in rendered


def test_validation_error_from_settings_itself_hides_the_token() -> None:
    user_token = "xoxp-9999999999-8888888888-userTOKENsecret"
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, slack_bot_token=user_token, slack_signing_secret=SIGNING_SECRET)  # type: ignore[call-arg]
    assert user_token not in str(caught.value)


# --- settings: one line per problem, naming the variable ----------------------------------------


@pytest.mark.parametrize("missing", ["SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"])
def test_each_missing_secret_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    good_env(monkeypatch)
    monkeypatch.delenv(missing)

    lines = config_lines()

    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{missing} is not set"), lines


@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_http_mode_without_a_signing_secret_says_which_mode_needs_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    good_env(monkeypatch)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", value)

    lines = config_lines(_env_file=None)

    assert lines == [
        "SLACK_SIGNING_SECRET is not set: HTTP mode needs it to verify Slack's requests "
        "(Basic Information → Signing Secret); Socket Mode (SLACK_APP_TOKEN set) does not"
    ]


def test_socket_mode_needs_no_signing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Socket Mode receives events over its websocket and serves no /slack/events to verify."""
    good_env(monkeypatch)
    monkeypatch.delenv("SLACK_SIGNING_SECRET")
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)

    settings = load_settings(_env_file=None)

    assert settings.socket_mode is True
    assert settings.slack_signing_secret is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.0/8, 2001:db8::/32", ("10.0.0.0/8", "2001:db8::/32")),
        ("", ()),
    ],
    ids=["two", "none-by-default"],
)
def test_trusted_proxies_are_networks(monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[str, ...]) -> None:
    good_env(monkeypatch)
    monkeypatch.setenv("JIT_TRUSTED_PROXIES", value)
    settings = load_settings(_env_file=None)
    assert tuple(str(n) for n in settings.trusted_proxies) == expected


def test_a_trusted_proxy_that_is_not_a_network_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    good_env(monkeypatch)
    monkeypatch.setenv("JIT_TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal")
    assert config_lines(_env_file=None) == [
        "JIT_TRUSTED_PROXIES 'proxy.internal' is not a network like 10.0.0.0/8 or 2001:db8::/32"
    ]


def test_every_problem_gets_its_own_line() -> None:
    lines = config_lines(_env_file=None, jit_http_port=70000)
    assert len(lines) == 3, lines
    assert lines[0].startswith("SLACK_BOT_TOKEN is not set")
    assert lines[1].startswith("SLACK_SIGNING_SECRET is not set")
    assert lines[2].startswith("JIT_HTTP_PORT ")
    assert "65535" in lines[2]


# What people leave in a secret's place, by the variable it is left in.
PLACEHOLDERS = {
    "bot-token-from-env-example": ("SLACK_BOT_TOKEN", "xoxb-replace-me"),
    "signing-secret-replace-me": ("SLACK_SIGNING_SECRET", "replace-me"),
    "app-token-from-env-example": ("SLACK_APP_TOKEN", "xapp-replace-me"),
    "env-example-any-case": ("SLACK_SIGNING_SECRET", " Replace-Me "),
    "empty": ("SLACK_BOT_TOKEN", ""),
    "blank": ("SLACK_BOT_TOKEN", "   "),
}


@pytest.mark.parametrize(("variable", "value"), list(PLACEHOLDERS.values()), ids=list(PLACEHOLDERS))
def test_placeholder_secret_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    good_env(monkeypatch)
    monkeypatch.setenv(variable, value)

    lines = config_lines()

    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{variable} "), lines
    assert "placeholder" in lines[0]
    if value.strip():
        assert value not in lines[0]


# Real secrets that an earlier "looks like a placeholder" guess refused.
REAL_LOOKING = {
    "angle-bracket": ("SLACK_SIGNING_SECRET", "a1<b2c3d4e5"),
    "your-inside": ("SLACK_SIGNING_SECRET", "0f9e8d7your-6c5b4a"),
    "dots": ("OIDC_CLIENT_SECRET", "s3cr3t...with-dots"),
}


@pytest.mark.parametrize(("variable", "value"), list(REAL_LOOKING.values()), ids=list(REAL_LOOKING))
def test_secrets_that_merely_look_odd_are_accepted(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    good_env(monkeypatch)
    monkeypatch.setenv(variable, value)

    settings = load_settings(_env_file=None)

    assert getattr(settings, variable.lower()).get_secret_value() == value


def test_every_env_example_placeholder_is_refused() -> None:
    """The refused values are exactly those .env.example ships with: if it gains one, so must the check."""
    example = Path(__file__).parents[1] / ".env.example"
    shipped = {name: value for name, value in dotenv_values(example).items() if value and "replace-me" in value}
    assert shipped, "the .env.example placeholders moved"
    for name, value in shipped.items():
        with pytest.raises(ConfigError) as caught:
            load_settings(
                _env_file=None,
                **{"slack_bot_token": BOT_TOKEN, "slack_signing_secret": SIGNING_SECRET, name.lower(): value},
            )
        assert any(line.startswith(f"{name} still holds a placeholder") for line in caught.value.lines), (
            caught.value.lines
        )


def test_the_app_token_placeholder_says_how_to_choose_http_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    good_env(monkeypatch)
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-replace-me")

    assert config_lines(_env_file=None) == [
        "SLACK_APP_TOKEN still holds a placeholder; put the app-level token here "
        "(Basic Information → App-Level Tokens), or empty it for HTTP mode"
    ]


def test_placeholders_in_dotenv_are_caught(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "SLACK_BOT_TOKEN=xoxb-replace-me\nSLACK_SIGNING_SECRET=replace-me\nSLACK_APP_TOKEN=\n"
    )
    lines = config_lines()
    assert [line.split()[0] for line in lines] == ["SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"]
    assert all("placeholder" in line for line in lines)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        pytest.param(
            "SLACK_BOT_TOKEN",
            "xoxp-1111111111-2222222222-usertoken",
            "SLACK_BOT_TOKEN must be a bot token starting with xoxb-",
            id="user-token-as-bot-token",
        ),
        pytest.param(
            "SLACK_BOT_TOKEN", APP_TOKEN, "SLACK_BOT_TOKEN must be a bot token starting with xoxb-", id="app-as-bot"
        ),
        pytest.param(
            "SLACK_APP_TOKEN",
            BOT_TOKEN,
            "SLACK_APP_TOKEN must be an app-level token starting with xapp-",
            id="bot-token-as-app-token",
        ),
        pytest.param("SLACK_API_URL", "slack.com/api", "SLACK_API_URL must be an http(s) URL", id="api-url-scheme"),
    ],
)
def test_wrong_shape_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    good_env(monkeypatch)
    monkeypatch.setenv(variable, value)

    lines = config_lines()

    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines
    assert value not in lines[0]


# --- policy file --------------------------------------------------------------------------------


def write_policy(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "policy.yml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_good_policy_parses_with_the_right_values(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, POLICY))

    assert policy.request_timeout == timedelta(minutes=30)
    assert policy.channels.audit == AUDIT_CHANNEL
    assert policy.identities == {REQUESTER: "alice", APPROVER_1: "bob", APPROVER_2: "carol", GROUP_MEMBER: "dave"}
    assert policy.identity.email_fallback is False
    assert policy.resource_names == ("prod-db", "billing", "k8s")

    prod = policy.resource("prod-db")
    assert prod is not None
    assert prod.description == "Production Postgres"
    assert prod.audience == "https://db.internal.example"
    assert prod.scopes == ("read", "write")
    assert prod.max_duration == timedelta(hours=2)
    assert prod.approver_channel == APPROVERS_CHANNEL
    assert prod.approvers == (APPROVER_1, APPROVER_2)
    assert prod.approvals_required == 1
    assert prod.user_approvers == {APPROVER_1, APPROVER_2}
    assert prod.usergroup_approvers == frozenset()

    billing = policy.resource("billing")
    assert billing is not None
    assert (billing.approvals_required, billing.max_duration) == (2, timedelta(hours=1))

    k8s = policy.resource("k8s")
    assert k8s is not None
    assert k8s.usergroup_approvers == {"S0PLATFORM"}
    assert k8s.user_approvers == frozenset()
    assert k8s.max_duration == timedelta(minutes=30)

    assert policy.resource("nope") is None


def test_minimal_policy_gets_the_defaults(tmp_path: Path) -> None:
    text = (
        "resources:\n"
        "  - name: wiki\n"
        "    audience: https://wiki.example\n"
        "    scopes: [edit]\n"
        "    max_duration: 900s\n"  # a bare 900 is refused: it needs a unit
        f"    approver_channel: {APPROVERS_CHANNEL}\n"
        "    approvers: [S0PLATFORM]\n"
        "    approvals_required: 3\n"  # a usergroup may hold any number of people
    )
    policy = load_policy(write_policy(tmp_path, text))

    assert policy.request_timeout == timedelta(minutes=30)
    assert policy.channels.audit is None
    assert policy.channels.digest is None
    assert policy.security_leads == ()
    # The digest: 09:00 UTC, business hours mon-fri 08:00-19:00.
    assert (policy.digest.time, policy.digest.timezone) == (time(9), "UTC")
    hours = policy.digest.business_hours
    assert (hours.days, hours.start, hours.end) == (("mon", "tue", "wed", "thu", "fri"), time(8), time(19))
    assert policy.identities == {}
    assert policy.identity.email_fallback is False
    (wiki,) = policy.resources
    assert wiki.description == ""
    assert wiki.max_duration == timedelta(minutes=15)
    assert wiki.approvals_required == 3


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """A mutation setting e.g. ``resources.0.approvers`` on a copy of POLICY."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return mutate


def _rename_key(index: int, old: str, new: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        resource = data["resources"][index]
        resource[new] = resource.pop(old)

    return mutate


def _duplicate_resource(data: dict[str, Any]) -> None:
    data["resources"].append(copy.deepcopy(data["resources"][0]))


def _key(path: str) -> str:
    """The key an error names for a dotted path into POLICY: ``resources.1.scopes`` is ``resources[1].scopes``."""
    return re.sub(r"\.(\d+)", r"[\1]", path)


# A value set at a dotted path of a copy of POLICY -> what the one error line says about that key.
WRONG: dict[str, tuple[str, Any, str]] = {
    "bad-duration": ("resources.1.max_duration", "2 hours", "'2 hours' is not a duration like 90s, 15m, 2h or 1h30m"),
    "duration-over-a-week": ("resources.1.max_duration", "8d", "longer than the 7-day limit"),
    "zero-duration": ("resources.1.max_duration", "0m", "longer than zero"),
    "bad-request-timeout": ("request_timeout", "forever", "'forever' is not a duration"),
    "approver-not-a-slack-id": (
        "resources.0.approvers",
        [APPROVER_1, "bob@example.com"],
        "'bob@example.com' is neither a Slack user id (U…) nor a usergroup id (S…)",
    ),
    "no-approvers": ("resources.0.approvers", [], "must list at least one entry"),
    "approver-channel-not-an-id": (
        "resources.2.approver_channel",
        "#approvers",
        "'#approvers' is not a Slack channel id",
    ),
    "audit-channel-not-an-id": ("channels.audit", "audit-log", "'audit-log' is not a Slack channel id"),
    "digest-channel-not-an-id": ("channels.digest", "#security", "'#security' is not a Slack channel id"),
    "security-lead-not-a-slack-id": (
        "security_leads",
        ["U0LEAD", "lead@example.com"],
        "'lead@example.com' is neither a Slack user id (U…, W…) nor a usergroup id (S…)",
    ),
    "security-lead-twice": ("security_leads", ["U0LEAD", "S0SECLEADS", "U0LEAD"], "lists 'U0LEAD' twice"),
    "security-leads-not-a-list": ("security_leads", "U0LEAD", "must be a list"),
    "zero-approvals-required": ("resources.0.approvals_required", 0, "must be at least 1, not '0'"),
    "too-many-approvals-required": ("resources.0.approvals_required", 11, "must be at most 10, not '11'"),
    # pydantic's own words ("Input should be a valid tuple") are about Python; these are about the key.
    "scopes-not-a-list": (
        "resources.0.scopes",
        "read",
        "must be a list, like [a, b] or one '- item' per line, not 'read'",
    ),
    "approvals-required-not-a-number": ("resources.0.approvals_required", "two", "must be a whole number, not 'two'"),
    "channels-not-a-mapping": ("channels", "C0AUDIT", "must be a mapping of keys to values"),
    "resource-not-a-mapping": (
        "resources.1",
        "billing",
        "must be a mapping of keys to values (key: value, one per line), not 'billing'",
    ),
    "email-fallback-not-a-bool": ("identity.email_fallback", "sometimes", "must be true or false, not 'sometimes'"),
    "empty-audience": ("resources.0.audience", "", "must not be empty"),
    # A claim is one value the resource server can read; structure and odd names are refused.
    "claims-not-a-mapping": ("resources.0.claims", ["row_limit"], "must be a mapping of keys to values"),
    "claim-bad-name": ("resources.0.claims", {"row limit": 1}, "'row limit' is not a claim name"),
    "pickup-network-not-a-cidr": (
        "resources.0.pickup_networks",
        ["office"],
        "'office' is not a network like 10.0.0.0/8 or 2001:db8::/32",
    ),
    "pickup-network-host-bits": (
        "resources.0.pickup_networks",
        ["10.1.2.3/8"],
        "'10.1.2.3/8' has host bits set; did you mean 10.0.0.0/8?",
    ),
    "duplicate-scope": ("resources.0.scopes", ["read", "write", "read"], "lists scope 'read' twice"),
    "scope-with-space": ("resources.0.scopes", ["read write"], "'read write' is not a valid scope name"),
    "bad-resource-name": ("resources.0.name", "Prod DB", "must be lower-case letters"),
    "empty-resources": ("resources", [], "must list at least one entry"),
    "identities-key-not-a-user-id": (
        "identities",
        {"alice@example.com": "alice"},
        "key 'alice@example.com' is not a Slack user id",
    ),
    "identities-empty-subject": ("identities", {REQUESTER: " "}, f"'{REQUESTER}' maps to an empty IdP subject"),
    "unknown-top-level-key": ("approvers", [APPROVER_1], "is not a known key"),
    # A bare number could mean seconds or minutes: it is refused, never guessed.
    "duration-without-a-unit": ("resources.0.max_duration", 90, "90 has no unit: write 90s, 90m or 90h"),
    "timeout-without-a-unit": ("request_timeout", 1800, "1800 has no unit"),
}

# Files that are not a policy at all -> what the one error line (naming no key) says.
NOT_POLICIES = {
    "invalid-yaml-bad-indent": (
        "resources:\n  - name: prod-db\n     audience: https://db.internal.example\n",
        "not valid YAML (line 3): mapping values are not allowed here",
    ),
    "invalid-yaml-unclosed-bracket": (
        "request_timeout: 30m\nresources: [\n  {name: prod-db,\n  scopes: [read}\n",
        "not valid YAML (line 4)",
    ),
    "top-level-list": ("- prod-db\n- billing\n", "must be a mapping with at least a 'resources' key"),
    "empty-file": ("", "must be a mapping with at least a 'resources' key"),
}

# (mutation of POLICY, or raw file text) -> lines that must appear, each as (key path, problem).
BAD_POLICIES = [
    pytest.param(
        _rename_key(0, "max_duration", "max_durration"),
        [("resources[0].max_durration", "is not a known key"), ("resources[0].max_duration", "is required")],
        id="unknown-resource-key-typo",
    ),
    # Rules across keys are reported on the resource as a whole.
    pytest.param(
        _set("resources.1.approvals_required", 3),
        [("resources[1]", "approvals_required is 3 but only 2 approver(s) are listed")],
        id="approvals-required-above-approvers",
    ),
    pytest.param(
        _set("resources.1.approvers", [APPROVER_1, APPROVER_1]),
        [("resources[1]", "approvals_required is 2 but only 1 approver(s) are listed")],
        id="approvals-required-above-distinct-approvers",
    ),
    pytest.param(
        _duplicate_resource, [("resources", "resource 'prod-db' is defined twice")], id="duplicate-resource-name"
    ),
    # An unknown key inside a known one is named by its full path.
    pytest.param(
        _set("identity", {"email_fallbak": True}),
        [("identity.email_fallbak", "is not a known key")],
        id="unknown-nested-key",
    ),
    # The digest's keys (all optional) name the key below digest: that is wrong.
    pytest.param(
        _set("digest", {"time": "9am"}), [("digest.time", "'9am' is not a time like \"08:00\"")], id="digest-time"
    ),
    pytest.param(_set("digest", {"time": 900}), [("digest.time", "put times in quotes")], id="digest-time-unquoted"),
    pytest.param(
        _set("digest", {"timezone": "Europe/Berlinn"}),
        [("digest.timezone", "'Europe/Berlinn' is not a time zone (an IANA name like Europe/Berlin, or UTC)")],
        id="digest-timezone",
    ),
    pytest.param(
        _set("digest", {"business_hours": {"days": ["mon", "fryday"]}}),
        [("digest.business_hours.days", "'fryday' is not a day")],
        id="business-hours-day",
    ),
    pytest.param(
        _set("digest", {"business_hours": {"from": "08:00", "to": "8:00"}}),
        [("digest.business_hours", "from and to are both 08:00, so there would be no business hours at all")],
        id="business-hours-empty",
    ),
    pytest.param(
        _set("digest", {"timezone": "Europe/Berlin", "business_hours": {"timezone": "UTC"}}),
        [("digest.business_hours.timezone", "is not set here: business hours are on the clock of digest.timezone")],
        id="business-hours-own-timezone",
    ),
    pytest.param(
        _set("digest", {"business_hours": {"until": "18:00"}}),
        [("digest.business_hours.until", "is not a known key")],
        id="business-hours-typo",
    ),
    *(pytest.param(_set(path, value), [(_key(path), why)], id=case) for case, (path, value, why) in WRONG.items()),
    *(pytest.param(text, [(None, problem)], id=case) for case, (text, problem) in NOT_POLICIES.items()),
]


@pytest.mark.parametrize(("change", "expected"), BAD_POLICIES)
def test_bad_policy_names_the_key_and_the_problem(
    tmp_path: Path, change: Mutation | str, expected: list[tuple[str | None, str]]
) -> None:
    if isinstance(change, str):
        path = write_policy(tmp_path, change)
    else:
        data = copy.deepcopy(POLICY)
        change(data)
        path = write_policy(tmp_path, data)

    with pytest.raises(ConfigError) as caught:
        load_policy(path)

    lines = caught.value.lines
    assert len(lines) == len(expected), lines
    for key, problem in expected:
        prefix = f"{path}: {key}: " if key is not None else f"{path}: "
        assert any(line.startswith(prefix) and problem in line for line in lines), (prefix, problem, lines)


def test_a_claim_that_is_not_one_value_names_the_claim(tmp_path: Path) -> None:
    data = copy.deepcopy(POLICY)
    data["resources"][0]["claims"] = {"row_limit": 10, "limits": {"rows": 1}}
    with pytest.raises(ConfigError) as caught:
        load_policy(write_policy(tmp_path, data))
    path = tmp_path / "policy.yml"
    assert caught.value.lines == [
        f"{path}: resources[0].claims.limits: must be one value (text, a number, true or false), not a mapping"
    ]


def test_errors_inside_resources_are_not_also_reported_on_the_list(tmp_path: Path) -> None:
    """An error in every resource left the list with no valid entry, and pydantic then also said the
    list was empty: a line about a problem that was not there."""
    data = copy.deepcopy(POLICY)
    for resource in data["resources"]:
        resource["scopes"] = "read"
    with pytest.raises(ConfigError) as caught:
        load_policy(write_policy(tmp_path, data))

    lines = caught.value.lines
    assert len(lines) == len(POLICY["resources"]), lines
    assert all(": resources[" in line and "must be a list" in line for line in lines), lines
    assert not any("Input should" in line for line in lines), lines


def test_missing_policy_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "policy.yml"
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert caught.value.lines == [f"{path}: policy file not found (set JIT_POLICY_FILE or create it)"]


def test_policy_that_is_a_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path)
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith(f"{tmp_path}: cannot be read")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    # A second approvals_required silently winning would weaken a rule the author thought was there.
    data = yaml.safe_dump(POLICY, sort_keys=False)
    text = data.replace("  approvals_required: 2\n", "  approvals_required: 2\n  approvals_required: 1\n", 1)
    assert text != data
    with pytest.raises(ConfigError) as caught:
        load_policy(write_policy(tmp_path, text))
    assert any("approvals_required" in line and "duplicate" in line for line in caught.value.lines)


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Slack settings of the right shape, and ``values``, in the environment."""
    for name, value in {"SLACK_BOT_TOKEN": "xoxb-1-2-abc", "SLACK_SIGNING_SECRET": "abc123def456", **values}.items():
        monkeypatch.setenv(name, value)


def test_idp_settings_need_client_and_encryption_key(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, OIDC_ISSUER="https://idp.example.com/")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = caught.value.lines
    assert len(lines) == 3, lines
    assert any(line.startswith("OIDC_CLIENT_ID is not set") for line in lines)
    assert any(line.startswith("OIDC_CLIENT_SECRET is not set") for line in lines)
    assert any(line.startswith("JIT_ENCRYPTION_KEY is not set") and "jit-bot keygen" in line for line in lines)


def test_encryption_key_must_be_a_fernet_key(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, JIT_ENCRYPTION_KEY="too-short-to-be-a-key")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    (line,) = caught.value.lines
    assert line.startswith("JIT_ENCRYPTION_KEY must be 32 random bytes") and "too-short" not in line


def test_complete_idp_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.fernet import Fernet

    set_env(
        monkeypatch,
        OIDC_ISSUER="https://idp.example.com/",
        OIDC_CLIENT_ID="jit-bot",
        OIDC_CLIENT_SECRET="s3cret",
        OIDC_CLIENT_AUTH="client_secret_post",
        JIT_ENCRYPTION_KEY=Fernet.generate_key().decode(),
    )
    settings = load_settings()
    assert settings.idp_configured
    assert settings.oidc_issuer == "https://idp.example.com"
    assert settings.oidc_client_auth.value == "client_secret_post"
    assert settings.oidc_token_lifetime_param is None


def test_names_that_look_like_settings_but_are_not_get_the_closest_known_name(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SLACK_SIGNING_SECRT=s3cret-value\nJIT_DATABASE_URL=sqlite:///x.db\n")
    environ = {
        "OIDC_ISUER": "https://idp.example",
        "JIT_HTTP_PROT": "3000",
        "jit_polciy_file": "policy.yml",
        "JIT_TEST_POSTGRES_URL": "postgresql+psycopg://x",  # ours in name only, close to nothing: no noise
        "OIDC_ISSUER": "https://idp.example",
        "PATH": "/usr/bin",
    }
    lines = misspelt_settings(environ, env_file)
    assert lines == [
        "JIT_HTTP_PROT is not a setting jit-bot knows, so it is ignored; did you mean JIT_HTTP_PORT?",
        "OIDC_ISUER is not a setting jit-bot knows, so it is ignored; did you mean OIDC_ISSUER?",
        "SLACK_SIGNING_SECRT is not a setting jit-bot knows, so it is ignored; did you mean SLACK_SIGNING_SECRET?",
        "jit_polciy_file is not a setting jit-bot knows, so it is ignored; did you mean JIT_POLICY_FILE?",
    ]
    assert not any("s3cret" in line or "idp.example" in line for line in lines), "values are never repeated"
    assert misspelt_settings({"OIDC_ISSUER": "x"}, tmp_path / "absent.env") == []


DATABASE_URLS = {
    "postgres-scheme": (
        "postgres://jit:pw-9f3a@db:5432/jit",
        "uses postgres://, which jit-bot cannot drive; write postgresql+psycopg://",
    ),
    "psycopg2-driver": ("postgresql+psycopg2://jit:pw-9f3a@db/jit", "uses postgresql+psycopg2://"),
    "another-database": ("mysql://jit:pw-9f3a@db/jit", "uses mysql://; jit-bot supports sqlite:///"),
    "not-a-url": ("jit.db", "is not a database URL; write sqlite:///path/to/jit.db or postgresql+psycopg://"),
    "sqlite-folder-missing": (
        "sqlite:///no-such-folder/jit.db",
        "names a SQLite file in no-such-folder, which does not exist",
    ),
}


@pytest.mark.parametrize(("url", "problem"), list(DATABASE_URLS.values()), ids=list(DATABASE_URLS))
def test_a_database_url_the_bot_cannot_open_is_one_line_naming_the_form_to_write(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    good_env(monkeypatch)
    monkeypatch.setenv("JIT_DATABASE_URL", url)

    lines = config_lines()

    assert len(lines) == 1 and lines[0].startswith("JIT_DATABASE_URL "), lines
    assert problem in lines[0], lines
    assert "pw-9f3a" not in lines[0], "a password in the URL is never repeated"
    with pytest.raises(ConfigError) as caught:
        load_store_settings()  # migrate and audit verify read the same variable
    assert caught.value.lines == lines


def test_the_database_urls_the_bot_can_open(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good_env(monkeypatch)
    for url in ("sqlite:///jit.db", f"sqlite:///{tmp_path}/jit.db", "postgresql+psycopg://jit:pw@db:5432/jit"):
        monkeypatch.setenv("JIT_DATABASE_URL", url)
        assert load_settings().jit_database_url == url
