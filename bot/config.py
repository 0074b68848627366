"""Settings from the environment / ``.env``, and loading the policy file.

Both are built once, in the composition root (``bot.cli``), and passed down; nothing here runs at
import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.domain.policy import Policy

# Values from .env.example and common stand-ins: starting with one of them is always a mistake.
_PLACEHOLDER_MARKERS = ("replace-me", "changeme", "change-me", "your-", "xxxx", "<", "...")


class ConfigError(Exception):
    """Configuration that cannot work; each line names the variable or key and the problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _is_placeholder(value: str) -> bool:
    lowered = value.strip().lower()
    return not lowered or any(marker in lowered for marker in _PLACEHOLDER_MARKERS)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    slack_bot_token: SecretStr
    slack_signing_secret: SecretStr
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"

    jit_database_url: str = "sqlite:///jit.db"
    jit_policy_file: Path = Path("policy.yml")
    jit_http_host: str = "127.0.0.1"
    jit_http_port: int = Field(default=3000, ge=0, le=65535)
    jit_public_url: str | None = None

    @field_validator("slack_bot_token", "slack_signing_secret", "slack_app_token")
    @classmethod
    def _not_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and _is_placeholder(value.get_secret_value()):
            raise ValueError("still holds a placeholder; put the real value from your Slack app here")
        return value

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

    @field_validator("slack_app_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty SLACK_APP_TOKEN= line in .env means "HTTP mode", not "a token that is empty".
        return None if value == "" else value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        # slack_sdk joins method names onto the base URL, so it must end with a slash.
        return value if value.endswith("/") else value + "/"

    @property
    def public_url(self) -> str:
        url = self.jit_public_url or f"http://{self.jit_http_host}:{self.jit_http_port}"
        return url.rstrip("/")

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's report into one line per variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError([_settings_line(error) for error in exc.errors()]) from None


def _settings_line(error: Any) -> str:
    name = str(error["loc"][0]).upper() if error["loc"] else "settings"
    if error["type"] == "missing":
        return f"{name} is not set (copy .env.example to .env and fill it in)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{name} {message}"


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file; every problem is reported with its key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: policy file not found (set JIT_POLICY_FILE or create it)"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError([f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: must be a mapping with at least a 'resources' key"])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{path}: {_policy_line(error)}" for error in exc.errors()]) from None


def _policy_line(error: Any) -> str:
    key = ""
    for part in error["loc"]:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "is required"
    elif error["type"] == "extra_forbidden":
        message = "is not a known key (typo?)"
    return f"{key or 'policy'}: {message}"
