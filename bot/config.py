"""Settings from the environment / ``.env``, and loading the policy file.

Both are built once, in the composition root (``bot.cli``), and passed down; nothing here runs at
import time.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import stat
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml
from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.domain.networks import IPNetwork, parse_networks
from bot.domain.policy import Policy
from bot.domain.policy_cases import Cases
from bot.domain.policy_fields import KeyedProblems, RegoModule, key_path
from bot.domain.policy_rules import REGO_READER
from bot.domain.rego import probe_input
from bot.rego.engine import RegoEngine, RegoEngineError

_Model = TypeVar("_Model", Policy, Cases)

# The values .env.example ships with. Only these are refused: a real secret may well contain `<` or
# `your-`, and guessing at "looks like a placeholder" refused some.
_PLACEHOLDERS = frozenset({"replace-me", "xoxb-replace-me", "xapp-replace-me"})


class ConfigError(Exception):
    """Configuration that cannot work; each line names the variable or key and the problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _is_placeholder(value: str) -> bool:
    stripped = value.strip()
    return not stripped or stripped.lower() in _PLACEHOLDERS


_DATABASE_FORMS = "sqlite:///path/to/jit.db or postgresql+psycopg://user:password@host:5432/jit"


def _database_url(value: str) -> str:
    """A URL the bot can open, or a sentence that says which form to write (never the URL itself:
    it may carry a password)."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(f"is not a database URL; write {_DATABASE_FORMS}") from None
    if url.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        raise ValueError(f"uses {url.drivername}://, which jit-bot cannot drive; write postgresql+psycopg://…")
    if url.drivername not in ("sqlite", "postgresql+psycopg"):
        raise ValueError(f"uses {url.drivername}://; jit-bot supports {_DATABASE_FORMS}")
    if url.drivername == "sqlite" and url.database and url.database != ":memory:":
        folder = Path(url.database).parent
        if not folder.is_dir():
            raise ValueError(f"names a SQLite file in {folder}, which does not exist; create it or change the path")
    return value


def _refuse_placeholder(value: SecretStr | None, fix: str) -> SecretStr | None:
    if value is not None and _is_placeholder(value.get_secret_value()):
        raise ValueError(f"still holds a placeholder; {fix}")
    return value


class ClientAuth(StrEnum):
    CLIENT_SECRET_BASIC = "client_secret_basic"
    CLIENT_SECRET_POST = "client_secret_post"
    PRIVATE_KEY_JWT = "private_key_jwt"


class Settings(BaseSettings):
    # hide_input_in_errors: pydantic would otherwise quote a rejected secret in its error text.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    slack_bot_token: SecretStr
    slack_app_token: SecretStr | None = None
    # Verifies what Slack POSTs to /slack/events; Socket Mode has no such endpoint, so it needs none.
    # Declared after the app token so that its validator knows the mode.
    slack_signing_secret: SecretStr | None = Field(default=None, validate_default=True)
    slack_api_url: str = "https://slack.com/api/"
    # The bot only ever POSTs replies to response_urls under this prefix (Slack's hooks host).
    slack_hooks_url: str = "https://hooks.slack.com/"
    # Messages per second the bot sends to any one channel (Slack allows about one, with short bursts).
    slack_channel_rate: float = Field(default=1.0, gt=0, le=1000)
    # Seconds one Slack Web API call may take in all, connect to last byte (well inside the outbox lease).
    slack_call_deadline: float = Field(default=15.0, ge=1, le=30)

    jit_database_url: str = "sqlite:///jit.db"
    jit_policy_file: Path = Path("policy.yml")
    jit_http_host: str = "127.0.0.1"
    jit_http_port: int = Field(default=3000, ge=0, le=65535)
    jit_public_url: str | None = None
    # CIDRs of the reverse proxies whose X-Forwarded-For is believed (comma-separated); none by default,
    # since anyone can send that header.
    jit_trusted_proxies: str = ""
    # Seconds one evaluation of a rule's Rego module may take; past it the rule denies (fails closed).
    jit_rego_timeout: float = Field(default=0.5, gt=0, le=10)

    # The IdP. Without OIDC_ISSUER, approved requests stay `approved` and nothing is minted.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_client_auth: ClientAuth = ClientAuth.CLIENT_SECRET_BASIC
    oidc_token_lifetime_param: str | None = None
    jit_signing_key_file: Path | None = None
    jit_encryption_key: SecretStr | None = None
    # Keys the audit chain (HMAC). Unset: generated on first start beside the database, with a warning.
    jit_audit_key: SecretStr | None = None
    # Every audit event is also POSTed here, signed with the secret (README: "Forwarding the audit trail").
    jit_audit_webhook_url: str | None = None
    jit_audit_webhook_secret: SecretStr | None = None
    # Seconds one POST may take in all, connect to last byte: a receiver that stalls is cut off.
    jit_audit_webhook_deadline: float = Field(default=10.0, ge=1, le=60)

    @field_validator(
        "jit_audit_webhook_url",
        "jit_audit_webhook_secret",
        "oidc_issuer",
        "oidc_client_id",
        "oidc_client_secret",
        "oidc_token_lifetime_param",
        "jit_signing_key_file",
        "jit_encryption_key",
        "jit_audit_key",
        "jit_public_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("jit_audit_webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL, e.g. https://siem.example.com/jit-audit")
        return value

    @field_validator("jit_audit_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        value = _refuse_placeholder(value, "put a long random secret here, shared with the receiver")
        # A short secret can be guessed offline from one signed request.
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("is too short; use at least 16 random characters (`jit-bot keygen` prints one)")
        return value

    @model_validator(mode="after")
    def _webhook_signed(self) -> Settings:
        # Unsigned forwarding would let anyone who can reach the receiver write into its copy of the trail.
        if self.jit_audit_webhook_url is not None and self.jit_audit_webhook_secret is None:
            raise ValueError("JIT_AUDIT_WEBHOOK_SECRET is not set (needed because JIT_AUDIT_WEBHOOK_URL is set)")
        return self

    @field_validator("oidc_client_secret", "jit_encryption_key", "jit_audit_key")
    @classmethod
    def _secret_not_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        return _refuse_placeholder(value, "put the real value here")

    @field_validator("jit_encryption_key", "jit_audit_key")
    @classmethod
    def _fernet_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            key_bytes(value)
        return value

    @field_validator("oidc_issuer")
    @classmethod
    def _issuer(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be the IdP's issuer URL, e.g. https://idp.example.com")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _idp_complete(self) -> Settings:
        if self.oidc_issuer is None:
            return self
        problems = []
        if not self.oidc_client_id:
            problems.append("OIDC_CLIENT_ID is not set (needed because OIDC_ISSUER is set)")
        if self.oidc_client_auth is not ClientAuth.PRIVATE_KEY_JWT and self.oidc_client_secret is None:
            problems.append("OIDC_CLIENT_SECRET is not set (needed because OIDC_ISSUER is set)")
        if self.jit_encryption_key is None:
            problems.append(
                "JIT_ENCRYPTION_KEY is not set (needed to store tokens encrypted; `jit-bot keygen` prints one)"
            )
        if problems:
            raise ValueError("\n".join(problems))  # load_settings reports one line each
        return self

    _database = field_validator("jit_database_url")(_database_url)

    @property
    def idp_configured(self) -> bool:
        return self.oidc_issuer is not None

    @field_validator("slack_bot_token", "slack_signing_secret")
    @classmethod
    def _not_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        return _refuse_placeholder(value, "put the real value from your Slack app here")

    @field_validator("slack_app_token")
    @classmethod
    def _app_token_not_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        # .env.example starts in Socket Mode; someone who chose HTTP mode only has to empty it.
        return _refuse_placeholder(
            value, "put the app-level token here (Basic Information → App-Level Tokens), or empty it for HTTP mode"
        )

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("must be a bot token starting with xoxb- (OAuth & Permissions page)")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token starting with xapp- (Basic Information page)")
        return value

    @field_validator("slack_app_token", "slack_signing_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty SLACK_APP_TOKEN= line in .env means "HTTP mode", not "a token that is empty"; an empty
        # signing secret is "not set" (which only Socket Mode allows).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("slack_signing_secret")
    @classmethod
    def _http_mode_verifies(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # An app token that failed its own check is absent from info.data: its owner means Socket Mode.
        if value is None and "slack_app_token" in info.data and info.data["slack_app_token"] is None:
            raise ValueError(
                "is not set: HTTP mode needs it to verify Slack's requests (Basic Information → Signing Secret); "
                "Socket Mode (SLACK_APP_TOKEN set) does not"
            )
        return value

    @field_validator("slack_api_url", "slack_hooks_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        # slack_sdk joins method names onto the base URL, so it must end with a slash.
        return value if value.endswith("/") else value + "/"

    @field_validator("jit_trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        parse_networks([part for part in value.split(",") if part.strip()])
        return value

    @property
    def trusted_proxies(self) -> tuple[IPNetwork, ...]:
        return parse_networks([part for part in self.jit_trusted_proxies.split(",") if part.strip()])

    @property
    def public_url(self) -> str:
        url = self.jit_public_url or f"http://{self.jit_http_host}:{self.jit_http_port}"
        return url.rstrip("/")

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None


class StoreSettings(BaseSettings):
    """Just the database and the audit key, for `jit-bot migrate` and `jit-bot audit verify`."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    jit_database_url: str = "sqlite:///jit.db"
    jit_audit_key: SecretStr | None = None
    # Only whether it is set: events a command appends (`audit rekey`) are queued for the webhook too.
    jit_audit_webhook_url: str | None = None

    @field_validator("jit_audit_key", "jit_audit_webhook_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    _database = field_validator("jit_database_url")(_database_url)

    @field_validator("jit_audit_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            key_bytes(value)
        return value


def key_bytes(value: SecretStr) -> bytes:
    """32 random bytes in URL-safe base64 (what `jit-bot keygen` prints), decoded."""
    try:
        raw = base64.urlsafe_b64decode(value.get_secret_value().encode())
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise ValueError("must be 32 random bytes in URL-safe base64 (run `jit-bot keygen`)")
    return raw


# Prefixes of the names jit-bot reads; a name with one of them that jit-bot does not know is most
# likely a typo of one it does (OIDC_ISUER), which would otherwise be ignored without a word.
_OUR_PREFIXES = ("SLACK_", "JIT_", "OIDC_")


def misspelt_settings(environ: Mapping[str, str], env_file: Path = Path(".env")) -> list[str]:
    """A warning for each name in the environment or ``.env`` that looks like a setting but is not one,
    with the closest known name."""
    known = {name.upper() for model in (Settings, StoreSettings) for name in model.model_fields}
    names = set(environ)
    try:
        names |= {name for name in dotenv_values(env_file) if name} if env_file.is_file() else set()
    except (OSError, UnicodeDecodeError):
        pass  # loading the settings themselves reports an unreadable .env
    lines = []
    for name in sorted(names):
        upper = name.upper()
        if upper in known or not upper.startswith(_OUR_PREFIXES):
            continue
        closest = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
        if closest:
            lines.append(f"{name} is not a setting jit-bot knows, so it is ignored; did you mean {closest[0]}?")
    return lines


class _PolicyFileSetting(BaseSettings):
    """Only JIT_POLICY_FILE: `jit-bot check` still checks the policy when the other settings do not load."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    jit_policy_file: Path = Path("policy.yml")


def policy_file_setting() -> Path:
    try:
        return _PolicyFileSetting().jit_policy_file
    except ValidationError:
        return Path("policy.yml")


def load_store_settings() -> StoreSettings:
    try:
        return StoreSettings()
    except ValidationError as exc:
        raise ConfigError([_settings_line(error) for error in exc.errors()]) from None


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's report into one line per variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [line for error in exc.errors() for line in _settings_line(error).splitlines()]
        raise ConfigError(lines) from None


def _settings_line(error: Any) -> str:
    if not error["loc"]:  # a rule across several variables already names them
        return str(error["msg"]).removeprefix("Value error, ")
    name = str(error["loc"][0]).upper()
    if error["type"] == "missing":
        return f"{name} is not set (copy .env.example to .env and fill it in)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{name} {message}"


class _PolicyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice is an error instead of the last one silently winning."""


def _unique_mapping(loader: _PolicyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"found duplicate key '{key}'", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_PolicyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file; every problem is reported with its key path."""
    data = _yaml_mapping(
        path,
        missing="policy file not found (set JIT_POLICY_FILE or create it)",
        shape="must be a mapping with at least a 'resources' key",
    )
    reader = _RegoReader(path.parent)
    try:
        return _validated(Policy, data, path, context={REGO_READER: reader})
    finally:
        reader.close()


# Big enough for any policy a person writes; small enough that a wrong path (a log, a dump) is refused.
REGO_MODULE_MAX_BYTES = 1 << 20


class _RegoReader:
    """Reads and compiles each rule's ``rego:`` file while the policy is validated, so that a module
    that does not compile stops start-up with its file and line, like any other policy mistake."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._engine: RegoEngine | None = None

    def __call__(self, written: str) -> RegoModule:
        file = self.folder / written
        try:
            # Inside the policy's folder, so whoever reviews a policy change sees every module it uses.
            if not file.resolve().is_relative_to(self.folder.resolve()):
                raise ValueError(f"'{written}' is outside the policy file's folder ({self.folder.resolve()})")
            if not stat.S_ISREG(file.stat().st_mode):
                raise ValueError(f"'{written}' is not a regular file")
            with file.open("rb") as opened:
                raw = opened.read(REGO_MODULE_MAX_BYTES + 1)
            if len(raw) > REGO_MODULE_MAX_BYTES:
                size = f"{REGO_MODULE_MAX_BYTES // 1024} KiB"
                raise ValueError(f"'{written}' is larger than {size}: is it a Rego module?")
            source = raw.decode("utf-8")
        except FileNotFoundError:
            where = f"looked for {file}; the path is relative to the policy file"
            raise ValueError(f"'{written}' not found ({where})") from None
        except UnicodeDecodeError:
            raise ValueError(f"'{written}' is not UTF-8 text") from None
        except OSError as exc:
            raise ValueError(f"'{written}' cannot be read: {exc.strerror}") from None
        module = RegoModule(written, source)
        if self._engine is None:
            self._engine = RegoEngine({}, probe=probe_input())
        try:
            problems = self._engine.check(module)
        except RegoEngineError as exc:
            raise ValueError(f"'{written}' could not be compiled: {exc}") from None
        if problems:
            raise ValueError(f"{problems[0].line_text()}")
        return module

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def load_cases(path: Path) -> Cases:
    """A ``jit-bot policy test`` cases file, every problem reported with its key path like the policy's."""
    data = _yaml_mapping(path, missing="cases file not found", shape="must be a mapping with a 'cases' list")
    return _validated(Cases, data, path)


def _yaml_mapping(path: Path, *, missing: str, shape: str) -> dict[Any, Any]:
    """The file's YAML (duplicate keys refused), which must be a mapping; one line per problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: {missing}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_PolicyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError([f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: {shape}"])
    return data


def _validated(
    model: type[_Model], data: dict[Any, Any], path: Path, *, context: dict[str, Any] | None = None
) -> _Model:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = _root_causes(exc.errors())
        raise ConfigError([f"{path}: {line}" for error in errors for line in _policy_lines(error)]) from None


def _root_causes(errors: list[Any]) -> list[Any]:
    """Drop the "at least one entry" that pydantic adds to a list whose every entry was wrong: the
    entries' own errors say what to fix, and the list is not empty."""
    return [
        error
        for error in errors
        if not (
            error["type"] == "too_short"
            and any(other is not error and other["loc"][: len(error["loc"])] == error["loc"] for other in errors)
        )
    ]


def _policy_lines(error: Any) -> list[str]:
    """One line per problem, each naming its key; a check on a whole mapping names the keys below it."""
    keyed = (error.get("ctx") or {}).get("error")
    if isinstance(keyed, KeyedProblems):
        return [f"{key_path((*error['loc'], *key)) or 'policy'}: {message}" for key, message in keyed.problems]
    return [f"{key_path(error['loc']) or 'policy'}: {_policy_message(error)}"]


def _shown(value: Any) -> str:
    """What the file holds at a key, in the words a YAML author would use."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "empty"
    text = str(value)
    return f"'{text[:40]}…'" if len(text) > 40 else f"'{text}'"


# pydantic's wording ("Input should be a valid tuple") is about Python types; these say what to write.
_TYPE_MESSAGES = {
    "tuple_type": "must be a list, like [a, b] or one '- item' per line",
    "list_type": "must be a list, like [a, b] or one '- item' per line",
    "dict_type": "must be a mapping of keys to values (key: value, one per line)",
    "model_type": "must be a mapping of keys to values (key: value, one per line)",
    "model_attributes_type": "must be a mapping of keys to values (key: value, one per line)",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "string_type": "must be text",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
}


def _policy_message(error: Any) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known key (typo?)"
    if kind == "too_short":
        return "must list at least one entry"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {context.get('max_length')} characters long"
    if kind == "enum":
        return f"must be {context.get('expected')}, not {_shown(error['input'])}"
    bounds = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt")}
    bounds |= {"less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
    if kind in bounds:
        words, name = bounds[kind]
        return f"must be {words} {context.get(name)}, not {_shown(error['input'])}"
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]}, not {_shown(error['input'])}"
    message = str(error["msg"]).removeprefix("Value error, ")
    # Anything not mapped above still reads as a sentence about the key.
    return message.replace("Input should be", "must be", 1)
