"""The policy catalog as typed, validated values.

Loading the YAML file lives in ``bot.config``; these models only say what a valid policy is, so the
rules can be tested without files and the error messages name the offending key. The resources are
here; the ``groups:`` and ``rules:`` are in ``bot.domain.policy_rules``, and the decision they make in
``bot.domain.rules``.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import (
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from bot.domain.durations import format_duration
from bot.domain.networks import IPNetwork, parse_networks
from bot.domain.policy_fields import (
    NAME,
    NAME_RULE,
    SCOPE_NAME,
    SLACK_CHANNEL_ID,
    SLACK_USER_ID,
    SLACK_USERGROUP_ID,
    Duration,
    Key,
    KeyedProblems,
    Strict,
    is_slack_id,
)
from bot.domain.policy_rules import (
    DAYS,
    Clock,
    Rule,
    check_days,
    check_groups,
    check_rule_names,
    check_timezone,
    policy_problems,
    unknown_group,
)
from bot.domain.reminders import Reminders, reminder_problems

# An entry of a group: a Slack user id, a usergroup id, or an IdP subject (anything else that is not empty).
_Member = Annotated[str, Field(min_length=1)]


CLAIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_CLAIMS = 20
MAX_CLAIM_TEXT = 256


def _one_value(value: Any) -> Any:
    # A claim is one plain value: a nested structure would be the IdP's to interpret, and none agree how.
    if value is None or isinstance(value, dict | list | tuple):
        kind = "empty" if value is None else ("a mapping" if isinstance(value, dict) else "a list")
        raise ValueError(f"must be one value (text, a number, true or false), not {kind}")
    return value


ClaimValue = Annotated[StrictStr | StrictBool | StrictInt | StrictFloat, BeforeValidator(_one_value)]


class BreakGlass(Strict):
    """Access at once, with no approval, for the people ``allowed`` (names under ``groups:``, whose
    members may be IdP subjects too, Slack user or usergroup ids), up to ``max_duration``; every use
    is alerted in the audit channel until an approver or a security lead acknowledges it."""

    max_duration: Duration
    allowed: Annotated[tuple[_Member, ...], Field(min_length=1)]

    @field_validator("max_duration")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    @field_validator("allowed")
    @classmethod
    def _once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        twice = sorted({entry for entry in value if value.count(entry) > 1})
        if twice:
            raise ValueError(f"lists '{twice[0]}' twice")
        return value


# The expiry-notices job looks every few seconds: a notice shorter than that would mostly fall between
# two looks and never be sent, and one of seconds leaves nobody time to act on it anyway.
MIN_EXPIRY_NOTICE = timedelta(minutes=1)


def _long_enough_notice(value: timedelta | None) -> timedelta | None:
    if value is not None and value < MIN_EXPIRY_NOTICE:
        raise ValueError(f"{format_duration(value)} is less than 1m: the notice would mostly never be sent")
    return value


class Resource(Strict):
    name: str
    description: str = ""
    audience: str = Field(min_length=1)
    scopes: tuple[str, ...] = Field(min_length=1)
    max_duration: Duration
    approver_channel: str
    approvers: tuple[str, ...] = Field(min_length=1)
    approvals_required: int = Field(default=1, ge=1, le=10)
    # Static facts about the grant, carried to the IdP in the assertion's jit.claims so that a
    # resource server can decide on them (row limits, environment); never secrets: tokens are logged
    # and inspected by whoever holds them.
    claims: dict[str, ClaimValue] = Field(default_factory=dict)
    # Where the pickup link may be opened from (CIDRs); empty: anywhere.
    pickup_networks: tuple[str, ...] = ()
    # Replaces the policy's own reminders: for this resource's requests (bot.domain.reminders).
    reminders: Reminders | None = None
    # How long before a grant ends its requester is DMed (with Extend and Revoke now); replaces the
    # policy's own expiry_notice for this resource. None: the policy's.
    expiry_notice: Duration | None = None
    # Who may open it at once with /jit breakglass (None: nobody).
    break_glass: BreakGlass | None = None

    @field_validator("expiry_notice")
    @classmethod
    def _notice_long_enough(cls, value: timedelta | None) -> timedelta | None:
        return _long_enough_notice(value)

    @field_validator("pickup_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value)
        return value

    @property
    def pickup_cidrs(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.pickup_networks)

    @field_validator("claims")
    @classmethod
    def _claims(cls, value: dict[str, ClaimValue]) -> dict[str, ClaimValue]:
        if len(value) > MAX_CLAIMS:
            raise ValueError(f"has {len(value)} entries; at most {MAX_CLAIMS}")
        for key, claim in value.items():
            if not CLAIM_NAME.fullmatch(key):
                raise ValueError(f"'{key}' is not a claim name (letters, digits, '_', '.', '-'; at most 64)")
            if isinstance(claim, str) and len(claim) > MAX_CLAIM_TEXT:
                raise ValueError(f"'{key}' is longer than {MAX_CLAIM_TEXT} characters")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for scope in value:
            if not SCOPE_NAME.fullmatch(scope):
                raise ValueError(f"'{scope}' is not a valid scope name (no spaces or commas)")
        twice = sorted({scope for scope in value if value.count(scope) > 1})
        if twice:
            raise ValueError(f"lists scope '{twice[0]}' twice")
        return value

    @field_validator("approver_channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if not SLACK_CHANNEL_ID.fullmatch(value):
            raise ValueError(f"'{value}' is not a Slack channel id (like C0123ABCD)")
        return value

    @field_validator("approvers")
    @classmethod
    def _approvers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if not (SLACK_USER_ID.fullmatch(entry) or SLACK_USERGROUP_ID.fullmatch(entry)):
                raise ValueError(f"'{entry}' is neither a Slack user id (U…) nor a usergroup id (S…)")
        return value

    @model_validator(mode="after")
    def _enough_approvers(self) -> Resource:
        has_groups = any(SLACK_USERGROUP_ID.fullmatch(a) for a in self.approvers)
        if not has_groups and self.approvals_required > len(set(self.approvers)):
            raise ValueError(
                f"approvals_required is {self.approvals_required} but only "
                f"{len(set(self.approvers))} approver(s) are listed, so no request could ever be approved"
            )
        return self

    @model_validator(mode="after")
    def _notice_fits(self) -> Resource:
        # A grant no longer than its notice gets none (its pickup DM already says when it ends), so a
        # notice as long as the longest grant could never be sent: surely not what was meant.
        if self.expiry_notice is not None and self.expiry_notice >= self.max_duration:
            raise KeyedProblems(
                [
                    (
                        ("expiry_notice",),
                        f"{format_duration(self.expiry_notice)} is not shorter than max_duration "
                        f"{format_duration(self.max_duration)}, so no grant of this resource could ever get its notice",
                    )
                ]
            )
        return self

    @property
    def user_approvers(self) -> frozenset[str]:
        return frozenset(a for a in self.approvers if SLACK_USER_ID.fullmatch(a))

    @property
    def usergroup_approvers(self) -> frozenset[str]:
        return frozenset(a for a in self.approvers if SLACK_USERGROUP_ID.fullmatch(a))


class Channels(Strict):
    audit: str | None = None
    # Where the security leads' daily digest is posted.
    digest: str | None = None

    @field_validator("audit", "digest")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        if value is not None and not SLACK_CHANNEL_ID.fullmatch(value):
            raise ValueError(f"'{value}' is not a Slack channel id (like C0123ABCD)")
        return value


class BusinessHours(Strict):
    """What the digest counts as working time (anything else is off-hours), on the clock of
    ``digest.timezone``. Each key has its own default, so ``{from: "07:00"}`` keeps mon–fri and 19:00.
    A ``to`` before ``from`` runs past midnight and belongs to the day it starts on, as a rule's hours do."""

    days: Annotated[tuple[str, ...], Field(min_length=1)] = DAYS[:5]
    start: Clock = Field(default=time(8), alias="from")
    end: Clock = Field(default=time(19), alias="to")

    _days = field_validator("days")(check_days)

    @model_validator(mode="before")
    @classmethod
    def _no_timezone(cls, data: Any) -> Any:
        # A second time zone here would let the digest's day and its business hours disagree.
        if isinstance(data, dict) and "timezone" in data:
            raise KeyedProblems(
                [(("timezone",), "is not set here: business hours are on the clock of digest.timezone")]
            )
        return data

    @model_validator(mode="after")
    def _not_empty(self) -> BusinessHours:
        if self.start == self.end:
            raise ValueError(f"from and to are both {self.end:%H:%M}, so there would be no business hours at all")
        return self


class DigestOptions(Strict):
    """The security leads' daily digest: when it is sent, on which clock, and what is off-hours."""

    time: Clock = time(9)
    timezone: str = "UTC"
    business_hours: BusinessHours = BusinessHours()

    _timezone = field_validator("timezone")(check_timezone)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class IdentityOptions(Strict):
    email_fallback: bool = False


class Limits(Strict):
    # A requester with this many requests awaiting approval must wait for one to be decided.
    pending_per_requester: int = Field(default=5, ge=1, le=10_000)


class Policy(Strict):
    request_timeout: Duration = timedelta(minutes=30)
    # How long before a grant ends its requester is DMed, with Extend and Revoke now (a resource's
    # own expiry_notice wins). None: no notice.
    expiry_notice: Duration | None = None
    channels: Channels = Channels()
    identities: dict[str, str] = Field(default_factory=dict)
    identity: IdentityOptions = IdentityOptions()
    limits: Limits = Limits()
    # Who may run /jit digest and is mentioned in alerts: Slack user (U…, W…) or usergroup (S…) ids.
    security_leads: tuple[str, ...] = ()
    digest: DigestOptions = DigestOptions()
    # Reminders and escalation of undecided requests, for every resource that has none of its own.
    reminders: Reminders | None = None
    resources: tuple[Resource, ...] = Field(min_length=1)
    # Declared after resources: checking the rules' approvers needs the resources' approvals.
    groups: dict[str, Annotated[tuple[_Member, ...], Field(min_length=1)]] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()

    _groups = field_validator("groups")(check_groups)
    _rule_names = field_validator("rules")(check_rule_names)

    @model_validator(mode="after")
    def _rules_fit_the_policy(self) -> Policy:
        problems = policy_problems(self.groups, self.rules, self.resources) + self._break_glass_problems()
        if problems:
            raise KeyedProblems(problems)
        return self

    @model_validator(mode="after")
    def _reminders_fit_the_policy(self) -> Policy:
        where: list[tuple[tuple[str | int, ...], Reminders]] = []
        if self.reminders is not None:
            where.append((("reminders",), self.reminders))
        for index, resource in enumerate(self.resources):
            if resource.reminders is not None:
                where.append((("resources", index, "reminders"), resource.reminders))
        problems = [
            ((*key, *below), why)
            for key, reminders in where
            for below, why in reminder_problems(reminders, groups=self.groups, request_timeout=self.request_timeout)
        ]
        if problems:
            raise KeyedProblems(problems)
        return self

    @model_validator(mode="after")
    def _notice_fits_the_resources(self) -> Policy:
        # As for a resource's own expiry_notice: one the resource takes from here that is not shorter
        # than its max_duration could never be sent, and nothing would say so.
        notice = self.expiry_notice
        if notice is None:
            return self
        problems: list[tuple[tuple[str | int, ...], str]] = [
            (
                ("expiry_notice",),
                f"{format_duration(notice)} is not shorter than the max_duration "
                f"{format_duration(resource.max_duration)} of resource '{resource.name}', which has no expiry_notice "
                "of its own, so no grant of it could ever get its notice",
            )
            for resource in self.resources
            if resource.expiry_notice is None and notice >= resource.max_duration
        ]
        if problems:
            raise KeyedProblems(problems[:1])
        return self

    def reminders_for(self, resource_name: str) -> Reminders | None:
        """The resource's own reminders, else the policy's (None: nobody is reminded)."""
        resource = self.resource(resource_name)
        if resource is not None and resource.reminders is not None:
            return resource.reminders
        return self.reminders

    @property
    def has_reminders(self) -> bool:
        return self.reminders is not None or any(r.reminders is not None for r in self.resources)

    def _break_glass_problems(self) -> list[tuple[Key, str]]:
        """Break-glass names groups defined elsewhere, and alerts where only channels.audit can say."""
        problems: list[tuple[Key, str]] = []
        for index, resource in enumerate(self.resources):
            if resource.break_glass is None:
                continue
            for entry in resource.break_glass.allowed:
                if not is_slack_id(entry) and entry not in self.groups:
                    problems.append((("resources", index, "break_glass", "allowed"), unknown_group(entry, self.groups)))
            if self.channels.audit is None:
                problems.append(
                    (
                        ("channels", "audit"),
                        f"is required: resource '{resource.name}' has break_glass, and its alerts go to the "
                        "audit channel",
                    )
                )
        return problems

    @field_validator("expiry_notice")
    @classmethod
    def _notice_long_enough(cls, value: timedelta | None) -> timedelta | None:
        return _long_enough_notice(value)

    @field_validator("security_leads")
    @classmethod
    def _leads(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if not is_slack_id(entry):
                raise ValueError(f"'{entry}' is neither a Slack user id (U…, W…) nor a usergroup id (S…)")
        twice = sorted({entry for entry in value if value.count(entry) > 1})
        if twice:
            raise ValueError(f"lists '{twice[0]}' twice")
        return value

    @field_validator("identities")
    @classmethod
    def _identities(cls, value: dict[str, str]) -> dict[str, str]:
        for slack_id, subject in value.items():
            if not SLACK_USER_ID.fullmatch(slack_id):
                raise ValueError(f"key '{slack_id}' is not a Slack user id (like U0123ABCD)")
            if not isinstance(subject, str) or not subject.strip():
                raise ValueError(f"'{slack_id}' maps to an empty IdP subject")
        return value

    @field_validator("resources")
    @classmethod
    def _unique_names(cls, value: tuple[Resource, ...]) -> tuple[Resource, ...]:
        seen: set[str] = set()
        for resource in value:
            if resource.name in seen:
                raise ValueError(f"resource '{resource.name}' is defined twice")
            seen.add(resource.name)
        return value

    def expiry_notice_for(self, resource: Resource) -> timedelta | None:
        """How long before a grant of ``resource`` ends its requester is told (None: not at all)."""
        return resource.expiry_notice if resource.expiry_notice is not None else self.expiry_notice

    def resource(self, name: str) -> Resource | None:
        for resource in self.resources:
            if resource.name == name:
                return resource
        return None

    @property
    def resource_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.resources)
