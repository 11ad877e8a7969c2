"""Local caches of grants and agents in front of Redis, invalidated through pub/sub.

Rules (each one is what keeps a cache from becoming standing privilege):
- every entry expires after `store.cache_ttl_ms` at most;
- a write anywhere publishes on `lasthop:invalidate`; each replica drops the
  entry when the message arrives;
- while the subscription is down (not yet confirmed, dropped, reconnecting,
  or silent: no answer to the PING sent every PING_SECONDS for DEAD_AFTER
  seconds) the caches are empty and every read goes to Redis; a reconnect
  made inside redis-py drops them too, before it resubscribes;
- a read that raced an invalidation is not cached (a generation counter);
- a cached grant is re-checked against its own `expires_at` on every use
  (grants.select does that), so it never outlives its expiry;
- revocations are also kept as local tombstones until the grant's own
  expiry: a grant this replica saw revoked stays revoked here even if a
  Redis failover loses the revoke.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from authz.metrics import Metrics
from authz.model import Agent, Grant
from authz.redis_store import CHANNEL, RedisStore

log = logging.getLogger(__name__)

MAX_ENTRIES = 200_000
RECONNECT_SECONDS = 0.2
PING_SECONDS = 0.2  # the subscription is pinged this often...
DEAD_AFTER = 0.6  # ...and counts as dead after this long without any reply


class _FailFastPubSub(PubSub):
    """A subscription that, when its connection fails, raises instead of reconnecting.

    redis-py reconnects and resubscribes inside the failed read, before the
    error reaches the caller: the caches would stay on through the reconnect
    while invalidations published meanwhile are lost. The listener drops the
    caches on the error and resubscribes itself.
    """

    async def _reconnect(self, conn: Any, *args: Any, **kwargs: Any) -> None:
        await conn.disconnect()


def _pubsub(redis: Any) -> Any:
    if isinstance(redis, RedisCluster):
        return redis.pubsub()  # a cluster routes its own subscription (connect hook below)
    return _FailFastPubSub(redis.connection_pool)


class Invalidation:
    """The pub/sub listener, and the state every cache consults."""

    def __init__(
        self,
        store: RedisStore,
        ttl: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self.metrics = metrics
        self._subscribed = False  # subscription confirmed since the last (re)connect
        self.last_seen = 0.0  # monotonic time of the last message or pong
        self.generation = 0  # bumped by every invalidation, flush and drop
        self.agents: dict[str, tuple[float, int, Agent | None]] = {}
        self.pairs: dict[tuple[str, str], tuple[float, int, list[Grant]]] = {}
        self.tombstones: dict[str, float] = {}  # grant id -> wall-clock expiry

    @property
    def live(self) -> bool:
        """Caching allowed: subscribed, and the subscription answered recently."""
        return self._subscribed and time.monotonic() - self.last_seen < DEAD_AFTER

    def _down(self) -> None:
        self._subscribed = False
        self.drop_all()

    def _on_reconnect(self, connection: Any) -> None:
        """redis-py reconnects (and resubscribes) inside a failed call: drop caches first."""
        self._down()

    def drop_all(self) -> None:
        self.generation += 1
        self.agents.clear()
        self.pairs.clear()

    def handle(self, message: str) -> None:
        kind, _, rest = message.partition("\x00")
        self.generation += 1
        if kind == "agent":
            self.agents.pop(rest, None)
        elif kind == "pair":
            agent, _, user = rest.partition("\x00")
            self.pairs.pop((agent, user), None)
        elif kind == "revoked":
            grant_id, _, expires = rest.partition("\x00")
            self.tombstones[grant_id] = float(expires or 0)
            if len(self.tombstones) % 1000 == 0:
                self.prune_tombstones()
        else:
            self.drop_all()

    async def run(self) -> None:
        """Listen forever; any failure drops the caches until resubscribed."""
        while True:
            pubsub: Any = None
            try:
                pubsub = _pubsub(self.store.redis)
                await pubsub.subscribe(CHANNEL)
                pubsub.connection.register_connect_callback(self._on_reconnect)
                pinged = time.monotonic()
                while True:
                    now = time.monotonic()
                    if now - pinged >= PING_SECONDS:
                        await pubsub.ping()
                        pinged = now
                    if self._subscribed and now - self.last_seen >= DEAD_AFTER:
                        raise ConnectionError(f"no reply from the subscription in {DEAD_AFTER} s")
                    message = await pubsub.get_message(timeout=PING_SECONDS / 2)
                    if message is None:
                        continue
                    heard = time.monotonic()
                    if heard - self.last_seen >= DEAD_AFTER:
                        self.drop_all()  # silent for a while: what was cached may be stale
                    self.last_seen = heard
                    if message["type"] == "subscribe":
                        self.drop_all()  # anything cached before this point may be stale
                        self._subscribed = True
                        log.info("cache invalidation subscribed; local caches on")
                    elif message["type"] == "message":
                        data = message["data"]
                        self._handle_safely(
                            data.decode("utf-8", "replace")
                            if isinstance(data, bytes)
                            else str(data)
                        )
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError) as err:
                if self.live:
                    log.warning("cache invalidation dropped (%s); caches off until it is back", err)
            finally:
                self._down()
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except (RedisError, OSError):
                        pass
            await asyncio.sleep(RECONNECT_SECONDS)

    def _handle_safely(self, message: str) -> None:
        """A message we cannot read drops every cache rather than stopping the listener."""
        try:
            self.handle(message)
        except ValueError:
            log.error("unreadable invalidation %r; dropping every cache", message[:200])
            self.drop_all()

    def count(self, cache: str, hit: bool) -> None:
        if self.metrics:
            self.metrics.cache_requests.labels(cache, "hit" if hit else "miss").inc()

    def prune_tombstones(self) -> None:
        now = time.time()
        for gid in [g for g, exp in self.tombstones.items() if exp < now]:
            del self.tombstones[gid]


class CachingGrantStore:
    """The Redis grant store with a per-(agent, user) cache on the check path."""

    def __init__(self, store: RedisStore, inval: Invalidation) -> None:
        self.store = store
        self.inval = inval

    async def for_pair(self, agent: str, user: str) -> list[Grant]:
        inval = self.inval
        key = (agent, user)
        now = inval.clock()
        entry = inval.pairs.get(key) if inval.live else None
        if entry is not None and entry[0] > now:
            inval.count("grants", True)
            return self._alive(entry[2])
        inval.count("grants", False)
        generation = inval.generation
        grants = await self.store.for_pair(agent, user)
        if inval.live and inval.generation == generation and len(inval.pairs) < MAX_ENTRIES:
            inval.pairs[key] = (now + inval.ttl, generation, grants)
        return self._alive(grants)

    def _alive(self, grants: list[Grant]) -> list[Grant]:
        tombstones = self.inval.tombstones
        return [g for g in grants if g.id not in tombstones] if tombstones else grants

    async def put(self, grant: Grant) -> None:
        await self.store.put(grant)

    async def get(self, grant_id: str) -> Grant | None:
        return await self.store.get(grant_id)

    async def revoke(self, grant_id: str) -> Grant | None:
        # This replica denies the grant before asking Redis, so it holds even if the
        # revoke then fails half way (over-denying is the safe side of a failure).
        known = await self.store.get(grant_id)
        if known is not None:
            self.inval.handle(f"revoked\x00{known.id}\x00{known.expires_at}")
            self.inval.handle(f"pair\x00{known.agent}\x00{known.user}")
        return await self.store.revoke(grant_id)

    async def list(self, agent: str = "", user: str = "") -> list[Grant]:
        return await self.store.list(agent, user)

    async def consume(self, grant: Grant) -> int:
        return await self.store.consume(grant)

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
        now = inval.clock()
        entry = inval.agents.get(agent_id) if inval.live else None
        if entry is not None and entry[0] > now:
            inval.count("agents", True)
            return entry[2]
        inval.count("agents", False)
        generation = inval.generation
        agent = await self.store.get_agent(agent_id)
        if inval.live and inval.generation == generation and len(inval.agents) < MAX_ENTRIES:
            inval.agents[agent_id] = (now + inval.ttl, generation, agent)
        return agent
