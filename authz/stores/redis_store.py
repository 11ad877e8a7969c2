"""The Redis store, shared by every Lasthop replica: grants and agents.

Topologies (`store.redis_url`):
  redis://host:port/db, rediss://... (TLS)        one server
  redis+sentinel://h1:p1,h2:p2/service[?db=N]      the primary Sentinel names
  redis+cluster://host:port (or redis_cluster=true) a Redis Cluster

Keys are cluster-safe: every key a Lua script touches shares the hash tag of
its (agent, user) pair.
  lasthop:grant:<id>                the grant's JSON, expiring with it (lookup by id)
  lasthop:grants                    set of grant ids (listing)
  lasthop:{<pair>}:pair             hash id -> JSON, read in one round trip per check;
                                    kept an hour past the last expiry so a denial can
                                    say `grant_expired`
  lasthop:{<pair>}:uses:<id>        use counter, incremented atomically with a
                                    check that the grant is still present
  lasthop:agent:<id>, lasthop:agents  agents and the set of their ids

Every write publishes on `lasthop:invalidate` (see cache.py). The client has
explicit socket timeouts (`store.timeout_ms`, default 50 ms) and no retries:
a check that cannot read Redis in time is a 503 `store_unavailable`, never an
allow. So is a reply that does not parse.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from authz.errors import ConfigError, GrantError, StoreUnavailable
from authz.model import Agent, Grant
from authz.reasons import Reason
from authz.stores.protocols import EXPIRED_RETENTION_SECONDS, StoreObserver

log = logging.getLogger(__name__)

PREFIX = "lasthop:"
WAIT_SLACK_MS = 250
CHANNEL = "lasthop:invalidate"

# Add the grant to its pair's hash and extend (never shorten) the hash's life.
# Redis 6.2 has no EXPIRE GT, hence the script.
_PUT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local want = tonumber(ARGV[3]) - tonumber(redis.call('TIME')[1])
if redis.call('TTL', KEYS[1]) < want then redis.call('EXPIRE', KEYS[1], want) end
return 1
"""

# Count one use of a grant that is still in its pair's hash: -1 if revoked. A use
# over the limit is refused without being counted (the answer is max + 1).
_CONSUME = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if used >= tonumber(ARGV[3]) then return used + 1 end
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('EXPIREAT', KEYS[2], ARGV[2]) end
return n
"""

# Replace an agent only if it is still exactly what the caller read (compare and set),
# and publish its invalidation in the same step: a change is never stored unannounced.
_REPLACE_AGENT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

Client = aioredis.Redis | RedisCluster


def pair_tag(agent: str, user: str) -> str:
    digest = hashlib.sha256(f"{agent}\x00{user}".encode()).hexdigest()[:24]
    return f"{{{digest}}}"


def redis_topology(url: str, cluster: bool) -> str:
    """`store.redis_url` in words, without credentials: `redis sentinel `mymaster` via ...`."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    tls = " (TLS)" if parts.scheme.startswith("rediss") else ""
    if parts.scheme.endswith("+sentinel"):
        return f"redis sentinel{tls}: service `{parts.path.strip('/')}` via {hosts}"
    if cluster or parts.scheme.endswith("+cluster"):
        return f"redis cluster{tls}: seeds {hosts}"
    if parts.scheme == "unix":
        return f"redis single server: unix socket {parts.path}"
    return f"redis single server{tls}: {hosts} db {parts.path.strip('/') or '0'}"


def connect(url: str, cluster: bool, timeout_ms: int) -> Client:
    """A client for `url` with explicit timeouts and no blind retries."""
    timeout = timeout_ms / 1000
    options: dict[str, Any] = dict(
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
    )
    parts = urlsplit(url)
    if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel(parts, options)
    if cluster or parts.scheme in ("redis+cluster", "rediss+cluster"):
        scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
        plain = url.replace(parts.scheme + "://", scheme + "://", 1)
        return RedisCluster.from_url(plain, cluster_error_retry_attempts=1, **options)
    return aioredis.Redis.from_url(url, health_check_interval=0, **options)


def _sentinel(parts: Any, options: dict[str, Any]) -> aioredis.Redis:
    hosts = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("store.redis_url", f"sentinel `{item}` is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    service = parts.path.strip("/")
    if not service:
        raise ConfigError("store.redis_url", "a sentinel URL needs /service_name")
    query = parse_qs(parts.query)
    db = int(query.get("db", ["0"])[0])
    password = parts.password or None
    sentinel_options = {k: v for k, v in options.items() if k != "decode_responses"}
    sentinel = Sentinel(
        hosts,
        sentinel_kwargs=sentinel_options,  # type: ignore[no-untyped-call]
        password=password,
        db=db,
        ssl=parts.scheme.startswith("rediss"),
        **options,
    )
    master: aioredis.Redis = sentinel.master_for(service)
    return master


def _unavailable(what: str, err: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"redis {what} failed: {type(err).__name__}: {err}")


class RedisStore:
    """Grants and agents in Redis. One instance per process, shared by both stores."""

    def __init__(
        self,
        url: str,
        timeout_ms: int,
        cluster: bool = False,
        revoke_replicas: int = 0,
        revoke_wait_ms: int = 100,
        observer: StoreObserver | None = None,
    ) -> None:
        self.redis: Any = connect(url, cluster, timeout_ms)
        self._observer = observer
        self._put = self.redis.register_script(_PUT)
        self._consume = self.redis.register_script(_CONSUME)
        self._replace_agent = self.redis.register_script(_REPLACE_AGENT)
        self._revoke_replicas = revoke_replicas
        self._revoke_wait_ms = revoke_wait_ms
        # Revokes and suspends that WAIT for replicas need a socket timeout that allows the
        # wait; Cluster has no WAIT across shards, so there they are plain writes.
        self._waiter: Any = None
        if revoke_replicas > 0 and not isinstance(self.redis, RedisCluster):
            # Redis answers a timed-out WAIT on its next event-loop tick (100 ms at hz 10).
            self._waiter = connect(url, cluster, timeout_ms + revoke_wait_ms + WAIT_SLACK_MS)

    @contextlib.contextmanager
    def _timed(self, op: str) -> Iterator[None]:
        """Redis latency and errors per operation, for the metrics."""
        started = time.perf_counter()
        failed = True
        try:
            yield
            failed = False
        finally:
            if self._observer:
                self._observer.store_call(op, time.perf_counter() - started, failed)

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as err:
            raise _unavailable("ping", err) from err

    async def publish(self, message: str) -> None:
        try:
            await self.redis.publish(CHANNEL, message)
        except (RedisError, OSError) as err:
            # The write itself went through; caches elsewhere expire on their own bound.
            log.error(
                "invalidation `%s` not published: %s",
                message,
                err,
                extra={"event": "store.invalidation_not_published"},
            )

    # grants -----------------------------------------------------------------

    async def put(self, grant: Grant) -> None:
        tag = pair_tag(grant.agent, grant.user)
        value = grant.to_json()
        try:
            await self.redis.set(f"{PREFIX}grant:{grant.id}", value, exat=grant.expires_at)
            await self.redis.sadd(f"{PREFIX}grants", grant.id)
            await self._put(
                keys=[f"{PREFIX}{tag}:pair"],
                args=[grant.id, value, grant.expires_at + EXPIRED_RETENTION_SECONDS],
            )
        except (RedisError, OSError) as err:
            raise _unavailable("write", err) from err
        await self.publish(f"pair\x00{grant.agent}\x00{grant.user}")

    async def get(self, grant_id: str) -> Grant | None:
        try:
            raw = await self.redis.get(f"{PREFIX}grant:{grant_id}")
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err
        return None if raw is None else _grant(raw)

    async def revoke(self, grant_id: str) -> Grant | None:
        grant = await self.get(grant_id)
        if grant is None:
            return None
        tag = pair_tag(grant.agent, grant.user)
        # The pair hash is what checks read: remove it there first. The invalidations go
        # in the same pipeline, before any WAIT: a revoke is published even when the
        # replicas are slow to acknowledge it.
        acked = await self._durable_writes(
            "revoke",
            [
                ("HDEL", f"{PREFIX}{tag}:pair", grant_id),
                ("DEL", f"{PREFIX}{tag}:uses:{grant_id}"),
                ("DEL", f"{PREFIX}grant:{grant_id}"),
                ("SREM", f"{PREFIX}grants", grant_id),
                ("PUBLISH", CHANNEL, f"revoked\x00{grant_id}\x00{grant.expires_at}"),
                ("PUBLISH", CHANNEL, f"pair\x00{grant.agent}\x00{grant.user}"),
            ],
        )
        self._check_acked("revoke", acked)
        return grant

    async def for_pair(self, agent: str, user: str) -> list[Grant]:
        try:
            with self._timed("grants"):
                values = await self.redis.hvals(f"{PREFIX}{pair_tag(agent, user)}:pair")
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err
        return [_grant(v) for v in values]

    async def list(self, agent: str = "", user: str = "") -> list[Grant]:
        try:
            ids = await self.redis.smembers(f"{PREFIX}grants")
            found = []
            for gid in sorted(ids):
                raw = await self.redis.get(f"{PREFIX}grant:{gid.decode()}")
                if raw is None:
                    await self.redis.srem(f"{PREFIX}grants", gid)  # expired: tidy the index
                else:
                    found.append(_grant(raw))
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err
        return [
            g for g in found if (not agent or g.agent == agent) and (not user or g.user == user)
        ]

    async def consume(self, grant: Grant) -> int:
        """Count one use; the count including this one. A grant revoked since it was read: deny."""
        tag = pair_tag(grant.agent, grant.user)
        try:
            with self._timed("consume"):
                count = await self._consume(
                    keys=[f"{PREFIX}{tag}:pair", f"{PREFIX}{tag}:uses:{grant.id}"],
                    args=[grant.id, grant.expires_at, grant.max_uses or 2**53],
                )
        except (RedisError, OSError) as err:
            raise _unavailable("write", err) from err
        if not isinstance(count, int):
            raise StoreUnavailable("redis returned a non-integer use count")
        if count < 0:
            raise GrantError(Reason.NO_GRANT, f"grant `{grant.id}` was revoked during this check")
        return count

    async def uses(self, grant_id: str) -> int:
        grant = await self.get(grant_id)
        if grant is None:
            return 0
        try:
            raw = await self.redis.get(
                f"{PREFIX}{pair_tag(grant.agent, grant.user)}:uses:{grant_id}"
            )
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err
        return int(raw) if raw is not None and raw.isdigit() else 0

    # agents -----------------------------------------------------------------

    async def get_agent(self, agent_id: str) -> Agent | None:
        try:
            with self._timed("agent"):
                raw = await self.redis.get(f"{PREFIX}agent:{agent_id}")
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err
        return None if raw is None else _agent(raw)

    async def add_agent(self, agent: Agent) -> bool:
        try:
            added = await self.redis.set(f"{PREFIX}agent:{agent.id}", agent.to_json(), nx=True)
            if added:
                await self.redis.sadd(f"{PREFIX}agents", agent.id)
        except (RedisError, OSError) as err:
            raise _unavailable("write", err) from err
        if added:
            await self.publish(f"agent\x00{agent.id}")
        return bool(added)

    async def put_agent(self, agent: Agent) -> None:
        acked = await self._durable_writes(
            "suspend" if not agent.active else "",
            [
                ("SET", f"{PREFIX}agent:{agent.id}", agent.to_json()),
                ("SADD", f"{PREFIX}agents", agent.id),
                ("PUBLISH", CHANNEL, f"agent\x00{agent.id}"),
            ],
        )
        if not agent.active:
            self._check_acked("suspend", acked)

    async def replace_agent(self, current: Agent, new: Agent) -> bool:
        """Store `new` only if the stored agent is still `current`; False if it changed."""
        try:
            with self._timed("write"):
                swapped = await self._replace_agent(
                    keys=[f"{PREFIX}agent:{new.id}"],
                    args=[current.to_json(), new.to_json(), CHANNEL, f"agent\x00{new.id}"],
                )
        except (RedisError, OSError) as err:
            raise _unavailable("write", err) from err
        if not swapped:
            return False
        if not new.active:
            acked = await self._durable_writes("suspend", [("SADD", f"{PREFIX}agents", new.id)])
            self._check_acked("suspend", acked)
        return True

    async def list_agents(self) -> builtins.list[Agent]:
        try:
            ids = await self.redis.smembers(f"{PREFIX}agents")
            agents = [await self.get_agent(i.decode()) for i in sorted(ids)]
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err
        return [a for a in agents if a is not None]

    async def _durable_writes(self, what: str, commands: builtins.list[tuple[Any, ...]]) -> int:
        """Run `commands` on one connection, then (for a revoke or suspend, with
        `store.revoke_replicas`) WAIT for replicas on that same connection, whose
        socket timeout allows for the wait. Returns how many replicas acknowledged."""
        waits = bool(what) and self._revoke_replicas > 0 and self._waiter is not None
        client = self._waiter if waits else self.redis
        try:
            with self._timed("write"):
                async with client.pipeline(transaction=False) as pipe:
                    for command in commands:
                        pipe.execute_command(*command)
                    if waits:
                        pipe.execute_command("WAIT", self._revoke_replicas, self._revoke_wait_ms)
                    results = await pipe.execute()
        except RedisTimeoutError as err:
            if waits:  # the writes went out before the WAIT; only its answer is late
                return 0
            raise _unavailable("write", err) from err
        except (RedisError, OSError) as err:
            raise _unavailable("write", err) from err
        return int(results[-1]) if waits else self._revoke_replicas

    def _check_acked(self, what: str, acked: int) -> None:
        if acked < self._revoke_replicas:
            raise StoreUnavailable(
                f"{what} applied on the primary but only {acked} of {self._revoke_replicas} "
                f"replicas acknowledged it within {self._revoke_wait_ms} ms; a failover now "
                "could undo it in Redis (replicas that saw the invalidation still enforce it); "
                "retry"
            )

    async def close(self) -> None:
        await self.redis.aclose()
        if self._waiter is not None:
            await self._waiter.aclose()


def _grant(raw: bytes | str) -> Grant:
    try:
        return Grant.from_json(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise StoreUnavailable(f"redis returned a malformed grant: {err}") from err


def _agent(raw: bytes | str) -> Agent:
    try:
        return Agent.from_json(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise StoreUnavailable(f"redis returned a malformed agent: {err}") from err
