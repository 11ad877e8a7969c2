"""Local caches of grants and agents in front of Redis, kept honest by `invalidation`.

A cached grant is re-checked against its own `expires_at` on every use
(the grants phase does that), so it never outlives its expiry; a grant
with a local tombstone is never returned.
"""

from __future__ import annotations

from collections.abc import Sequence

from authz.model import Agent, Grant, Revocation
from authz.stores.invalidation import Invalidation
from authz.stores.redis_store import RedisStore


class CachingGrantStore:
    """The Redis grant store with a per-(agent, user) cache on the check path."""

    def __init__(self, store: RedisStore, inval: Invalidation) -> None:
        self.store = store
        self.inval = inval

    async def for_pair(self, agent: str, user: str) -> list[Grant]:
        inval = self.inval
        key = (agent, user)
        cached = inval.pairs.get(key) if inval.live or await inval.trusted() else None
        inval.count("grants", cached is not None)
        if cached is not None:
            return self._alive(cached)
        generation = inval.generation
        grants = await self.store.for_pair(agent, user)
        if inval.live and inval.generation == generation:
            inval.pairs.put(key, grants)
        return self._alive(grants)

    def _alive(self, grants: list[Grant]) -> list[Grant]:
        tombstones = self.inval.tombstones
        return [g for g in grants if g.id not in tombstones] if len(tombstones) else grants

    async def put(self, grant: Grant) -> None:
        await self.store.put(grant)

    async def get(self, grant_id: str) -> Grant | None:
        return await self.store.get(grant_id)

    async def revoke(self, grant_id: str) -> Revocation | None:
        # This replica denies the grant before asking Redis, so it holds even if the
        # revoke then fails half way (over-denying is the safe side of a failure).
        known = await self.store.get(grant_id)
        if known is not None:
            self._deny(known)
        revocation = await self.store.revoke(grant_id)
        if revocation is not None:
            self._deny(revocation.grant)  # a retry: the grant came from its tombstone
        return revocation

    def _deny(self, grant: Grant) -> None:
        self.inval.handle(f"revoked\x00{grant.id}\x00{grant.expires_at}")
        self.inval.handle(f"pair\x00{grant.agent}\x00{grant.user}")

    async def list(self, agent: str = "", user: str = "") -> list[Grant]:
        return await self.store.list(agent, user)

    async def consume(self, grant: Grant) -> int:
        return await self.store.consume(grant)

    async def revoked(self, grant_id: str) -> Grant | None:
        return await self.store.revoked(grant_id)

    async def uses(self, grant_id: str) -> int:
        return await self.store.uses(grant_id)

    async def close(self) -> None:
        await self.store.close()


class CachingRegistry:
    """Agents by id, cached; a suspension invalidates every replica's entry."""

    def __init__(self, store: RedisStore, inval: Invalidation) -> None:
        self.store = store
        self.inval = inval

    async def get(self, agent_id: str) -> Agent | None:
        inval = self.inval
        cached = inval.agents.get(agent_id) if inval.live or await inval.trusted() else None
        inval.count("agents", cached is not None)
        if cached is not None:
            return cached[0]
        generation = inval.generation
        agent = await self.store.get_agent(agent_id)
        if inval.live and inval.generation == generation:
            inval.agents.put(agent_id, (agent,))
        return agent

    async def get_many(self, agent_ids: Sequence[str]) -> list[Agent | None]:
        """Cached agents from the cache; all the others in one read of Redis."""
        inval = self.inval
        live = inval.live or await inval.trusted()
        cached = [inval.agents.get(a) if live else None for a in agent_ids]
        for hit in cached:
            inval.count("agents", hit is not None)
        missing = [a for a, hit in zip(agent_ids, cached, strict=True) if hit is None]
        if not missing:
            return [hit[0] for hit in cached if hit is not None]
        generation = inval.generation
        fetched = dict(zip(missing, await self.store.get_agents(missing), strict=True))
        if inval.live and inval.generation == generation:
            for agent_id, agent in fetched.items():
                inval.agents.put(agent_id, (agent,))
        return [
            hit[0] if hit is not None else fetched[a]
            for a, hit in zip(agent_ids, cached, strict=True)
        ]
