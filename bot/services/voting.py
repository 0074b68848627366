"""Approve / Deny: re-authorised from the database on every click, changing state at most once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bot.domain.policy import Policy
from bot.domain.status import RequestStatus, VoteChoice
from bot.domain.votes import VoteDecision, VoteFacts, VoteRefusal, decide_vote
from bot.services import lifecycle
from bot.services.audit import AuditEventType, record
from bot.services.errors import ApproversUnknown
from bot.services.identity import OnSlackFailure, resolve_approvers, resolve_entries
from bot.services.outbox import Announcer
from bot.services.ports import Directory
from bot.services.snapshots import RequestSnapshot, snapshot
from bot.store import requests as store
from bot.store.db import read_scope, session_scope
from bot.store.models import Vote
from bot.store.transitions import Audit, move_request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoteResult:
    refusal: VoteRefusal | None
    request: RequestSnapshot | None
    decided: bool
    """True only for the one vote that moved the request out of pending."""


@dataclass
class VotingService:
    engine: Engine
    policy: Policy
    directory: Directory
    announcer: Announcer
    clock: Callable[[], datetime]
    # Called with the request id once the approval has committed (minting, when an IdP is configured).
    on_approved: Callable[[str], object] | None = None

    def preflight(self, request_id: str, *, voter: str, choice: VoteChoice) -> VoteResult:
        """Would this vote be accepted? Used before opening the Deny modal; refusals are audited."""
        approvers = self._approvers_for(request_id, voter)
        with read_scope(self.engine) as session:
            request = store.get_request(session=session, request_id=request_id)
            votes = store.votes_for(session=session, request_id=request_id) if request is not None else []
            if request is None:
                refusal: VoteRefusal | None = VoteRefusal.UNKNOWN_REQUEST
                status = None
            else:
                refusal = self._decide(
                    request.status,
                    request.requester_slack_id,
                    voter,
                    approvers,
                    votes,
                    request.approvals_required,
                    choice,
                ).refusal
                status = request.status
                view = snapshot(request, votes, policy=self.policy)
        if refusal is not None:
            with session_scope(self.engine) as session:
                return self._refuse(session, request_id, voter, choice, refusal, status)
        return VoteResult(refusal=None, request=view, decided=False)

    def cast(self, request_id: str, *, voter: str, choice: VoteChoice, reason: str | None = None) -> VoteResult:
        approvers = self._approvers_for(request_id, voter)
        try:
            result = self._cast_once(request_id, voter=voter, choice=choice, reason=reason, approvers=approvers)
        except IntegrityError:
            # Only the unique (request, voter) constraint can fire here: the same approver's click
            # arrived twice at once and the other copy won.
            with session_scope(self.engine) as session:
                result = self._refuse(session, request_id, voter, choice, VoteRefusal.ALREADY_VOTED, None)
        if result.decided and result.request is not None and result.request.status == RequestStatus.APPROVED.value:
            if self.on_approved is not None:
                self.on_approved(result.request.id)
        return result

    def _approvers_for(self, request_id: str, voter: str) -> frozenset[str] | None:
        """Resolved before any lock is taken: a Slack round-trip must never hold the database.

        Raises ApproversUnknown when Slack cannot list an approver group: no vote is judged without it.
        """
        with read_scope(self.engine) as session:
            request = store.get_request(session=session, request_id=request_id)
            resource_name = request.resource if request is not None else None
            stored = request.approvers if request is not None else None
            # Escalated (reminders.escalate_after passed): the escalation approvers may vote too.
            escalated = request.escalated_to if request is not None and request.escalated_at is not None else None
        resource = self.policy.resource(resource_name) if resource_name else None
        if resource is None:
            return None
        refuse = OnSlackFailure.REFUSE
        if stored is not None:
            # A require rule named this request's approvers when it was submitted: they, not the
            # resource's, decide it.
            own = resolve_entries(
                resource.name, tuple(stored.split()), directory=self.directory, on_slack_failure=refuse
            )
        else:
            own = resolve_approvers(resource, directory=self.directory, on_slack_failure=refuse)
        if not escalated:
            return own
        try:
            return own | resolve_entries(
                resource.name, tuple(escalated.split()), directory=self.directory, on_slack_failure=refuse
            )
        except ApproversUnknown:
            # The escalation adds approvers; a usergroup of them Slack cannot list takes nothing from
            # the request's own, who are known. Anyone else's click waits until Slack can answer.
            if voter in own:
                return own
            raise

    def _decide(
        self,
        status: str,
        requester: str,
        voter: str,
        approvers: frozenset[str] | None,
        votes: Sequence[Vote],
        approvals_required: int,
        choice: VoteChoice,
    ) -> VoteDecision:
        if approvers is None and RequestStatus(status) is RequestStatus.PENDING:
            return VoteDecision(refusal=VoteRefusal.RESOURCE_REMOVED, new_status=RequestStatus(status))
        facts = VoteFacts(
            status=RequestStatus(status),
            requester=requester,
            voter=voter,
            approvers=approvers or frozenset(),
            prior_voters=frozenset(v.voter_slack_id for v in votes),
            approvals_so_far=sum(1 for v in votes if v.choice == VoteChoice.APPROVE.value),
            approvals_required=approvals_required,
        )
        return decide_vote(facts, choice)

    def _cast_once(
        self,
        request_id: str,
        *,
        voter: str,
        choice: VoteChoice,
        reason: str | None,
        approvers: frozenset[str] | None,
    ) -> VoteResult:
        now = self.clock()
        with session_scope(self.engine) as session:
            # The guard comes first: from here on this transaction owns the request row.
            if not store.lock_if_status(session=session, request_id=request_id, status=RequestStatus.PENDING, now=now):
                request = store.get_request(session=session, request_id=request_id)
                refusal = VoteRefusal.UNKNOWN_REQUEST if request is None else VoteRefusal.NOT_PENDING
                return self._refuse(session, request_id, voter, choice, refusal, request.status if request else None)
            request = store.get_request(session=session, request_id=request_id)
            assert request is not None
            session.refresh(request)
            votes = list(store.votes_for(session=session, request_id=request_id))
            decision = self._decide(
                request.status, request.requester_slack_id, voter, approvers, votes, request.approvals_required, choice
            )
            if decision.refusal is not None:
                return self._refuse(session, request_id, voter, choice, decision.refusal, request.status)

            store.add_vote(
                session=session,
                vote=Vote(
                    request_id=request_id, voter_slack_id=voter, choice=choice.value, reason=reason, created_at=now
                ),
            )
            record(
                AuditEventType.VOTE_CAST,
                session=session,
                at=now,
                actor=voter,
                request_id=request_id,
                choice=choice.value,
                reason=reason,
            )
            decided = decision.new_status is not RequestStatus.PENDING
            if decided:
                moved = move_request(
                    session=session,
                    request_id=request_id,
                    source=RequestStatus.PENDING,
                    target=decision.new_status,
                    now=now,
                    event=Audit(
                        AuditEventType.REQUEST_APPROVED
                        if decision.new_status is RequestStatus.APPROVED
                        else AuditEventType.REQUEST_DENIED,
                        actor=voter,
                        details={
                            "approvers": [v.voter_slack_id for v in votes if v.choice == VoteChoice.APPROVE.value]
                            + ([voter] if choice is VoteChoice.APPROVE else []),
                            "reason": reason,
                        },
                    ),
                    decided_at=now,
                    decided_by=voter,
                    deny_reason=reason if choice is VoteChoice.DENY else None,
                )
                # We hold the row lock, so the guard cannot fail; if it ever does, roll everything back.
                if not moved:
                    raise RuntimeError(f"request {request_id} changed under its own lock")
            session.flush()
            session.refresh(request)
            view = snapshot(request, store.votes_for(session=session, request_id=request_id), policy=self.policy)
            if decided:
                approved = view.status == RequestStatus.APPROVED.value
                lifecycle.note(
                    session,
                    lifecycle.Step.APPROVED if approved else lifecycle.Step.DENIED,
                    view,
                    by=view.approvers_so_far if approved else voter,
                )
            self._announce(session, view, decided=decided)
            result = VoteResult(refusal=None, request=view, decided=decided)
        return result

    def _announce(self, session: Session, request: RequestSnapshot, *, decided: bool) -> None:
        """In the vote's own transaction: what people are told about it."""
        if decided and request.status == RequestStatus.APPROVED.value and self.on_approved is not None:
            # Minting redraws the card and tells the requester and the audit channel itself, in the
            # transaction that makes the grant active (or failed), a few tens of milliseconds from now.
            return
        if decided:
            self.announcer.outcome(session, request)
        else:
            self.announcer.card(session, request)

    def _refuse(
        self,
        session: Session,
        request_id: str,
        voter: str,
        choice: VoteChoice,
        refusal: VoteRefusal,
        status: str | None,
    ) -> VoteResult:
        record(
            AuditEventType.UNAUTHORIZED_ATTEMPT,
            session=session,
            at=self.clock(),
            actor=voter,
            request_id=request_id if refusal is not VoteRefusal.UNKNOWN_REQUEST else None,
            action=choice.value,
            refusal=refusal.value,
            request_status=status,
            claimed_request_id=request_id[:64],
        )
        return VoteResult(refusal=refusal, request=None, decided=False)
