"""Slack user -> IdP subject: the policy's ``identities:`` first, then, if ``identity.email_fallback``
is on, the Slack profile's email (docs/architecture.md, "The flow")."""

from __future__ import annotations

from bot.domain.policy import Policy
from bot.services.errors import UnmappedRequester
from bot.services.ports import Directory, DirectoryError


def resolve_subject(slack_user_id: str, *, policy: Policy, directory: Directory) -> str:
    subject = policy.identities.get(slack_user_id)
    if subject:
        return subject
    if policy.identity.email_fallback:
        try:
            email = directory.email_of(slack_user_id)
        except DirectoryError as exc:
            raise UnmappedRequester(
                f"Your Slack account is not mapped to an identity, and Slack could not tell us your email ({exc})."
            ) from None
        if email:
            return email
        raise UnmappedRequester(
            "Your Slack account is not mapped to an identity and your Slack profile has no email. "
            "Ask an admin to add you under `identities:` in the policy file."
        )
    raise UnmappedRequester(
        f"Your Slack account (<@{slack_user_id}>) is not mapped to an identity. "
        "Ask an admin to add you under `identities:` in the policy file."
    )


def resolve_approvers(approvers: tuple[str, ...], *, directory: Directory) -> frozenset[str]:
    """Expand usergroups at click time, so removing someone from a group takes effect at once."""
    members: set[str] = set()
    for entry in approvers:
        if entry.startswith("S"):
            members |= directory.usergroup_members(entry)
        else:
            members.add(entry)
    return frozenset(members)
