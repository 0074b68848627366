"""Turning rows into the snapshots that ports render."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from bot.domain.policy import Policy
from bot.services.ports import RequestSnapshot, VoteView
from bot.store.models import AccessRequest, Grant, Vote


def snapshot(
    request: AccessRequest, votes: Sequence[Vote], *, policy: Policy, grant: Grant | None = None
) -> RequestSnapshot:
    resource = policy.resource(request.resource)
    return RequestSnapshot(
        id=request.id,
        requester=request.requester_slack_id,
        resource=request.resource,
        resource_description=resource.description if resource else "",
        scopes=request.scope_list,
        duration=timedelta(seconds=request.duration_seconds),
        reason=request.reason,
        status=request.status,
        approvals_required=request.approvals_required,
        votes=tuple(VoteView(voter=v.voter_slack_id, choice=v.choice, reason=v.reason) for v in votes),
        created_at=request.created_at,
        decided_at=request.decided_at,
        deny_reason=request.deny_reason,
        approver_channel=request.approver_channel,
        card_channel=request.card_channel,
        card_ts=request.card_ts,
        active_until=grant.expires_at if grant is not None else None,
        revoked_at=grant.revoked_at if grant is not None else None,
        revocation_pending=grant is not None and grant.status == "revoking" and grant.attempts > 0,
        failure_code=request.failure_code,
        failure_detail=request.failure_detail,
    )
