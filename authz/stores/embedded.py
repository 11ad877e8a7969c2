"""The embedded store: grants and agents in this process's memory.

For one Lasthop process (the default, and offline checks); every real
deployment with more than one replica uses Redis, so that a revoke or a
suspension on one is seen by all. Every write moves a `Generation` on,
which the decision cache keys on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from authz.model import Agent, Grant, Revocation
from authz.stores.cache import BoundedCache
from authz.stores.protocols import EXPIRED_RETENTION_SECONDS

MAX_TOMBSTONES = 100_000


class Generation:
    """A counter the embedded stores move on with every write."""

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


class EmbeddedGrantStore:
    """In-process grants for one Lasthop process. Not shared: use Redis for replicas."""

    def __init__(self, clock: Callable[[], float], generation: Generation | None = None) -> None:
        self._clock = clock
        self._generation = generation or Generation()
        self._grants: dict[str, Grant] = {}
        self._uses: dict[str, int] = {}
        self._revoked: BoundedCache[str, Grant] = BoundedCache(MAX_TOMBSTONES, clock=clock)
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

    async def revoke(self, grant_id: str) -> Revocation | None:
        self._uses.pop(grant_id, None)
        self._generation.bump()
        grant = self._grants.pop(grant_id, None)
        if grant is not None:
            retain = grant.expires_at + EXPIRED_RETENTION_SECONDS
            self._revoked.put(grant_id, grant, expires_at=retain)
            return Revocation(grant)
        earlier = self._revoked.get(grant_id)
        return None if earlier is None else Revocation(earlier, already=True)

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

    async def revoked(self, grant_id: str) -> Grant | None:
        return self._revoked.get(grant_id)

    async def uses(self, grant_id: str) -> int:
        return self._uses.get(grant_id, 0)

    async def close(self) -> None:
        return None


class EmbeddedAgentStore:
    """In-process agents for one Lasthop process; Redis shares them across replicas."""

    def __init__(self, generation: Generation | None = None) -> None:
        self._agents: dict[str, Agent] = {}
        self._lock = asyncio.Lock()
        self._generation = generation or Generation()

    async def get_agent(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    async def get_agents(self, agent_ids: Sequence[str]) -> list[Agent | None]:
        return [self._agents.get(a) for a in agent_ids]

    async def add_agent(self, agent: Agent) -> bool:
        async with self._lock:
            if agent.id in self._agents:
                return False
            self._agents[agent.id] = agent
            self._generation.bump()
            return True

    async def put_agent(self, agent: Agent) -> None:
        self._agents[agent.id] = agent
        self._generation.bump()

    async def replace_agent(self, current: Agent, new: Agent) -> bool:
        async with self._lock:
            if self._agents.get(new.id) != current:
                return False
            self._agents[new.id] = new
            self._generation.bump()
            return True

    async def list_agents(self) -> list[Agent]:
        return sorted(self._agents.values(), key=lambda a: a.id)

    async def close(self) -> None:
        return None


class SeededRegistry:
    """A fixed in-memory registry: offline checks and policy tests."""

    def __init__(self, agents: dict[str, Agent]) -> None:
        self._agents = dict(agents)

    async def get(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    async def get_many(self, agent_ids: Sequence[str]) -> list[Agent | None]:
        return [self._agents.get(a) for a in agent_ids]
