"""The agent registry over a store: reads for the check path, and the seed from entities.json.

`policies/entities.json` seeds the store at start-up and on reload, adding
agents that are missing and never overwriting one changed through the
admin API (a deregistered agent stays as a tombstone, so a seed cannot
bring it back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from authz.model import Agent
from authz.stores.protocols import AgentStore


class StoreRegistry:
    """The registry of a running server: reads go to the shared store."""

    def __init__(self, store: AgentStore) -> None:
        self.store = store

    async def get(self, agent_id: str) -> Agent | None:
        return await self.store.get_agent(agent_id)

    async def get_many(self, agent_ids: Sequence[str]) -> list[Agent | None]:
        return await self.store.get_agents(agent_ids)


async def seed(store: AgentStore, agents: dict[str, Agent], now: int) -> list[str]:
    """Add the seed agents the store lacks; return their ids. Existing agents are untouched."""
    added = []
    for agent in agents.values():
        if await store.add_agent(replace(agent, created_at=agent.created_at or now)):
            added.append(agent.id)
    return added


def live(agent: Agent | None) -> Agent | None:
    """The agent, unless it is missing or deregistered."""
    return agent if agent is not None and agent.registered else None
