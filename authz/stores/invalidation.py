"""The invalidation channel: pub/sub that keeps every replica's local caches honest.

Rules (each one is what keeps a cache from becoming standing privilege):
- every entry expires after `store.cache_ttl_ms` at most;
- a write anywhere publishes on `lasthop:invalidate`; each replica drops the
  entry when the message arrives;
- the caches are trusted only while a ping sent on the subscription in the
  last TRUST_SECONDS has been answered (every message published before it has
  then been applied). The listener pings every PING_SECONDS; a check that
  finds the trust lapsed because a busy or starved process pinged late pings
  itself and waits at most REFRESH_SECONDS for the answer; one that finds a
  ping overdue (unanswered for REFRESH_SECONDS) does not wait, and reads
  Redis. A subscription that died silently (a partition, a hung Redis, a NAT
  that forgot the flow: no FIN, no RST) answers nothing, so a revoke
  published meanwhile is enforced there within TRUST_SECONDS plus one check;
- while the subscription is down (not yet confirmed, dropped, reconnecting,
  silent: reconnected after DEAD_AFTER) the caches are empty and every read
  goes to Redis; a reconnect made inside redis-py drops them too, before it
  resubscribes;
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
from collections import deque
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
PING_SECONDS = 0.02  # the subscription is pinged this often...
TRUST_SECONDS = 0.05  # ...the caches are used only while it answered within this...
DEAD_AFTER = 1.0  # ...and it is reconnected after this long without any reply
REFRESH_SECONDS = 0.03  # a check whose trust lapsed waits at most this long for a pong


class _FailFastPubSub(PubSub):
    """A subscription that, when its connection fails, raises instead of reconnecting.

    redis-py reconnects and resubscribes inside the failed read, before the
    error reaches the caller: the caches would stay on through the reconnect
    while invalidations published meanwhile are lost. The listener drops the
    caches on the error and resubscribes itself.
    """

    async def _reconnect(self, conn: Any, *args: Any, **kwargs: Any) -> None:
        await conn.disconnect()


def _sent_at(data: Any) -> float:
    """The send time a pong carries back (0.0, trusting nothing, if it is not one)."""
    try:
        return float(data.decode() if isinstance(data, bytes) else data)
    except (TypeError, ValueError, UnicodeDecodeError):
        return 0.0


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
        # Monotonic time the last answered PING (or the SUBSCRIBE) was sent: every message
        # published before Redis answered it has been applied. A send time, not an arrival
        # time, so a busy event loop that reads the answer late never stretches the trust.
        self.last_seen = 0.0
        self.generation = 0  # bumped by every invalidation, flush and drop
        self._subscribing_at = 0.0
        self._pubsub: Any = None  # the live subscription, for a check's own ping
        self._pings: deque[float] = deque()  # send times of the pings not yet answered
        self._answered = asyncio.Event()  # set by every pong
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
        return self._subscribed and time.monotonic() - self.last_seen < TRUST_SECONDS

    async def trusted(self) -> bool:
        """`live`, or made live again by a ping answered in time (see the docstring)."""
        if self.live:
            return True
        pubsub = self._pubsub
        pings = self._pings
        if pubsub is None or not self._subscribed:
            return False
        if pings and time.monotonic() - pings[0] >= REFRESH_SECONDS:
            return False  # a ping is overdue: the subscription is silent or slow; read Redis
        try:
            target = pings[-1] if pings else await self._ping(pubsub)
            async with asyncio.timeout(REFRESH_SECONDS):
                while self.last_seen < target:
                    self._answered.clear()
                    await self._answered.wait()
        except (TimeoutError, RedisError, OSError):
            return False  # the listener sees any failure too, and reconnects
        return self.live

    async def _ping(self, pubsub: Any) -> float:
        """Ping the subscription; the pong carries the send time back. The send time."""
        sent = time.monotonic()
        self._pings.append(sent)
        await pubsub.ping(repr(sent))
        return sent

    def _down(self) -> None:
        self._subscribed = False
        self.drop_all()

    def _on_reconnect(self, connection: Any) -> None:
        """redis-py reconnects (and resubscribes) inside a failed call: drop caches first.

        Only for the live subscription's own connection: a closed subscription's goes back
        to the pool, and a command that reconnects it later must not turn the caches off."""
        pubsub = self._pubsub
        if pubsub is not None and connection is pubsub.connection:
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
                self._subscribing_at = time.monotonic()
                await pubsub.subscribe(CHANNEL)
                pubsub.connection.register_connect_callback(self._on_reconnect)
                self._pubsub = pubsub
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
                self._pubsub = None
                self._pings.clear()
                self._answered.set()
                self._down()
                if pubsub is not None:
                    connection = getattr(pubsub, "connection", None)
                    if connection is not None:  # it goes back to the pool
                        connection.deregister_connect_callback(self._on_reconnect)
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen(self, pubsub: Any) -> None:
        """Read messages, pinging every PING_SECONDS; raise once the channel is silent."""
        pinged = time.monotonic()
        while True:
            now = time.monotonic()
            if now - pinged >= PING_SECONDS:
                pinged = await self._ping(pubsub)
            if self._subscribed and now - self.last_seen >= DEAD_AFTER:
                raise ConnectionError(f"no reply from the subscription in {DEAD_AFTER} s")
            # Wake for a message, or for the next ping: nothing in between.
            message = await pubsub.get_message(timeout=max(0.0, pinged + PING_SECONDS - now))
            if message is not None:
                self._heard(message)

    def _heard(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        # A reply after a gap shorter than DEAD_AFTER came over the same connection, after
        # every message published before it: nothing was missed, the caches only paused.
        if time.monotonic() - self.last_seen >= DEAD_AFTER:
            self.drop_all()  # silent for a while: what was cached may be stale
        if kind == "pong":
            sent = _sent_at(message.get("data"))
            while self._pings and self._pings[0] <= sent:
                self._pings.popleft()
            self.last_seen = max(self.last_seen, sent)
            self._answered.set()
        elif kind == "subscribe":
            self.drop_all()  # anything cached before this point may be stale
            self.last_seen = self._subscribing_at
            self._subscribed = True
            log.info(
                "cache invalidation subscribed; local caches on",
                extra={"event": "store.invalidation_subscribed"},
            )
        elif kind == "message":
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
