"""The agent registry: who may act, and whether it is active right now.

Rule: every agent in the chain must be registered (`agent_unregistered`) and
active (`agent_suspended`). For now the registry is seeded from
`policies/entities.json`; the interface is async so a shared store can back it.
"""

from __future__ import annotations

from typing import Protocol

from authz.errors import RegistryError
from authz.model import Agent, Chain


class AgentRegistry(Protocol):
    async def get(self, agent_id: str) -> Agent | None: ...
    def known(self) -> set[str]: ...


class SeededRegistry:
    def __init__(self, agents: dict[str, Agent]) -> None:
        self._agents = dict(agents)

    async def get(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    def known(self) -> set[str]:
        return set(self._agents)

    def replace(self, agents: dict[str, Agent]) -> None:
        self._agents = dict(agents)  # one reference swap, as the policy bundle


async def resolve_chain(registry: AgentRegistry, chain: Chain) -> list[Agent]:
    """The registered, active agents of the chain, first agent first."""
    resolved: list[Agent] = []
    for agent_id in chain.agents:
        agent = await registry.get(agent_id)
        if agent is None:
            raise RegistryError("agent_unregistered", f"agent `{agent_id}` is not registered")
        if not agent.active:
            raise RegistryError("agent_suspended", f"agent `{agent_id}` is {agent.status}")
        resolved.append(agent)
    return resolved
