"""Who is who: a Slack user's IdP subject, and a resource's approvers.

Subjects come from the policy's ``identities:`` first, then, if ``identity.email_fallback`` is on,
the Slack profile's email (docs/architecture.md, "The flow").
"""

from __future__ import annotations

from enum import Enum

from bot.domain.policy import Policy, Resource
from bot.domain.policy_fields import SLACK_USER_ID, SLACK_USERGROUP_ID
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
    return resolve_entries(resource.name, resource.approvers, directory=directory, on_slack_failure=on_slack_failure)


def resolve_entries(
    resource: str, entries: tuple[str, ...], *, directory: Directory, on_slack_failure: OnSlackFailure
) -> frozenset[str]:
    """Approver entries (Slack user ids and usergroup ids) as the people they are now: a resource's,
    or the ones a require rule stored on a request."""
    users = frozenset(entry for entry in entries if SLACK_USER_ID.fullmatch(entry))
    members = set(users)
    try:
        for entry in entries:  # in the policy's order, one Slack call per usergroup
            if SLACK_USERGROUP_ID.fullmatch(entry):
                members |= directory.usergroup_members(entry)
    except DirectoryError as exc:
        if on_slack_failure is OnSlackFailure.REFUSE:
            raise ApproversUnknown(resource, str(exc)) from None
        return users
    return frozenset(members)
