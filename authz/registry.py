"""The agent registry: who may act, and whether it is active right now.

Rule: every agent in the chain must be registered (`agent_unregistered`) and
active (`agent_suspended`). Agents live in the store (embedded or Redis),
so every replica sees one truth; `policies/entities.json` seeds the store at
start-up and on reload, adding agents that are missing and never
overwriting one changed through the admin API.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Protocol

from authz.decision_cache import Generation
from authz.errors import RegistryError
from authz.model import Agent, Chain


class AgentRegistry(Protocol):
    """What the check path needs: one agent, by id."""

    async def get(self, agent_id: str) -> Agent | None: ...


class AgentStore(Protocol):
    async def get_agent(self, agent_id: str) -> Agent | None: ...
    async def add_agent(self, agent: Agent) -> bool:
        """Store `agent` unless one with its id exists; True if stored."""
        ...

    async def put_agent(self, agent: Agent) -> None: ...
    async def replace_agent(self, current: Agent, new: Agent) -> bool:
        """Store `new` only if the stored agent is still `current` (compare and set)."""
        ...

    async def list_agents(self) -> list[Agent]: ...


class SeededRegistry:
    """A fixed in-memory registry: offline checks and policy tests."""

    def __init__(self, agents: dict[str, Agent]) -> None:
        self._agents = dict(agents)

    async def get(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)


class StoreRegistry:
    """The registry of a running server: reads go to the shared store."""

    def __init__(self, store: AgentStore) -> None:
        self.store = store

    async def get(self, agent_id: str) -> Agent | None:
        return await self.store.get_agent(agent_id)


class EmbeddedAgentStore:
    """In-process agents for one Lasthop process; Redis shares them across replicas."""

    def __init__(self, generation: Generation | None = None) -> None:
        self._agents: dict[str, Agent] = {}
        self._lock = asyncio.Lock()
        self._generation = generation or Generation()

    async def get_agent(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

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


async def seed(store: AgentStore, agents: dict[str, Agent], now: int) -> list[str]:
    """Add the seed agents the store lacks; return their ids. Existing agents are untouched."""
    added = []
    for agent in agents.values():
        if await store.add_agent(replace(agent, created_at=agent.created_at or now)):
            added.append(agent.id)
    return added


async def resolve_chain(registry: AgentRegistry, chain: Chain) -> list[Agent]:
    """The registered, active agents of the chain, first agent first."""
    # One at a time: lookups are cache hits almost always, and a task per agent costs more.
    found = [await registry.get(a) for a in chain.agents]
    for agent_id, agent in zip(chain.agents, found, strict=True):
        if agent is None or not agent.registered:
            raise RegistryError("agent_unregistered", f"agent `{agent_id}` is not registered")
        if not agent.active:
            raise RegistryError("agent_suspended", f"agent `{agent_id}` is {agent.status}")
    return [a for a in found if a is not None]


def live(agent: Agent | None) -> Agent | None:
    """The agent, unless it is missing or deregistered."""
    return agent if agent is not None and agent.registered else None
