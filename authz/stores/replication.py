"""Connecting to Redis, and making a write durable: WAIT for replicas on the connection
that wrote.

Rules:
- every client has explicit socket timeouts (`store.timeout_ms`), never retries (a
  Cluster client included), and names its connections `lasthop` (`CLIENT LIST`);
- WAIT covers the writes of its own connection, so it runs on the connection that
  wrote: one server or Sentinel, a second client whose socket timeout allows the
  wait; a Cluster, a client on the master that holds the keys;
- a batch that WAITs holds a write that always replicates (a SET, a PUBLISH): a
  batch of no-ops (a retry) replicates nothing, and its WAIT would answer for
  nothing;
- a WAIT whose answer is late counts as no acknowledgement: the writes went out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from authz.errors import StoreUnavailable
from authz.stores import sentinel

WAIT_SLACK_MS = 250  # Redis answers a timed-out WAIT on its next event-loop tick (hz 10)
CLIENT_NAME = "lasthop"  # what `CLIENT LIST` shows for Lasthop's connections

Command = tuple[Any, ...]


@dataclass
class Clients:
    """What one URL connects: the client, one with a socket timeout that allows a WAIT,
    and (Sentinel) the watch that follows failovers."""

    redis: Any
    waiter: Any
    watch: sentinel.SentinelWatch | None = None


def connect(
    url: str, cluster: bool, timeout_ms: int, wait_ms: int, sentinel_password: str = ""
) -> Clients:
    """Clients for `url` with explicit timeouts and no retries."""
    waiter_timeout = (timeout_ms + wait_ms + WAIT_SLACK_MS) / 1000
    parts = urlsplit(url)
    if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
        found = sentinel.connect(parts, options(timeout_ms), waiter_timeout, sentinel_password)
        return Clients(found.primary, found.waiter, found.watch)
    if cluster or parts.scheme in ("redis+cluster", "rediss+cluster"):
        scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
        plain = url.replace(parts.scheme + "://", scheme + "://", 1)
        nodes = RedisCluster.from_url(plain, **options(timeout_ms))
        return Clients(nodes, nodes)  # a WAIT goes through a client on the node
    client = aioredis.Redis.from_url(url, health_check_interval=0, **options(timeout_ms))
    waiter = aioredis.Redis.from_url(url, health_check_interval=0, **options(timeout_ms))
    waiter.connection_pool.connection_kwargs["socket_timeout"] = waiter_timeout
    return Clients(client, waiter)


def options(timeout_ms: int) -> dict[str, Any]:
    timeout = timeout_ms / 1000
    return dict(
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
        client_name=CLIENT_NAME,
    )


class Replication:
    """Runs writes and WAITs on the connection that wrote them."""

    def __init__(self, clients: Clients, timeout_ms: int, wait_ms: int) -> None:
        self.redis = clients.redis
        self.waiter = clients.waiter
        self.cluster = isinstance(self.redis, RedisCluster)
        self._nodes: dict[str, aioredis.Redis] = {}  # Cluster: a client per master
        self._timeout_ms = timeout_ms
        self._wait_ms = wait_ms

    async def client_for(self, key: str) -> Any:
        """The client whose connection a WAIT for `key` must share."""
        if not self.cluster:
            return self.waiter
        await self.redis.initialize()
        node = self.redis.get_node_from_key(key)
        client = self._nodes.get(node.name)
        if client is None:
            found = options(self._timeout_ms)
            found["socket_timeout"] = (self._timeout_ms + self._wait_ms + WAIT_SLACK_MS) / 1000
            client = self._nodes[node.name] = aioredis.Redis(
                host=node.host, port=node.port, **found
            )
        return client

    async def run(self, batch: list[Command], replicas: int) -> int:
        """One pipeline, then WAIT; the replicas that acknowledged (`replicas` if none asked)."""
        key = next(c[1] for c in batch if c[0] != "PUBLISH")
        client = await self.client_for(key) if replicas else self.redis
        try:
            async with client.pipeline(transaction=False) as pipe:
                for command in batch:
                    pipe.execute_command(*command)
                if replicas:
                    pipe.execute_command("WAIT", replicas, self._wait_ms)
                results = await pipe.execute()
        except RedisTimeoutError:
            if replicas:  # the writes went out before the WAIT; only its answer is late
                return 0
            raise
        return int(results[-1]) if replicas else replicas

    async def script(
        self, script: Any, keys: list[str], args: list[Any], replicas: int, wait_ms: int
    ) -> tuple[Any, int]:
        """Run `script`, then WAIT on the same connection: (its answer, replicas that
        acknowledged). A script that wrote nothing replicates nothing: WAIT answers at once."""
        client = await self.client_for(keys[0])
        async with client.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", replicas, wait_ms)
            answer, acked = await pipe.execute()
        return answer, int(acked)

    async def warnings(self, wanted: int) -> list[str]:
        """What the primaries say about the replicas `wanted` acknowledgements need."""
        if self.cluster:
            found = await self.redis.info("replication", target_nodes=RedisCluster.PRIMARIES)
        else:
            found = {"the primary": await self.redis.info("replication")}
        return [w for name, info in found.items() for w in _fencing(name, info, wanted)]

    async def close(self) -> None:
        for client in {id(c): c for c in (self.redis, self.waiter, *self._nodes.values())}.values():
            await client.aclose()


def check_acked(what: str, acked: int, replicas: int, wait_ms: int) -> None:
    if acked < replicas:
        raise StoreUnavailable(
            f"{what} applied on the primary but only {acked} of {replicas} "
            f"replicas acknowledged it within {wait_ms} ms; a failover now "
            "could undo it in Redis (replicas that saw the invalidation still enforce it); "
            "retry"
        )


def _fencing(name: str, info: dict[str, Any], wanted: int) -> Iterator[str]:
    connected = int(info.get("connected_slaves", 0))
    if connected < wanted:
        yield (
            f"{name} has {connected} connected replicas but store.use_replicas / "
            f"store.revoke_replicas wait for {wanted}: counted uses and revokes answer "
            "store_unavailable until enough are connected"
        )
    if "min_slaves_good_slaves" not in info:
        yield (
            f"{name} has no min-replicas-to-write: a primary cut off from its replicas keeps "
            "accepting grant issues and agent registrations that a failover then loses; set "
            "min-replicas-to-write 1 and min-replicas-max-lag 10 in its configuration"
        )
