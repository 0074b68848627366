"""URLs made safe to print: settings are shown by `jit-bot check` and named in start-up errors, and a
URL may carry a password (in its user part, or as ?password=… in a libpq or JDBC-style query)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy.engine import make_url

# Query parameters whose values are secrets.
_SECRET_PARAMS = ("password", "passwd", "pwd", "secret", "token", "key", "sslpassword", "credential")


def redact_url(url: str) -> str:
    """``url`` with any password, user name and secret-looking query values replaced, for printing."""
    if "://" in url and not url.startswith(("http://", "https://")):
        try:
            parsed = make_url(url)
        except Exception:
            return "(unreadable URL)"
        hidden = {name: "redacted" for name in parsed.query if _is_secret_param(name)}
        return parsed.update_query_dict(hidden).render_as_string(hide_password=True)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.username is not None or parts.password is not None:
            netloc = f"***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "redacted" if _is_secret_param(k) else v) for k, v in pairs])
    except ValueError:
        return "(unreadable URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_PARAMS)
