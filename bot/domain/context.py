"""Access that ends when its reason does: which usergroups an auto-approval rested on, and whether
that reason still holds. Pure: the caller asks Slack who is in each usergroup.

A rule with ``revoke_when_context_ends: true`` that auto-approved a request because the requester was
in one of the usergroups its ``when.requester_in`` names (directly or through ``groups:``) records
those usergroups on the request. The grant lasts only while the requester is in at least one of them.
A requester the rule listed by Slack id or IdP subject matched on something that cannot end, so
such a grant records no usergroups and is never ended this way.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.domain.policy import Policy
from bot.domain.policy_fields import SLACK_USERGROUP_ID
from bot.domain.policy_rules import expand


def context_usergroups(
    policy: Policy, rule_name: str | None, *, requester: str, subject: str | None, usergroups: frozenset[str] | None
) -> tuple[str, ...]:
    """The usergroups (in the rule's order) that made ``rule_name``'s requester_in hold for this
    requester, when that rule ends its grants with their context; () when it does not, or when the
    requester is listed by id or subject (nothing that can end)."""
    rule = next((r for r in policy.rules if r.name == rule_name), None)
    if rule is None or not rule.revoke_when_context_ends or not rule.when.requester_in or usergroups is None:
        return ()
    members = expand(policy.groups, rule.when.requester_in)
    if requester in members or (subject is not None and subject in members):
        return ()
    return tuple(m for m in members if SLACK_USERGROUP_ID.fullmatch(m) and m in usergroups)


def context_ended(requester: str, groups: tuple[str, ...], members: Mapping[str, frozenset[str]]) -> bool | None:
    """Whether the requester is in none of ``groups`` any more (True: the grant's reason is gone).
    ``members`` holds the groups Slack listed this time; a group missing from it could not be read.
    None: it cannot be told, because the requester is in no group that was read and some group was
    not read (nothing is ended on a guess)."""
    if any(requester in members[g] for g in groups if g in members):
        return False
    if any(g not in members for g in groups):
        return None
    return True
