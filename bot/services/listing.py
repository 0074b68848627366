"""``/jit list``: one person's open requests and live grants."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from bot.domain.policy import Policy
from bot.services.snapshots import RequestSnapshot, snapshot
from bot.store import grants as grant_store
from bot.store import requests as store
from bot.store.db import read_scope


@dataclass(frozen=True)
class Listing:
    requests: list[RequestSnapshot]
    # When it was read: time left on a grant is counted from here.
    now: datetime


@dataclass
class ListingService:
    engine: Engine
    policy: Policy
    clock: Callable[[], datetime]

    def open_requests_of(self, user: str) -> Listing:
        now = self.clock()
        with read_scope(self.engine) as session:
            rows = store.open_requests_of(session=session, requester=user)
            grants = {
                g.request_id: g for g in grant_store.grants_for(session=session, request_ids=[r.id for r in rows])
            }
            snapshots = [
                snapshot(
                    r,
                    store.votes_for(session=session, request_id=r.id),
                    policy=self.policy,
                    grant=grants.get(r.id),
                    now=now,
                )
                for r in rows
            ]
        return Listing(requests=snapshots, now=now)
