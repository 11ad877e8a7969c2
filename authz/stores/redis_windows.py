"""The detection windows in Redis, shared by every replica (see windows.py for what they hold).

One script call counts a whole batch of checks in every window of their
agents and returns their tallies: one round trip, whatever the batch holds.
In a Cluster, where one call may touch only one slot, each check is a call of
its own (and its txn another), all in one pipeline. Keys share the agent's
hash tag:

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

# A batch in one call. KEYS: two per observation, its agent's meta hash and its txn's key
# (the meta hash again when there is no txn to check). ARGV: the spec (breadth, rate, rate
# weight, rate horizon, probing, learning, habit memory, max members, txn memory in ms),
# then nine per observation: the agent's key prefix, now, entity, user hash, denial
# member, token hash, habit, chain, txn owner ('' for no txn). Returns eleven values per
# observation, the ten counts and flags of a Tally and the txn's first owner when it is
# another's. Mirrors EmbeddedWindows; a window with nothing to add is only counted.
_RECORD = """
local breadth, rate, weight = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local horizon, probing, learning = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local memory, cap, txn_ms = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local out = {}
local function slide(key, member, seconds, now)
  if member == '' then
    return redis.call('ZCOUNT', key, '(' .. string.format('%.17g', now - seconds), '+inf')
  end
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, math.ceil(seconds * 1000))
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - seconds)
  local n = redis.call('ZCARD', key)
  if n > cap then
    redis.call('ZREMRANGEBYRANK', key, 0, n - cap - 1)
    n = cap
  end
  return n
end
for i = 0, #KEYS / 2 - 1 do
  local v = 9 + i * 9
  local p, now = ARGV[v + 1], tonumber(ARGV[v + 2])
  local entity, denial, token = ARGV[v + 3], ARGV[v + 5], ARGV[v + 6]
  local meta = KEYS[i * 2 + 1]
  local st = redis.call('HMGET', meta, 'epoch', 'first', 'flag')
  local w = p .. (st[1] or '0') .. ':'
  local patients = slide(w .. 'ent', entity, breadth, now)
  local users = slide(w .. 'ent:' .. ARGV[v + 4], entity, breadth, now)
  local denials = slide(w .. 'den', denial, probing, now)
  local tokens = 0
  if token ~= '' then tokens = slide(w .. 'tok:' .. token, denial, probing, now) end
  local rk = w .. 'rate'
  local bucket = math.floor(now / rate)
  local r = redis.call('HMGET', rk, 'b', 'n', 'm', 'h')
  local b, n = tonumber(r[1]) or bucket, tonumber(r[2]) or 0
  local m, h = tonumber(r[3]) or 0, tonumber(r[4]) or 0
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
  local first = tonumber(st[2] or '')
  if not first then
    first = now
    redis.call('HSET', meta, 'first', ARGV[v + 2])
  end
  redis.call('PEXPIRE', meta, memory * 1000)
  local known, habit, chain = p .. 'known', 0, 0
  if ARGV[v + 7] ~= '' then habit = redis.call('SADD', known, 'h ' .. ARGV[v + 7]) end
  if ARGV[v + 8] ~= '' then chain = redis.call('SADD', known, 'c ' .. ARGV[v + 8]) end
  if ARGV[v + 7] ~= '' or ARGV[v + 8] ~= '' then redis.call('PEXPIRE', known, memory * 1000) end
  local learned, flagged, owner, seen = 0, 0, ARGV[v + 9], ''
  if learning > 0 and now - first >= learning then learned = 1 end
  if (tonumber(st[3] or '0') or 0) > now then flagged = 1 end
  if owner ~= '' then
    seen = redis.call('GET', KEYS[i * 2 + 2])
    if not seen then
      redis.call('SET', KEYS[i * 2 + 2], owner, 'PX', txn_ms)
      seen = ''
    elseif seen == owner then
      seen = ''
    end
  end
  for _, x in ipairs({patients, users, n, baseline, denials, tokens, habit, chain, learned,
                      flagged}) do out[#out + 1] = x end
  out[#out + 1] = seen
end
return out
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

    async def record(self, batch: Sequence[Observation], spec: WindowSpec) -> list[Tally]:
        # the store's one translation of failures: StoreUnavailable, timed as op `detect`
        with self._store._call("detect", "detection windows"):
            replies = await self._send(batch, spec)
        return _tallies(batch, replies)

    async def _send(self, batch: Sequence[Observation], spec: WindowSpec) -> list[Any]:
        """One round trip: the whole batch in one call, or, in a cluster (where one call
        touches one slot), a call per observation and its txn apart, in one pipeline."""
        if not self._cluster:
            keys, args = _batch(batch, spec, with_txn=True)
            replies: list[Any] = await self._record(keys=keys, args=args)
            return replies
        async with self._redis.pipeline(transaction=False) as pipe:
            for obs in batch:
                keys, args = _batch([obs], spec, with_txn=False)
                pipe.eval(_RECORD, len(keys), *keys, *args)
                if obs.txn:
                    txn = [f"{PREFIX}txn:{{{_digest(obs.txn)}}}"]
                    pipe.eval(_TXN, 1, *txn, obs.txn_owner, TXN_MEMORY * 1000)
            found = await pipe.execute()
        replies = []
        for obs in batch:  # each observation's eleven values, its txn's answer last
            row = list(found.pop(0))
            if obs.txn:
                row[-1] = found.pop(0)
            replies.extend(row)
        return replies

    async def claim(self, agent: str, kind: str, seconds: int) -> bool:
        key = f"{agent_prefix(agent)}claim:{kind}"
        with self._store._call("write", "detection claim"):
            return bool(await self._redis.set(key, b"1", nx=True, ex=seconds))

    async def reset(self, agent: str) -> None:
        await self._write("HINCRBY", f"{agent_prefix(agent)}meta", "epoch", 1)

    async def flag(self, agent: str, seconds: int) -> None:
        meta = f"{agent_prefix(agent)}meta"
        until = self._clock() + seconds
        await self._write("HSET", meta, "flag", repr(until))
        await self._write("PEXPIRE", meta, HABIT_MEMORY * 1000)

    async def flagged(self, agent: str) -> bool:
        with self._store._call("read", "detection flag read"):
            raw = await self._redis.hget(f"{agent_prefix(agent)}meta", "flag")
        return raw is not None and float(raw) > self._clock()

    async def _write(self, *command: Any) -> None:
        with self._store._call("write", "detection write"):
            await self._redis.execute_command(*command)


def _batch(
    batch: Sequence[Observation], spec: WindowSpec, with_txn: bool
) -> tuple[list[str], list[Any]]:
    """The record script's KEYS and ARGV for `batch` (see _RECORD)."""
    keys: list[str] = []
    args: list[Any] = [
        spec.breadth, spec.rate, repr(spec.rate_weight), spec.rate_horizon, spec.probing,
        spec.learning, HABIT_MEMORY, MAX_MEMBERS, TXN_MEMORY * 1000,
    ]  # fmt: skip
    for obs in batch:
        prefix = agent_prefix(obs.agent)
        txn = with_txn and bool(obs.txn)
        keys += [f"{prefix}meta", f"{PREFIX}txn:{{{_digest(obs.txn)}}}" if txn else f"{prefix}meta"]
        args += [
            prefix, repr(obs.at), obs.entity, _digest(obs.user), obs.event if obs.denial else "",
            obs.token[:16], obs.habit, obs.chain, obs.txn_owner if txn else "",
        ]  # fmt: skip
    return keys, args


def _tallies(batch: Sequence[Observation], replies: list[Any]) -> list[Tally]:
    if len(replies) != 11 * len(batch):
        raise StoreUnavailable(f"redis detection windows answered {len(replies)} values")
    tallies = []
    for i in range(len(batch)):
        row = replies[i * 11 : i * 11 + 11]
        owner = row[10]
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
