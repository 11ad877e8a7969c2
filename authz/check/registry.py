"""The registry phase: every agent in the chain registered and active.

Rule: an agent that is missing or deregistered -> `agent_unregistered`; one
that is not active -> `agent_suspended`. Agents live in the store (embedded
or Redis), so every replica sees one truth.
"""

from __future__ import annotations

from authz.errors import RegistryError
from authz.model import Agent, Chain
from authz.reasons import Reason
from authz.stores.protocols import AgentRegistry


async def resolve_chain(registry: AgentRegistry, chain: Chain) -> list[Agent]:
    """The registered, active agents of the chain, first agent first."""
    # One read for the whole chain (one MGET on Redis), whatever its depth.
    found = await registry.get_many(chain.agents) if chain.agents else []
    for agent_id, agent in zip(chain.agents, found, strict=True):
        if agent is None or not agent.registered:
            raise RegistryError(Reason.AGENT_UNREGISTERED, f"agent `{agent_id}` is not registered")
        if not agent.active:
            raise RegistryError(Reason.AGENT_SUSPENDED, f"agent `{agent_id}` is {agent.status}")
    return [a for a in found if a is not None]
