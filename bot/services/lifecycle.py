"""One log line per step in a request's life, for operators: ``jit-bot.lifecycle``.

    submitted: request=R7K2M9Q4XZ resource=prod-db requester=U0ALICE scopes=read duration=30m

The use case that wins a transition calls ``note`` in the transaction that makes it; the line is
written when that transaction commits, so a move that rolls back is never logged, and a replica or
thread that lost the race (its guarded update changed nothing) never calls it. Retries are not
steps: only the outcome is. A line names the request, its resource and its requester, and what
happened; never a token, a pickup link, an assertion or a secret (a token is named by its
fingerprint, as in the audit trail). The same facts go to the JSON format as fields (``event``,
``request_id``, ``resource``, ``requester``, …).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from enum import StrEnum

from sqlalchemy import event
from sqlmodel import Session

from bot.logs import FIELDS
from bot.services.snapshots import RequestSnapshot
from bot.store.models import AccessRequest

LOGGER_NAME = "jit-bot.lifecycle"
log = logging.getLogger(LOGGER_NAME)


class Step(StrEnum):
    SUBMITTED = "submitted"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"  # nobody decided within request_timeout
    CANCELLED = "cancelled"  # by the requester, or the approval card could not be posted
    MINTED = "minted"  # the token passed its checks; the pickup link is on its way
    PICKED_UP = "picked_up"
    REVOKE_REQUESTED = "revoke_requested"  # Revoke now, or /jit revoke
    REVOKED = "revoked"  # revoked at the IdP and proven inactive
    MINT_FAILED = "mint_failed"
    REVOCATION_FAILING = "revocation_failing"  # alerted: attempts keep failing, or the token is still active
    REVOCATION_OVERDUE = "revocation_overdue"  # alerted by the watchdog


# Failures are louder than INFO, so that a log alert on WARNING sees them.
_LEVELS = {
    Step.MINT_FAILED: logging.WARNING,
    Step.REVOCATION_FAILING: logging.WARNING,
    Step.REVOCATION_OVERDUE: logging.ERROR,
}

Fact = str | int | Sequence[str] | None

_PENDING = "jit_lifecycle_pending"


def note(session: Session, step: Step, request: RequestSnapshot | str, **facts: Fact) -> None:
    """Log ``step`` of ``request`` (a snapshot, or an id this session can read) when ``session`` commits."""
    if isinstance(request, RequestSnapshot):
        request_id, resource, requester = request.id, request.resource, request.requester
    else:
        row = session.get(AccessRequest, request)
        request_id = request
        resource, requester = (row.resource, row.requester_slack_id) if row is not None else ("?", "?")
    pending: list[tuple[int, str, dict[str, object]]] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        event.listen(session, "after_commit", _write, once=True)
        event.listen(session, "after_rollback", _forget, once=True)
    pending.append(_line(step, request_id, resource, requester, facts))


def _line(
    step: Step, request_id: str, resource: str, requester: str, facts: dict[str, Fact]
) -> tuple[int, str, dict[str, object]]:
    fields: dict[str, object] = {"event": step.value, "request_id": request_id, "resource": resource}
    fields["requester"] = requester
    words = [f"{step.value}: request={request_id} resource={_value(resource)} requester={_value(requester)}"]
    for key, fact in facts.items():
        if fact is None:
            continue
        shown = fact if isinstance(fact, str | int) else ",".join(fact)
        fields[key] = fact if isinstance(fact, str | int) else list(fact)
        words.append(f"{key}={_value(str(shown))}")
    return _LEVELS.get(step, logging.INFO), " ".join(words), fields


def _value(text: str) -> str:
    """Bare when it is one word, quoted otherwise, so ``key=value`` pairs split cleanly."""
    if text and not any(ch.isspace() or ch in '"=' for ch in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _write(session: Session) -> None:
    for level, message, fields in session.info.pop(_PENDING, None) or []:
        log.log(level, "%s", message, extra={FIELDS: fields})


def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)
