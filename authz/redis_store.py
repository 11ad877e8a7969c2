"""The Redis grant store, shared by every Lasthop replica.

Layout (all keys under `lasthop:`):
  grant:<id>                 the grant's JSON; expires with the grant
  pair:<agent>\\x00<user>     hash id -> JSON, read in one round trip on the
                             check path; kept an hour past the last expiry
                             so a denial can say `grant_expired`
  uses:<id>                  use counter, INCR is atomic across replicas

The client has explicit socket timeouts (`store.timeout_ms`, default 50 ms)
and no retries: a check that cannot read Redis in time is a 503
`store_unavailable`, never an allow. So is a reply that does not parse.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from authz.errors import StoreUnavailable
from authz.grants import EXPIRED_RETENTION_SECONDS
from authz.model import Grant

PREFIX = "lasthop:"

# SET the grant, add it to its pair's hash, and extend (never shorten) the
# hash's life. Redis 6.2 has no EXPIRE GT, hence the script.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
local want = tonumber(ARGV[4]) - tonumber(redis.call('TIME')[1])
if redis.call('TTL', KEYS[2]) < want then redis.call('EXPIRE', KEYS[2], want) end
return 1
"""


def _pair_key(agent: str, user: str) -> str:
    return f"{PREFIX}pair:{agent}\x00{user}"


class RedisGrantStore:
    def __init__(self, url: str, timeout_ms: int) -> None:
        timeout = timeout_ms / 1000
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            decode_responses=False,
        )
        self._put = self._redis.register_script(_PUT)

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis unreachable: {err}") from err

    async def put(self, grant: Grant) -> None:
        keys = [f"{PREFIX}grant:{grant.id}", _pair_key(grant.agent, grant.user)]
        args: list[str | int] = [grant.to_json(), grant.id, grant.expires_at,
                                 grant.expires_at + EXPIRED_RETENTION_SECONDS]
        try:
            await self._put(keys=keys, args=args)
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis write failed: {err}") from err

    async def get(self, grant_id: str) -> Grant | None:
        try:
            raw = await self._redis.get(f"{PREFIX}grant:{grant_id}")
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis read failed: {err}") from err
        return None if raw is None else _parse(raw)

    async def revoke(self, grant_id: str) -> Grant | None:
        grant = await self.get(grant_id)
        if grant is None:
            return None
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(f"{PREFIX}grant:{grant_id}", f"{PREFIX}uses:{grant_id}")
                pipe.hdel(_pair_key(grant.agent, grant.user), grant_id)
                await pipe.execute()
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis write failed: {err}") from err
        return grant

    async def for_pair(self, agent: str, user: str) -> list[Grant]:
        try:
            values = await self._redis.hvals(_pair_key(agent, user))
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis read failed: {err}") from err
        return [_parse(v) for v in values]

    async def list(self, agent: str = "", user: str = "") -> list[Grant]:
        grants: list[Grant] = []
        try:
            async for key in self._redis.scan_iter(match=f"{PREFIX}grant:*", count=500):
                raw = await self._redis.get(key)
                if raw is not None:
                    grants.append(_parse(raw))
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis read failed: {err}") from err
        return [g for g in grants
                if (not agent or g.agent == agent) and (not user or g.user == user)]

    async def consume(self, grant: Grant) -> int:
        key = f"{PREFIX}uses:{grant.id}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expireat(key, grant.expires_at)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis write failed: {err}") from err
        if not isinstance(count, int):
            raise StoreUnavailable("redis returned a non-integer use count")
        return count

    async def uses(self, grant_id: str) -> int:
        try:
            raw = await self._redis.get(f"{PREFIX}uses:{grant_id}")
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis read failed: {err}") from err
        return int(raw) if raw is not None and raw.isdigit() else 0

    async def close(self) -> None:
        await self._redis.aclose()


def _parse(raw: bytes | str) -> Grant:
    try:
        return Grant.from_json(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise StoreUnavailable(f"redis returned a malformed grant: {err}") from err
