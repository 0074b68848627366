"""Files that hold secrets: created owner-only, kept beside the database (never in it). Imports nothing of bot."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from sqlalchemy.engine import make_url


def beside_database(database_url: str, filename: str) -> Path:
    """``filename`` in the SQLite database's directory, or in the working directory otherwise."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        return Path(url.database).resolve().parent / filename
    return Path.cwd() / filename


def write_owner_only(path: Path, data: bytes) -> bool:
    """Create ``path`` with mode 0600 holding ``data``. False if it already exists (another replica
    made it a moment ago): the caller then uses that one rather than overwrite it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


class KeyFileError(Exception):
    pass


def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """32 random bytes kept in ``path`` as URL-safe base64. Returns (key, created)."""
    if not path.exists():
        created = write_owner_only(path, base64.urlsafe_b64encode(secrets.token_bytes(32)) + b"\n")
        if created:
            return load_key(path), True
    return load_key(path), False


def load_key(path: Path) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(path.read_bytes().strip())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot be read: {exc.strerror}") from None
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeyFileError(f"{path}: is not 32 bytes of URL-safe base64")
    return raw
