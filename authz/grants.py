"""Just-in-time session grants: the store interface, the embedded store, and coverage.

A grant belongs to one (agent, user) pair and never transfers along a chain.
It covers a request when one of its actions is the route's action and one of
its resources is the route's resource or one of its ancestors. The absolute
expiry lives inside the grant and is checked here, whatever the store's TTLs do.

Selection rule, in order, each with its reason when nothing is left:
  grants of (current agent, user) covering action + resource   -> no_grant
  ... that have not expired                                     -> grant_expired
  ... whose purpose is the request's purpose                    -> purpose_mismatch
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from authz.decision_cache import Generation
from authz.errors import GrantError, GrantRequestError
from authz.model import Grant, RouteMatch
from authz.routes import parse_entity

# Expired grants stay readable this long so a denial can say "expired" rather
# than "no grant"; they never cover anything once past `expires_at`.
EXPIRED_RETENTION_SECONDS = 3600


class GrantStore(Protocol):
    async def put(self, grant: Grant) -> None: ...
    async def get(self, grant_id: str) -> Grant | None: ...
    async def revoke(self, grant_id: str) -> Grant | None: ...
    async def for_pair(self, agent: str, user: str) -> list[Grant]: ...
    async def list(self, agent: str = "", user: str = "") -> list[Grant]: ...
    async def consume(self, grant: Grant) -> int:
        """Count one use; return the count including this one. Over the limit: max + 1,
        and nothing is counted."""
        ...

    async def uses(self, grant_id: str) -> int: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class GrantRequest:
    agent: str
    user: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    purpose: str
    ttl_seconds: int
    max_uses: int = 0


def new_grant(
    req: GrantRequest,
    issued_by: str,
    now: int,
    known_agents: set[str],
    known_actions: frozenset[str],
    max_ttl: int,
) -> Grant:
    """Validate an issue request; raises GrantRequestError naming what is wrong."""
    if req.agent not in known_agents:
        raise GrantRequestError(f"unknown agent `{req.agent}`; register it first")
    if not req.user:
        raise GrantRequestError("`user` must not be empty")
    if not req.actions or any(not a for a in req.actions):
        raise GrantRequestError("at least one non-empty action is required")
    for action in req.actions:
        if action not in known_actions:
            raise GrantRequestError(
                f"unknown action `{action}`; expected one of {sorted(known_actions)}"
            )
    if not req.resources:
        raise GrantRequestError("at least one resource is required")
    for resource in req.resources:
        try:
            parse_entity(resource)
        except ValueError as err:
            raise GrantRequestError(str(err)) from None
    if not req.purpose:
        raise GrantRequestError("`purpose` must not be empty")
    if not 0 < req.ttl_seconds <= max_ttl:
        raise GrantRequestError(f"ttl must be between 1 s and grants.max_ttl ({max_ttl} s)")
    if req.max_uses < 0:
        raise GrantRequestError("max_uses must be 0 (unlimited) or positive")
    return Grant(
        id=f"g-{secrets.token_hex(8)}",
        agent=req.agent,
        user=req.user,
        actions=req.actions,
        resources=tuple(str(parse_entity(r)) for r in req.resources),
        purpose=req.purpose,
        issued_by=issued_by,
        issued_at=now,
        expires_at=now + req.ttl_seconds,
        max_uses=req.max_uses,
    )


def covers(grant: Grant, route: RouteMatch) -> bool:
    if route.action not in grant.actions:
        return False
    targets = {str(route.resource), *(str(p) for p in route.parents)}
    return any(r in targets for r in grant.resources)


def select(grants: list[Grant], route: RouteMatch, purpose: str, now: float) -> Grant:
    covering = [g for g in grants if covers(g, route)]
    if not covering:
        raise GrantError("no_grant", f"no grant covers `{route.action}` on `{route.resource}`")
    live = [g for g in covering if g.expires_at > now]
    if not live:
        raise GrantError("grant_expired", "every grant covering this request has expired")
    matching = [g for g in live if g.purpose == purpose]
    if not matching:
        raise GrantError(
            "purpose_mismatch", f"no grant for purpose `{purpose}`; grants are for another purpose"
        )
    return min(matching, key=lambda g: g.expires_at)  # spend the soonest-expiring first


class EmbeddedGrantStore:
    """In-process store for one Lasthop process. Not shared: use Redis for replicas."""

    def __init__(self, clock: Callable[[], float], generation: Generation | None = None) -> None:
        self._clock = clock
        self._generation = generation or Generation()
        self._grants: dict[str, Grant] = {}
        self._uses: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def _purge(self) -> None:
        horizon = self._clock() - EXPIRED_RETENTION_SECONDS
        for gid in [g.id for g in self._grants.values() if g.expires_at < horizon]:
            del self._grants[gid]
            self._uses.pop(gid, None)

    async def put(self, grant: Grant) -> None:
        self._purge()
        self._grants[grant.id] = grant
        self._generation.bump()

    async def get(self, grant_id: str) -> Grant | None:
        return self._grants.get(grant_id)

    async def revoke(self, grant_id: str) -> Grant | None:
        self._uses.pop(grant_id, None)
        self._generation.bump()
        return self._grants.pop(grant_id, None)

    async def for_pair(self, agent: str, user: str) -> list[Grant]:
        return [g for g in self._grants.values() if g.agent == agent and g.user == user]

    async def list(self, agent: str = "", user: str = "") -> list[Grant]:
        self._purge()
        return [
            g
            for g in self._grants.values()
            if (not agent or g.agent == agent) and (not user or g.user == user)
        ]

    async def consume(self, grant: Grant) -> int:
        async with self._lock:
            used = self._uses.get(grant.id, 0)
            if grant.max_uses and used >= grant.max_uses:
                return used + 1  # refused, not counted
            self._uses[grant.id] = used + 1
            return used + 1

    async def uses(self, grant_id: str) -> int:
        return self._uses.get(grant_id, 0)

    async def close(self) -> None:
        return None
