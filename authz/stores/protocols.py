"""What the phases and the admin services need from a store, as Protocols.

The embedded store (one process) and Redis (a fleet) both provide them;
tests hand the pipeline in-memory ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from authz.model import AccessRequest, Agent, Grant, Revocation

# Expired grants stay readable this long so a denial can say "expired" rather
# than "no grant"; they never cover anything once past `expires_at`.
EXPIRED_RETENTION_SECONDS = 3600
# Access requests stay listable this long after they are made; the audit trail keeps them.
REQUEST_RETENTION_SECONDS = 24 * 3600


class GrantStore(Protocol):
    async def put(self, grant: Grant) -> None: ...
    async def get(self, grant_id: str) -> Grant | None: ...
    async def revoke(self, grant_id: str) -> Revocation | None:
        """Revoke; durable as configured before it returns. A grant revoked before (a retry)
        comes back with `already`; None only for a grant this store never held."""
        ...

    async def for_pair(self, agent: str, user: str) -> list[Grant]: ...
    async def list(self, agent: str = "", user: str = "") -> list[Grant]: ...
    async def consume(self, grant: Grant) -> int:
        """Count one use; return the count including this one. Over the limit: max + 1,
        and nothing is counted."""
        ...

    async def revoked(self, grant_id: str) -> Grant | None:
        """The grant as it was when revoked, while its tombstone lasts (its own expiry)."""
        ...

    async def uses(self, grant_id: str) -> int: ...
    async def close(self) -> None: ...


class AgentRegistry(Protocol):
    """What the check path needs: agents by id."""

    async def get(self, agent_id: str) -> Agent | None: ...
    async def get_many(self, agent_ids: Sequence[str]) -> list[Agent | None]:
        """Every agent of `agent_ids`, in order, in one read of the store."""
        ...


class AgentStore(Protocol):
    async def get_agent(self, agent_id: str) -> Agent | None: ...
    async def get_agents(self, agent_ids: Sequence[str]) -> list[Agent | None]:
        """Every agent of `agent_ids`, in order (None: no such agent), in one round trip."""
        ...

    async def add_agent(self, agent: Agent) -> bool:
        """Store `agent` unless one with its id exists; True if stored."""
        ...

    async def put_agent(self, agent: Agent) -> None: ...
    async def replace_agent(self, current: Agent, new: Agent) -> bool:
        """Store `new` only if the stored agent is still `current` (compare and set)."""
        ...

    async def list_agents(self) -> list[Agent]: ...


class AccessStore(Protocol):
    """Access requests, and the grants bound to each task, shared by every replica."""

    async def add_request(self, request: AccessRequest) -> None: ...
    async def get_request(self, request_id: str) -> AccessRequest | None: ...
    async def replace_request(self, current: AccessRequest, new: AccessRequest) -> bool:
        """Store `new` only if the stored request is still `current` (compare and set)."""
        ...

    async def list_requests(self) -> list[AccessRequest]:
        """Every request made in the last `REQUEST_RETENTION_SECONDS`, oldest first."""
        ...

    async def pending_requests(self) -> list[AccessRequest]:
        """The requests still pending, read through an index of them alone."""
        ...

    async def bind_task(self, txn: str, grant_id: str, until: int) -> None:
        """Remember that `grant_id` is bound to task `txn` (until its expiry)."""
        ...

    async def task_grants(self, txn: str) -> list[str]: ...
    async def end_task(self, txn: str, user: str, until: int) -> None:
        """Mark `user`'s task `txn` ended (until `until`): nothing is granted for it any more."""
        ...

    async def task_ended(self, txn: str, user: str) -> bool: ...


class StoreObserver(Protocol):
    """What the stores report (metrics); op and cache names come from closed sets (the
    metrics' STORE_OPS and CACHES)."""

    def store_call(self, op: str, seconds: float, failed: bool) -> None: ...
    def cache_lookup(self, cache: str, hit: bool) -> None: ...
