"""Errors from the IdP, classified so callers know whether trying again can help."""

from __future__ import annotations


class IdPError(Exception):
    """``code`` is the OAuth error code (``invalid_scope``…) or one of ours (``idp_unreachable``…).

    The text is built from the IdP's error code and description only, never from what we sent, so
    it can be shown on a card and written to the audit trail.
    """

    def __init__(self, code: str, description: str | None = None, *, transient: bool, status: int | None = None):
        self.code = code
        self.description = (description or "")[:300]
        self.transient = transient
        self.status = status
        super().__init__(f"{code}: {self.description}" if self.description else code)
