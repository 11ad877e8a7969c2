"""The detection windows in Redis, shared by every replica (see windows.py for what they hold).

One script call per observation counts it in every window of its agent and
returns the tally; a batch of observations goes in one pipeline, so one
round trip counts many checks. Keys share the agent's hash tag (Cluster-safe):

  lasthop:detect:{<agent>}:meta           first seen, the window epoch, the approval flag
  lasthop:detect:{<agent>}:<epoch>:...    the sliding windows and the rate state; a reset
                                          moves the epoch on, and the old keys expire
  lasthop:detect:{<agent>}:known          habits and chains (kept across resets)
  lasthop:detect:{<agent>}:claim:<kind>   a detector's claim (SET NX with an expiry)
  lasthop:detect:txn:{<txn>}              a txn's first owner

Every key expires on its own (the window, twice the rate horizon, HABIT_MEMORY,
TXN_MEMORY). A failure raises StoreUnavailable, like every other store call.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from authz.errors import StoreUnavailable
from authz.stores.redis_store import RedisStore
from authz.stores.windows import (
    HABIT_MEMORY,
    MAX_MEMBERS,
    TXN_MEMORY,
    Observation,
    Tally,
    WindowSpec,
)

PREFIX = "lasthop:detect:"

# KEYS[1]: the agent's meta hash. ARGV: the agent's key prefix, now, entity, user hash,
# denial member, token hash, habit, chain, then the spec: breadth, rate, rate weight,
# rate horizon, probing, learning, habit memory, max members. Mirrors EmbeddedWindows.
_RECORD = """
local p, now = ARGV[1], tonumber(ARGV[2])
local breadth, rate, weight = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local horizon, probing, learning = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local memory, cap = tonumber(ARGV[15]), tonumber(ARGV[16])
local meta = KEYS[1]
local w = p .. (redis.call('HGET', meta, 'epoch') or '0') .. ':'
local function slide(key, member, seconds)
  if member ~= '' then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, math.ceil(seconds * 1000))
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - seconds)
  local n = redis.call('ZCARD', key)
  if n > cap then
    redis.call('ZREMRANGEBYRANK', key, 0, n - cap - 1)
    n = cap
  end
  return n
end
local patients = slide(w .. 'ent', ARGV[3], breadth)
local users = slide(w .. 'ent:' .. ARGV[4], ARGV[3], breadth)
local denials = slide(w .. 'den', ARGV[5], probing)
local tokens = 0
if ARGV[6] ~= '' then tokens = slide(w .. 'tok:' .. ARGV[6], ARGV[5], probing) end
local rk = w .. 'rate'
local bucket = math.floor(now / rate)
local st = redis.call('HMGET', rk, 'b', 'n', 'm', 'h')
local b, n = tonumber(st[1]) or bucket, tonumber(st[2]) or 0
local m, h = tonumber(st[3]) or 0, tonumber(st[4]) or 0
if bucket > b then
  if h == 1 then m = m * (1 - weight) + weight * n else m = n end
  if bucket - b - 1 > 0 then m = m * (1 - weight) ^ (bucket - b - 1) end
  b, n, h = bucket, 0, 1
end
n = n + 1
redis.call('HSET', rk, 'b', b, 'n', n, 'm', string.format('%.17g', m), 'h', h)
redis.call('PEXPIRE', rk, 2 * horizon * 1000)
local baseline = 0
if h == 1 then baseline = math.floor(m * 1000) end
local first = tonumber(redis.call('HGET', meta, 'first') or '')
if not first then
  first = now
  redis.call('HSET', meta, 'first', ARGV[2])
end
redis.call('PEXPIRE', meta, memory * 1000)
local known, habit, chain = p .. 'known', 0, 0
if ARGV[7] ~= '' then habit = redis.call('SADD', known, 'h ' .. ARGV[7]) end
if ARGV[8] ~= '' then chain = redis.call('SADD', known, 'c ' .. ARGV[8]) end
if ARGV[7] ~= '' or ARGV[8] ~= '' then redis.call('PEXPIRE', known, memory * 1000) end
local learned = 0
if learning > 0 and now - first >= learning then learned = 1 end
local flagged = 0
if (tonumber(redis.call('HGET', meta, 'flag') or '0') or 0) > now then flagged = 1 end
return {patients, users, n, baseline, denials, tokens, habit, chain, learned, flagged}
"""

# KEYS[1]: the txn's key. ARGV: its owner as this request shows it, memory in ms.
_TXN = """
local first = redis.call('GET', KEYS[1])
if not first then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ''
end
if first == ARGV[1] then return '' end
return first
"""


def agent_prefix(agent: str) -> str:
    return f"{PREFIX}{{{_digest(agent)}}}:"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class RedisWindows:
    """The windows of a fleet, in the store's Redis."""

    def __init__(self, store: RedisStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._redis: Any = store.redis
        self._cluster = isinstance(store.redis, RedisCluster)
        self._record = self._redis.register_script(_RECORD)
        self._txn = self._redis.register_script(_TXN)

    async def record(self, batch: Sequence[Observation], spec: WindowSpec) -> list[Tally]:
        try:
            with self._store._timed("detect"):
                try:
                    replies = await self._send(batch, spec)
                except NoScriptError:  # Redis restarted or failed over: load, then once more
                    for script in (self._record, self._txn):
                        script.sha = await self._redis.script_load(script.script)
                    replies = await self._send(batch, spec)
        except (RedisError, OSError) as err:
            raise StoreUnavailable(
                f"redis detection windows failed: {type(err).__name__}: {err}"
            ) from err
        return _tallies(batch, iter(replies))

    async def _send(self, batch: Sequence[Observation], spec: WindowSpec) -> list[Any]:
        """The batch in one pipeline: one round trip (no SCRIPT EXISTS before it)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for obs in batch:
                keys = [f"{agent_prefix(obs.agent)}meta"]
                self._call(pipe, self._record, keys, _args(obs, spec))
                if obs.txn:
                    key = f"{PREFIX}txn:{{{_digest(obs.txn)}}}"
                    self._call(pipe, self._txn, [key], [obs.txn_owner, TXN_MEMORY * 1000])
            replies: list[Any] = await pipe.execute()
            return replies

    def _call(self, pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
        """Queue a script call: by hash, or, in a cluster pipeline (whose nodes may each
        lack the script), with its source."""
        if self._cluster:
            pipe.eval(script.script, len(keys), *keys, *args)
        else:
            pipe.evalsha(script.sha, len(keys), *keys, *args)

    async def claim(self, agent: str, kind: str, seconds: int) -> bool:
        key = f"{agent_prefix(agent)}claim:{kind}"
        try:
            return bool(await self._redis.set(key, b"1", nx=True, ex=seconds))
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis detection claim failed: {err}") from err

    async def reset(self, agent: str) -> None:
        await self._write("HINCRBY", f"{agent_prefix(agent)}meta", "epoch", 1)

    async def flag(self, agent: str, seconds: int) -> None:
        meta = f"{agent_prefix(agent)}meta"
        until = self._clock() + seconds
        await self._write("HSET", meta, "flag", repr(until))
        await self._write("PEXPIRE", meta, HABIT_MEMORY * 1000)

    async def flagged(self, agent: str) -> bool:
        try:
            raw = await self._redis.hget(f"{agent_prefix(agent)}meta", "flag")
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis detection flag read failed: {err}") from err
        return raw is not None and float(raw) > self._clock()

    async def _write(self, *command: Any) -> None:
        try:
            await self._redis.execute_command(*command)
        except (RedisError, OSError) as err:
            raise StoreUnavailable(f"redis detection write failed: {err}") from err


def _args(obs: Observation, spec: WindowSpec) -> list[Any]:
    return [
        agent_prefix(obs.agent),
        repr(obs.at),
        obs.entity,
        _digest(obs.user),
        obs.event if obs.denial else "",
        obs.token[:16],
        obs.habit,
        obs.chain,
        spec.breadth,
        spec.rate,
        repr(spec.rate_weight),
        spec.rate_horizon,
        spec.probing,
        spec.learning,
        HABIT_MEMORY,
        MAX_MEMBERS,
    ]


def _tallies(batch: Sequence[Observation], replies: Any) -> list[Tally]:
    tallies = []
    for obs in batch:
        row = next(replies)
        if not isinstance(row, list) or len(row) != 10:
            raise StoreUnavailable(f"redis detection windows answered {row!r}")
        owner = next(replies) if obs.txn else b""
        tallies.append(
            Tally(
                patients=int(row[0]),
                user_patients=int(row[1]),
                requests=int(row[2]),
                baseline=int(row[3]) / 1000,
                denials=int(row[4]),
                token_denials=int(row[5]),
                new_habit=bool(row[6]),
                new_chain=bool(row[7]),
                learned=bool(row[8]),
                txn_owner=owner.decode() if isinstance(owner, bytes) else str(owner or ""),
                approval_required=bool(row[9]),
            )
        )
    return tallies
