"""Access requests and task bindings: embedded (one process) and Redis (a fleet).

A request is written once when it is made and then changed only by compare
and set (`replace_request`), so two replicas deciding the same request at once
cannot both win. Requests stay listable for `REQUEST_RETENTION_SECONDS`.

Redis keys (each command touches one key, so every one is Cluster-safe):
  lasthop:request:<id>        the request's JSON, expiring REQUEST_RETENTION after it was made
  lasthop:requests            sorted set of request ids by creation time (listing)
  lasthop:requests:pending    sorted set of the pending ones by deadline (expiry, end of a
                              task), kept apart so that neither reads every request
  lasthop:task:<txn>          set of the grant ids bound to the task, expiring with the last
  lasthop:task-ended:<n>:<user>:<txn>  present once the user's task has ended (for grants.max_ttl)
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from authz.errors import StoreUnavailable
from authz.model import AccessRequest
from authz.stores.protocols import REQUEST_RETENTION_SECONDS
from authz.stores.redis_store import PREFIX, RedisStore, _unavailable

# Replace a request only if it is still exactly what the caller read; keep its expiry.
_REPLACE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""

# Add a grant to its task's set and extend (never shorten) the set's life (no EXPIRE GT
# before Redis 7, hence the script).
_BIND = """
redis.call('SADD', KEYS[1], ARGV[1])
local want = tonumber(ARGV[2]) - tonumber(redis.call('TIME')[1])
if redis.call('TTL', KEYS[1]) < want then redis.call('EXPIRE', KEYS[1], want) end
return 1
"""


PURGE_SECONDS = 60


PENDING = f"{PREFIX}requests:pending"


class EmbeddedAccessStore:
    """In-process requests for one Lasthop process; Redis shares them across replicas."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._requests: dict[str, AccessRequest] = {}
        self._pending: set[str] = set()
        self._tasks: dict[str, tuple[set[str], int]] = {}  # txn -> (grant ids, until)
        self._ended: dict[tuple[str, str], int] = {}  # (txn, user) -> until
        self._lock = asyncio.Lock()
        self._purged = 0.0

    def _purge(self) -> None:
        """Forget what is past its retention; at most once a minute (it reads everything)."""
        now = self._clock()
        if now - self._purged < PURGE_SECONDS:
            return
        self._purged = now
        horizon = now - REQUEST_RETENTION_SECONDS
        for rid in [r.id for r in self._requests.values() if r.created_at < horizon]:
            del self._requests[rid]
            self._pending.discard(rid)
        for txn in [t for t, (_, until) in self._tasks.items() if until < now]:
            del self._tasks[txn]
        for key in [k for k, until in self._ended.items() if until < now]:
            del self._ended[key]

    async def add_request(self, request: AccessRequest) -> None:
        self._purge()
        self._requests[request.id] = request
        if request.pending:
            self._pending.add(request.id)

    async def get_request(self, request_id: str) -> AccessRequest | None:
        return self._requests.get(request_id)

    async def replace_request(self, current: AccessRequest, new: AccessRequest) -> bool:
        async with self._lock:
            if self._requests.get(new.id) != current:
                return False
            self._requests[new.id] = new
            if not new.pending:
                self._pending.discard(new.id)
            return True

    async def list_requests(self) -> list[AccessRequest]:
        self._purge()
        return sorted(self._requests.values(), key=lambda r: (r.created_at, r.id))

    async def pending_requests(self) -> list[AccessRequest]:
        found = [self._requests.get(rid) for rid in sorted(self._pending)]
        return [r for r in found if r is not None and r.pending]

    async def bind_task(self, txn: str, grant_id: str, until: int) -> None:
        ids, last = self._tasks.get(txn, (set(), 0))
        ids.add(grant_id)
        self._tasks[txn] = (ids, max(last, until))

    async def task_grants(self, txn: str) -> list[str]:
        return sorted(self._tasks.get(txn, (set(), 0))[0])

    async def end_task(self, txn: str, user: str, until: int) -> None:
        self._ended[(txn, user)] = max(self._ended.get((txn, user), 0), until)

    async def task_ended(self, txn: str, user: str) -> bool:
        return self._ended.get((txn, user), 0) > self._clock()


class RedisAccessStore:
    """Requests and task bindings in the fleet's Redis, beside its grants and agents."""

    def __init__(self, store: RedisStore, clock: Callable[[], float]) -> None:
        self._redis: Any = store.redis
        self._clock = clock
        self._replace = self._redis.register_script(_REPLACE)
        self._bind = self._redis.register_script(_BIND)

    async def add_request(self, request: AccessRequest) -> None:
        until = request.created_at + REQUEST_RETENTION_SECONDS
        try:
            async with self._redis.pipeline(transaction=False) as pipe:  # one round trip
                pipe.set(f"{PREFIX}request:{request.id}", request.to_json(), exat=until)
                pipe.zadd(f"{PREFIX}requests", {request.id: request.created_at})
                if request.pending:
                    pipe.zadd(PENDING, {request.id: request.expires_at})
                await pipe.execute()
        except (RedisError, OSError) as err:
            raise _unavailable("write", err) from err

    async def get_request(self, request_id: str) -> AccessRequest | None:
        try:
            raw = await self._redis.get(f"{PREFIX}request:{request_id}")
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err
        return None if raw is None else _request(raw)

    async def replace_request(self, current: AccessRequest, new: AccessRequest) -> bool:
        try:
            swapped = await self._replace(
                keys=[f"{PREFIX}request:{new.id}"], args=[current.to_json(), new.to_json()]
            )
            if swapped and not new.pending:  # a stale entry is only skipped and tidied later
                await self._redis.zrem(PENDING, new.id)
        except (RedisError, OSError) as err:
            raise _unavailable("write", err) from err
        return bool(swapped)

    async def list_requests(self) -> builtins.list[AccessRequest]:
        index = f"{PREFIX}requests"
        horizon = int(self._clock()) - REQUEST_RETENTION_SECONDS
        try:
            await self._redis.zremrangebyscore(index, "-inf", f"({horizon}")
            ids = await self._redis.zrange(index, 0, -1)
            found = []
            for rid in ids:
                raw = await self._redis.get(f"{PREFIX}request:{rid.decode()}")
                if raw is not None:
                    found.append(_request(raw))
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err
        return found

    async def pending_requests(self) -> builtins.list[AccessRequest]:
        try:
            ids = await self._redis.zrange(PENDING, 0, -1)
            found = []
            for rid in ids:
                raw = await self._redis.get(f"{PREFIX}request:{rid.decode()}")
                request = None if raw is None else _request(raw)
                if request is not None and request.pending:
                    found.append(request)
                else:  # decided (its removal failed) or gone: tidy the index
                    await self._redis.zrem(PENDING, rid)
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err
        return found

    async def bind_task(self, txn: str, grant_id: str, until: int) -> None:
        try:
            await self._bind(keys=[f"{PREFIX}task:{txn}"], args=[grant_id, until])
        except (RedisError, OSError) as err:
            raise _unavailable("write", err) from err

    async def task_grants(self, txn: str) -> builtins.list[str]:
        try:
            ids = await self._redis.smembers(f"{PREFIX}task:{txn}")
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err
        return sorted(i.decode() for i in ids)

    async def end_task(self, txn: str, user: str, until: int) -> None:
        try:
            await self._redis.set(_ended_key(txn, user), b"1", exat=until)
        except (RedisError, OSError) as err:
            raise _unavailable("write", err) from err

    async def task_ended(self, txn: str, user: str) -> bool:
        try:
            return bool(await self._redis.exists(_ended_key(txn, user)))
        except (RedisError, OSError) as err:
            raise _unavailable("read", err) from err


def _ended_key(txn: str, user: str) -> str:
    return f"{PREFIX}task-ended:{len(user)}:{user}:{txn}"


def _request(raw: bytes | str) -> AccessRequest:
    try:
        return AccessRequest.from_json(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise StoreUnavailable(f"redis returned a malformed access request: {err}") from err
