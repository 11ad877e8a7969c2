"""The invalidation channel: pub/sub that keeps every replica's local caches honest.

Rules (each one is what keeps a cache from becoming standing privilege):
- every entry expires after `store.cache_ttl_ms` at most;
- a write anywhere publishes on `lasthop:invalidate`; each replica drops the
  entry when the message arrives;
- while the subscription is down (not yet confirmed, dropped, reconnecting,
  or silent: no answer to the PING sent every PING_SECONDS for DEAD_AFTER
  seconds) the caches are empty and every read goes to Redis; a reconnect
  made inside redis-py drops them too, before it resubscribes;
- a read that raced an invalidation is not cached (a generation counter);
- revocations are also kept as local tombstones until the grant's own
  expiry: a grant this replica saw revoked stays revoked here even if a
  Redis failover loses the revoke (at most MAX_TOMBSTONES are kept; past
  that the oldest go, and Redis alone holds the revoke).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from authz.model import Agent, Grant
from authz.stores.cache import BoundedCache
from authz.stores.protocols import StoreObserver
from authz.stores.redis_store import CHANNEL, RedisStore

log = logging.getLogger(__name__)

MAX_ENTRIES = 200_000
MAX_TOMBSTONES = 1_000_000  # a tombstone only repeats what Redis holds; see the docstring
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
        observer: StoreObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self.observer = observer
        self._subscribed = False  # subscription confirmed since the last (re)connect
        self.last_seen = 0.0  # monotonic time of the last message or pong
        self.generation = 0  # bumped by every invalidation, flush and drop
        # agent id -> (the agent, or None: unregistered); (agent, user) -> their grants
        self.agents: BoundedCache[str, tuple[Agent | None]] = BoundedCache(MAX_ENTRIES, ttl, clock)
        self.pairs: BoundedCache[tuple[str, str], list[Grant]] = BoundedCache(
            MAX_ENTRIES, ttl, clock
        )
        # revoked grant id -> True until the grant's own expiry (wall clock)
        self.tombstones: BoundedCache[str, bool] = BoundedCache(MAX_TOMBSTONES, clock=time.time)

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
            self.agents.pop(rest)
        elif kind == "pair":
            agent, _, user = rest.partition("\x00")
            self.pairs.pop((agent, user))
        elif kind == "revoked":
            grant_id, _, expires = rest.partition("\x00")
            self.tombstones.put(grant_id, True, expires_at=float(expires or 0))
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
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError) as err:
                if self.live:
                    log.warning(
                        "cache invalidation dropped (%s); caches off until it is back",
                        err,
                        extra={"event": "store.invalidation_dropped"},
                    )
            finally:
                self._down()
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen(self, pubsub: Any) -> None:
        """Read messages, pinging every PING_SECONDS; raise once the channel is silent."""
        pinged = time.monotonic()
        while True:
            now = time.monotonic()
            if now - pinged >= PING_SECONDS:
                await pubsub.ping()
                pinged = now
            if self._subscribed and now - self.last_seen >= DEAD_AFTER:
                raise ConnectionError(f"no reply from the subscription in {DEAD_AFTER} s")
            message = await pubsub.get_message(timeout=PING_SECONDS / 2)
            if message is not None:
                self._heard(message)

    def _heard(self, message: dict[str, Any]) -> None:
        heard = time.monotonic()
        if heard - self.last_seen >= DEAD_AFTER:
            self.drop_all()  # silent for a while: what was cached may be stale
        self.last_seen = heard
        if message["type"] == "subscribe":
            self.drop_all()  # anything cached before this point may be stale
            self._subscribed = True
            log.info(
                "cache invalidation subscribed; local caches on",
                extra={"event": "store.invalidation_subscribed"},
            )
        elif message["type"] == "message":
            data = message["data"]
            self._handle_safely(
                data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
            )

    def _handle_safely(self, message: str) -> None:
        """A message we cannot read drops every cache rather than stopping the listener."""
        try:
            self.handle(message)
        except ValueError:
            log.error(
                "unreadable invalidation %r; dropping every cache",
                message[:200],
                extra={"event": "store.invalidation_unreadable"},
            )
            self.drop_all()

    def count(self, cache: str, hit: bool) -> None:
        if self.observer:
            self.observer.cache_lookup(cache, hit)
