"""How much time a grant's chain of extensions may add up to: pure, so the bot, ``policy test`` and the
README agree on it.

A chain is a first request and the extensions approved after it, each asking for extra time on the
grant the one before it made. Its total is the time all of them were approved for. An extension may
bring the total up to the deciding rule's ``max_total`` (an auto_approve or require rule's), and
otherwise up to the resource's ``max_duration``, the same cap a first request has.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from bot.domain.policy import Policy, Resource
from bot.domain.rules import Decision, Effect


@dataclass(frozen=True)
class Cap:
    limit: timedelta
    # The rule whose max_total it is; None: the resource's max_duration.
    rule: str | None


def extension_cap(policy: Policy, resource: Resource, decision: Decision) -> Cap:
    if decision.effect in (Effect.AUTO_APPROVE, Effect.REQUIRE) and decision.rule is not None:
        rule = next((r for r in policy.rules if r.name == decision.rule), None)
        if rule is not None and rule.max_total is not None:
            return Cap(rule.max_total, rule.name)
    return Cap(resource.max_duration, None)


def for_break_glass_chain(decision: Decision, resource: Resource, extended: str) -> Decision:
    """The decision on an extension of a break-glass chain (``extended``: the link it extends). Nobody
    approved the break-glass, so more time on it is for people to give, never a rule: an auto-approval
    becomes the resource's approvers'. The bot and ``policy replay`` both decide it so."""
    if decision.effect is not Effect.AUTO_APPROVE:
        return decision
    return replace(
        decision,
        effect=Effect.DEFAULT,
        rule=None,
        reason=f"extends {extended} of a break-glass chain: the resource's approvers decide, not rule "
        f"'{decision.rule}'",
        approvers=resource.approvers,
        approvals_required=resource.approvals_required,
    )
