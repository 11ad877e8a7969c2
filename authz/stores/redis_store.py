"""The Redis store, shared by every Lasthop replica: grants and agents.

Topologies (`store.redis_url`):
  redis://host:port/db, rediss://... (TLS)        one server
  redis+sentinel://h1:p1,h2:p2/service[?db=N]      the primary the Sentinels name (sentinel.py)
  redis+cluster://host:port (or redis_cluster=true) a Redis Cluster

Keys are cluster-safe: every key a Lua script touches shares the hash tag of
its (agent, user) pair.
  lasthop:grant:<id>                the grant's JSON, expiring with it (lookup by id)
  lasthop:revoked:<id>              a revoked grant's JSON, until its expiry: a retried
                                    revoke finds it and answers "already revoked"
  lasthop:grants                    set of grant ids (listing)
  lasthop:{<pair>}:pair             hash id -> JSON, read in one round trip per check;
                                    kept an hour past the last expiry so a denial can
                                    say `grant_expired`
  lasthop:{<pair>}:uses:<id>        use counter, incremented atomically with a
                                    check that the grant is still present
  lasthop:agent:<id>, lasthop:agents  agents and the set of their ids

Every write publishes on `lasthop:invalidate` (see invalidation.py).

Failures: `_call` is the one place a store failure is translated. Whatever goes
wrong (a Redis error, a dropped connection, a Cluster that cannot be reached, a
reply of the wrong type or one that does not parse) is `StoreUnavailable`: a
check is a 503 `store_unavailable`, never an allow and never `internal_error`.
The clients have explicit socket timeouts (`store.timeout_ms`) and never
retry; the check's deadline (`server.check_deadline_ms`) bounds the rest.

Durability (replication.py): a revoke and a suspension (`store.revoke_replicas`)
and a counted use (`store.use_replicas`) are followed by `WAIT` for that many
replicas, on the same connection to the node that holds the keys (in a
Cluster, that shard's master). Fewer acknowledgements: the call fails
`store_unavailable`, and a refused use is given back where it was counted.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from authz.errors import GrantError, LasthopError, StoreUnavailable
from authz.model import Agent, Grant, Revocation
from authz.reasons import Reason
from authz.stores.protocols import EXPIRED_RETENTION_SECONDS, StoreObserver
from authz.stores.replication import Command, Replication, check_acked, connect

log = logging.getLogger(__name__)

PREFIX = "lasthop:"
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

# The same, fenced (`store.use_replicas`): also the server's replication id, which names
# the primary's term (a promoted replica takes a new one), for `_GIVE_BACK`.
_TERM = "string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')"
_CONSUME_FENCED = f"""
local term = {_TERM}
local n = (function()
{_CONSUME.strip()}
end)()
return {{n, term}}
"""

# Give back a counted use that was refused, but only on the primary and in the term that
# counted it: there the decrement follows its own increment in the replication stream, so
# every replica holds both or neither. Anywhere else (after a failover, on the promoted
# replica) it would take back a use that server may never have counted.
_GIVE_BACK = f"""
if {_TERM} ~= ARGV[1] or tonumber(redis.call('GET', KEYS[1]) or '0') < 1 then return 0 end
return redis.call('DECR', KEYS[1])
"""

# Replace an agent only if it is still exactly what the caller read (compare and set),
# and publish its invalidation in the same step: a change is never stored unannounced.
_REPLACE_AGENT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""


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
        use_replicas: int = 0,
        sentinel_password: str = "",
    ) -> None:
        clients = connect(url, cluster, timeout_ms, revoke_wait_ms, sentinel_password)
        self.redis: Any = clients.redis
        self.watch = clients.watch
        self._replication = Replication(clients, timeout_ms, revoke_wait_ms)
        self._timeout_ms = timeout_ms
        self._observer = observer
        self._put = self.redis.register_script(_PUT)
        self._consume = self.redis.register_script(_CONSUME)
        self._consume_fenced = self.redis.register_script(_CONSUME_FENCED)
        self._give_back = self.redis.register_script(_GIVE_BACK)
        self._replace_agent = self.redis.register_script(_REPLACE_AGENT)
        self._revoke_replicas = revoke_replicas
        self._revoke_wait_ms = revoke_wait_ms
        self._use_replicas = use_replicas

    @contextlib.contextmanager
    def _call(self, op: str, what: str = "") -> Iterator[None]:
        """The one place a store failure is translated: anything but our own decision
        (a GrantError, say) is StoreUnavailable. Reports latency and errors per op."""
        started = time.perf_counter()
        failed = True
        try:
            yield
            failed = False
        except LasthopError:
            failed = False
            raise
        except Exception as err:  # whatever broke, the store could not answer
            self._demoted(err)
            raise _unavailable(what or op, err) from err
        finally:
            if self._observer:
                self._observer.store_call(op, time.perf_counter() - started, failed)

    def _demoted(self, err: Exception) -> None:
        """A READONLY reply means we wrote to a replica: follow the failover at once."""
        if self.watch is not None and "READONLY" in str(err):
            self.watch.schedule_switch("a write was answered READONLY")

    async def ping(self) -> None:
        with self._call("ping"):
            await self.redis.ping()

    async def fencing_warnings(self) -> builtins.list[str]:
        """What the primaries say about the replicas the configured WAITs need (start-up)."""
        wanted = max(self._use_replicas, self._revoke_replicas)
        if not wanted:
            return []
        with self._call("read"):
            return await self._replication.warnings(wanted)

    async def publish(self, message: str) -> None:
        try:
            with self._call("write", "publish"):
                await self.redis.publish(CHANNEL, message)
        except StoreUnavailable as err:
            # The write itself went through; caches elsewhere expire on their own bound.
            log.error(
                "invalidation `%s` not published: %s",
                message,
                err.detail,
                extra={"event": "store.invalidation_not_published"},
            )

    # grants -----------------------------------------------------------------

    async def put(self, grant: Grant) -> None:
        tag = pair_tag(grant.agent, grant.user)
        value = grant.to_json()
        with self._call("write"):
            await self.redis.set(f"{PREFIX}grant:{grant.id}", value, exat=grant.expires_at)
            await self.redis.sadd(f"{PREFIX}grants", grant.id)
            await self._put(
                keys=[f"{PREFIX}{tag}:pair"],
                args=[grant.id, value, grant.expires_at + EXPIRED_RETENTION_SECONDS],
            )
        await self.publish(f"pair\x00{grant.agent}\x00{grant.user}")

    async def get(self, grant_id: str) -> Grant | None:
        with self._call("read"):
            raw = await self.redis.get(f"{PREFIX}grant:{grant_id}")
            return None if raw is None else Grant.from_json(raw)

    async def revoked(self, grant_id: str) -> Grant | None:
        with self._call("read"):
            raw = await self.redis.get(f"{PREFIX}revoked:{grant_id}")
            return None if raw is None else Grant.from_json(raw)

    async def revoke(self, grant_id: str) -> Revocation | None:
        """Revoke, durably as configured. An earlier call's tombstone makes this a retry:
        it is made durable again and answered as already revoked."""
        earlier = await self.revoked(grant_id)
        grant = earlier or await self.get(grant_id)
        if grant is None:
            return None
        tag = pair_tag(grant.agent, grant.user)
        gid = grant.id
        expires = grant.expires_at + EXPIRED_RETENTION_SECONDS
        # The tombstone first (a retry finds it), then the pair hash checks read, with the
        # invalidations before any WAIT: replicas stop allowing even when the replicas are
        # slow to acknowledge. The lookup key and the listing index need no WAIT: checks
        # never read them, and a revoke retried after losing them finds the grant again.
        durable: list[list[Command]] = [
            [("SET", f"{PREFIX}revoked:{gid}", grant.to_json(), "EXAT", expires)],
            [
                ("HDEL", f"{PREFIX}{tag}:pair", gid),
                ("DEL", f"{PREFIX}{tag}:uses:{gid}"),
                ("PUBLISH", CHANNEL, f"revoked\x00{gid}\x00{grant.expires_at}"),
                ("PUBLISH", CHANNEL, f"pair\x00{grant.agent}\x00{grant.user}"),
            ],
        ]
        plain: list[Command] = [("DEL", f"{PREFIX}grant:{gid}"), ("SREM", f"{PREFIX}grants", gid)]
        await self._durable("revoke", self._revoke_replicas, durable, plain)
        return Revocation(grant, already=earlier is not None)

    async def for_pair(self, agent: str, user: str) -> list[Grant]:
        with self._call("grants", "read"):
            values = await self.redis.hvals(f"{PREFIX}{pair_tag(agent, user)}:pair")
            return [Grant.from_json(v) for v in values]

    async def list(self, agent: str = "", user: str = "") -> list[Grant]:
        with self._call("read"):
            ids = await self.redis.smembers(f"{PREFIX}grants")
            found = []
            for gid in sorted(ids):
                raw = await self.redis.get(f"{PREFIX}grant:{gid.decode()}")
                if raw is None:
                    await self.redis.srem(f"{PREFIX}grants", gid)  # expired: tidy the index
                else:
                    found.append(Grant.from_json(raw))
        return [
            g for g in found if (not agent or g.agent == agent) and (not user or g.user == user)
        ]

    async def consume(self, grant: Grant) -> int:
        """Count one use; the count including this one. A grant revoked since it was read:
        deny. With `store.use_replicas`, allowed only once that many replicas hold it."""
        tag = pair_tag(grant.agent, grant.user)
        keys = [f"{PREFIX}{tag}:pair", f"{PREFIX}{tag}:uses:{grant.id}"]
        args = [grant.id, grant.expires_at, grant.max_uses or 2**53]
        with self._call("consume", "write"):
            if self._use_replicas:
                (count, term), acked = await self._replication.script(
                    self._consume_fenced, keys, args, self._use_replicas, self._timeout_ms
                )
            else:
                count, term, acked = await self._consume(keys=keys, args=args), b"", 0
            if not isinstance(count, int) or isinstance(count, bool):
                raise TypeError(f"a use count must be an integer, got {type(count).__name__}")
        if count < 0:
            raise GrantError(Reason.NO_GRANT, f"grant `{grant.id}` was revoked during this check")
        if self._use_replicas and count <= grant.max_uses and acked < self._use_replicas:
            await self._refund(keys[1], term)
            check_acked("counted use", acked, self._use_replicas, self._timeout_ms)
        return count

    async def _refund(self, uses_key: str, term: bytes) -> None:
        """Give back a use refused for want of acknowledgements, so an outage does not spend
        the grant; only where and when it was counted (`_GIVE_BACK`). A replica that misses
        the refund has counted one use too many, never one too few."""
        try:
            with self._call("write", "refund"):
                client = await self._replication.client_for(uses_key)
                await self._give_back(keys=[uses_key], args=[term], client=client)
        except StoreUnavailable as err:
            log.warning(
                "a refused use stays counted: %s",
                err.detail,
                extra={"event": "store.use_not_given_back"},
            )

    async def uses(self, grant_id: str) -> int:
        grant = await self.get(grant_id)
        if grant is None:
            return 0
        with self._call("read"):
            raw = await self.redis.get(
                f"{PREFIX}{pair_tag(grant.agent, grant.user)}:uses:{grant_id}"
            )
        return int(raw) if isinstance(raw, bytes) and raw.isdigit() else 0

    # agents -----------------------------------------------------------------

    async def get_agent(self, agent_id: str) -> Agent | None:
        with self._call("agent", "read"):
            raw = await self.redis.get(f"{PREFIX}agent:{agent_id}")
            return None if raw is None else Agent.from_json(raw)

    async def get_agents(self, agent_ids: Sequence[str]) -> builtins.list[Agent | None]:
        """One MGET for every agent (per hash slot on a Cluster, where agents spread)."""
        if not agent_ids:
            return []
        keys = [f"{PREFIX}agent:{a}" for a in agent_ids]
        with self._call("agents", "read"):
            if self._replication.cluster:
                raws = await self.redis.mget_nonatomic(keys)
            else:
                raws = await self.redis.mget(keys)
            if not isinstance(raws, list) or len(raws) != len(keys):
                raise ValueError(f"MGET of {len(keys)} agents answered `{raws!r}`"[:200])
            return [None if raw is None else Agent.from_json(raw) for raw in raws]

    async def add_agent(self, agent: Agent) -> bool:
        with self._call("write"):
            added = await self.redis.set(f"{PREFIX}agent:{agent.id}", agent.to_json(), nx=True)
            if added:
                await self.redis.sadd(f"{PREFIX}agents", agent.id)
        if added:
            await self.publish(f"agent\x00{agent.id}")
        return bool(added)

    async def agents_present(self, agent_ids: builtins.list[str]) -> int:
        """How many of these agents the store holds (in any status, tombstones included)."""
        with self._call("read"):
            found = await self.redis.exists(*(f"{PREFIX}agent:{a}" for a in agent_ids))
            return int(found)

    async def put_agent(self, agent: Agent) -> None:
        """Store `agent`; a suspension or deregistration is durable as configured."""
        commands: list[Command] = [
            ("SET", f"{PREFIX}agent:{agent.id}", agent.to_json()),
            ("PUBLISH", CHANNEL, f"agent\x00{agent.id}"),
        ]
        replicas = self._revoke_replicas if not agent.active else 0
        index = [("SADD", f"{PREFIX}agents", agent.id)]
        await self._durable("suspend", replicas, [commands], index)

    async def replace_agent(self, current: Agent, new: Agent) -> bool:
        """Store `new` only if the stored agent is still `current`; False if it changed.
        A suspension is durable as configured: WAIT on the connection that swapped."""
        key = f"{PREFIX}agent:{new.id}"
        args = [current.to_json(), new.to_json(), CHANNEL, f"agent\x00{new.id}"]
        replicas = self._revoke_replicas if not new.active else 0
        with self._call("write"):
            if replicas:
                swapped, acked = await self._replication.script(
                    self._replace_agent, [key], args, replicas, self._revoke_wait_ms
                )
            else:
                swapped, acked = await self._replace_agent(keys=[key], args=args), 0
        if not swapped:
            return False
        if replicas:
            check_acked("suspend", acked, replicas, self._revoke_wait_ms)
        return True

    async def list_agents(self) -> builtins.list[Agent]:
        with self._call("read"):
            ids = await self.redis.smembers(f"{PREFIX}agents")
        agents = await self.get_agents([i.decode() for i in sorted(ids)])
        return [a for a in agents if a is not None]

    # durability -------------------------------------------------------------

    async def _durable(
        self,
        what: str,
        replicas: int,
        groups: builtins.list[builtins.list[Command]],
        plain: builtins.list[Command],
    ) -> None:
        """Run `groups` (each: commands on keys of one slot, in order, each group with one
        that always replicates, so the WAIT covers a retry too), then WAIT for `replicas`
        replicas on the same connection; fewer acknowledged: StoreUnavailable. `plain`
        commands need no WAIT.

        One server or Sentinel: one pipeline. Cluster: one pipeline per group, on the
        master that holds its keys, and the plain commands through the cluster client."""
        if not self._replication.cluster:
            groups, plain = [[c for group in groups for c in group] + plain], []
        acked = replicas
        for batch in groups:
            with self._call("write"):
                acked = min(acked, await self._replication.run(batch, replicas))
        # Only once the rest is durable: a revoke that lost its tombstone in a failover must
        # still find the grant by id when it is retried.
        check_acked(what, acked, replicas, self._revoke_wait_ms)
        for command in plain:
            with self._call("write"):
                await self.redis.execute_command(*command)

    async def close(self) -> None:
        await self._replication.close()
        if self.watch is not None:
            await self.watch.sentinel.aclose()
