"""Redis Sentinel: find the primary, and follow it when it moves.

redis-py looks the primary up only when it opens a connection, so after a
failover its pooled connections keep talking to the old primary, which
answers (and counts uses, and forgets revokes) until Sentinel demotes it some
ten seconds later. Rules here:

- the primary is the one the Sentinels name with the highest config epoch: a
  Sentinel that has not heard of a failover yet names the old primary, and is
  outvoted by one that has;
- a new connection asks `ROLE` before its first command and refuses anything
  but a primary, so a connection opened after any error re-checks the role;
- every Sentinel's `+switch-master` for our service is followed: every pooled
  connection to the old primary, in use or idle (the invalidation
  subscription among them), is closed at once, and the next command asks the
  Sentinels again (`SentinelWatch`);
- a `READONLY` reply on a write does the same (`RedisStore` calls `switch`);
- authentication (`store.sentinel_password`) and TLS (`rediss+sentinel://`,
  with `?ssl_ca_certs=`) reach the Sentinels as well as Redis.

What fences a use or a revoke that reached the old primary anyway is the
replication WAIT (`store.use_replicas`, `store.revoke_replicas`), not this
module: this one only makes the fleet find the new primary quickly.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, parse_qs

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from authz.errors import ConfigError

log = logging.getLogger(__name__)

SWITCH_CHANNEL = "+switch-master"
LISTEN_SECONDS = 1.0  # a Sentinel subscription waits this long per read
RECONNECT_SECONDS = 0.5
TLS_QUERY_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


class PrimaryConnection(SentinelManagedConnection):
    """A connection to the primary the Sentinels name, refused unless `ROLE` says master."""

    async def connect_to(self, address: tuple[str, int]) -> None:
        await super().connect_to(address)  # type: ignore[no-untyped-call]
        await self.send_command("ROLE")
        role = await self.read_response()
        kind = role[0].decode() if isinstance(role, list) and role else repr(role)
        if kind != "master":
            await self.disconnect()
            raise RedisConnectionError(
                f"`{address[0]}:{address[1]}` is a {kind}, not the primary; the sentinels "
                "will be asked again"
            )


class PrimarySSLConnection(PrimaryConnection, SSLConnection):
    pass


class EpochSentinel(Sentinel):
    """Asks every Sentinel at once and believes the one with the highest config epoch."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        answers = await asyncio.gather(
            *(s.sentinel_master(service_name) for s in self.sentinels), return_exceptions=True
        )
        named = [
            a for a in answers if isinstance(a, dict) and self.check_master_state(a, service_name)
        ]
        if not named:
            errors = "; ".join(
                f"{type(a).__name__}: {a}" for a in answers if not isinstance(a, dict)
            )
            raise MasterNotFoundError(
                f"no sentinel names a primary for `{service_name}`"
                + (f" ({errors})" if errors else "")
            )
        best = max(named, key=lambda state: int(state.get("config-epoch", 0)))
        return str(best["ip"]), int(best["port"])


class PrimaryPool(SentinelConnectionPool):
    """The primary's connections; `switch()` closes every one of them at once."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        tls = kwargs.pop("ssl", False)
        kwargs["connection_class"] = PrimarySSLConnection if tls else PrimaryConnection
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]

    async def switch(self) -> None:
        self.master_address = None
        await self.disconnect(inuse_connections=True)


@dataclass
class SentinelClients:
    """What a `redis+sentinel://` URL connects: one primary client per socket timeout, and
    the watch that switches them all when the primary moves."""

    primary: aioredis.Redis
    waiter: aioredis.Redis  # the same primary, with a socket timeout that allows a WAIT
    watch: SentinelWatch


def connect(
    parts: SplitResult, options: dict[str, Any], waiter_timeout: float, sentinel_password: str
) -> SentinelClients:
    """Clients for `redis+sentinel://h1:p1,h2:p2/service[?db=N&ssl_ca_certs=...]`."""
    hosts = _hosts(parts.netloc.rpartition("@")[2])
    service = parts.path.strip("/")
    if not service:
        raise ConfigError("store.redis_url", "a sentinel URL needs /service_name")
    query = parse_qs(parts.query)
    tls = parts.scheme.startswith("rediss")
    tls_options = {k: query[k][0] for k in TLS_QUERY_KEYS if k in query}
    if tls_options and not tls:
        raise ConfigError("store.redis_url", "`ssl_*` options need rediss+sentinel://")
    db = query.get("db", ["0"])[0]
    if not db.isdigit():
        raise ConfigError("store.redis_url", f"`db={db}` is not a database number")
    shared = {k: v for k, v in options.items() if k != "decode_responses"}
    shared.update(ssl=tls, **tls_options)
    sentinel_options = {**shared, "password": sentinel_password or None}
    sentinel = EpochSentinel(  # type: ignore[no-untyped-call]
        hosts,
        sentinel_kwargs=sentinel_options,
        password=parts.password or None,
        username=parts.username or None,
        db=int(db),
        **{**options, "ssl": tls, **tls_options},
    )
    pools: list[PrimaryPool] = []

    def client(**overrides: Any) -> aioredis.Redis:
        redis: aioredis.Redis = sentinel.master_for(
            service, connection_pool_class=PrimaryPool, **overrides
        )
        assert isinstance(redis.connection_pool, PrimaryPool)
        pools.append(redis.connection_pool)
        return redis

    primary = client()
    waiter = client(socket_timeout=waiter_timeout)
    return SentinelClients(primary, waiter, SentinelWatch(sentinel, service, pools))


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("store.redis_url", f"sentinel `{item}` is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


class SentinelWatch:
    """Follows every Sentinel's `+switch-master`; switches the pools when our primary moves."""

    def __init__(self, sentinel: Sentinel, service: str, pools: list[PrimaryPool]) -> None:
        self.sentinel = sentinel
        self.service = service
        self.pools = pools
        self.switches = 0  # failovers followed (each announced by every Sentinel: counted once)
        self._announced: tuple[str, str] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def switch(self, why: str) -> None:
        """Close every connection to the primary: the next command asks the Sentinels."""
        log.warning(
            "redis primary of `%s`: %s; closing every connection to it",
            self.service,
            why,
            extra={"event": "store.failover_followed"},
        )
        for pool in self.pools:
            await pool.switch()

    def schedule_switch(self, why: str) -> None:
        """`switch` from code that cannot await (the store's error translation)."""
        task = asyncio.get_running_loop().create_task(self.switch(why))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(client) for client in self.sentinel.sentinels))

    async def _follow(self, client: aioredis.Redis) -> None:
        while True:
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(SWITCH_CHANNEL)
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=LISTEN_SECONDS
                    )
                    if message is not None:
                        await self.announced(_text(message.get("data")))
            except (RedisError, OSError) as err:
                log.debug(
                    "sentinel subscription lost (%s); resubscribing",
                    err,
                    extra={"event": "store.sentinel_subscription_lost"},
                )
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RECONNECT_SECONDS)

    async def announced(self, data: str) -> None:
        """`+switch-master <service> <old ip> <old port> <new ip> <new port>`."""
        fields = data.split()
        if len(fields) != 5 or fields[0] != self.service:
            return
        new = (fields[3], fields[4])
        if new == self._announced:
            return  # the other Sentinels repeating the same failover
        self._announced = new
        self.switches += 1
        await self.switch(f"sentinel announced a failover to `{new[0]}:{new[1]}`")


def _text(data: Any) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
