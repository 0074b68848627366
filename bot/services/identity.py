"""Who is who: a Slack user's IdP subject, and a resource's approvers.

Subjects come from the policy's ``identities:`` first, then, if ``identity.email_fallback`` is on,
the Slack profile's email (docs/architecture.md, "The flow").
"""

from __future__ import annotations

from enum import Enum

from bot.domain.policy import Policy, Resource
from bot.services.errors import ApproversUnknown, Unmapped, UnmappedRequester
from bot.services.ports import Directory, DirectoryError


def resolve_subject(slack_user_id: str, *, policy: Policy, directory: Directory) -> str:
    subject = policy.identities.get(slack_user_id)
    if subject:
        return subject
    if not policy.identity.email_fallback:
        raise UnmappedRequester(slack_user_id, Unmapped.NOT_LISTED)
    try:
        email = directory.email_of(slack_user_id)
    except DirectoryError as exc:
        raise UnmappedRequester(slack_user_id, Unmapped.EMAIL_UNKNOWN, slack_error=str(exc)) from None
    if not email:
        raise UnmappedRequester(slack_user_id, Unmapped.NO_EMAIL)
    return email


class OnSlackFailure(Enum):
    """What a caller does when Slack cannot list one of the resource's usergroups."""

    # Raise ApproversUnknown: nothing is decided without knowing who may decide (votes).
    REFUSE = "refuse"
    # Go on with the approvers the policy names one by one, who are known without Slack (ending
    # access early, where the requester needs no Slack lookup either).
    LISTED_USERS_ONLY = "listed_users_only"


def resolve_approvers(resource: Resource, *, directory: Directory, on_slack_failure: OnSlackFailure) -> frozenset[str]:
    """Expand usergroups at click time, so removing someone from a group takes effect at once."""
    members = set(resource.user_approvers)
    try:
        for entry in resource.approvers:  # in the policy's order, one Slack call per usergroup
            if entry in resource.usergroup_approvers:
                members |= directory.usergroup_members(entry)
    except DirectoryError as exc:
        if on_slack_failure is OnSlackFailure.REFUSE:
            raise ApproversUnknown(resource.name, str(exc)) from None
        return resource.user_approvers
    return frozenset(members)
