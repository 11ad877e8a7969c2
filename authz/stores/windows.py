"""Detection windows: the counts the detectors judge, per agent, kept beside the grants.

    breadth   distinct entities (patients) an agent, and an agent for one user, asked
              for in a sliding window
    rate      the agent's requests in the current fixed window, and the moving average
              of its past windows (its baseline: the first finished window, then an
              exponential average whose weight is window / horizon)
    probing   denials of an agent, and of one of its tokens, in a sliding window
    novelty   the habits (action and resource type) and chains an agent was allowed,
              remembered HABIT_MEMORY past its last allowed request; when the agent was
              first seen; who first used a txn
    claims    a detector fires at most once per agent and kind until its claim expires,
              whichever replica sees the crossing first
    flags     an agent whose new access needs a person's approval, until a time

`EmbeddedWindows` keeps them in this process (the embedded store);
`redis_windows.RedisWindows` keeps them in Redis, so every replica counts one
agent's requests together. Both implement `Windows` and give the same answers
(tests/test_windows.py runs the same cases against both). `reset` starts an
agent's windows afresh (after a containment); habits, claims and flags stay.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from authz.stores.cache import BoundedCache

HABIT_MEMORY = 30 * 86400  # a habit unused this long is forgotten
TXN_MEMORY = 86400  # how long a txn's first owner is remembered
MAX_MEMBERS = 10_000  # per sliding window: a sweep past this keeps the newest
MAX_AGENTS = 100_000  # the embedded windows keep at most this many agents (oldest go)


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Window lengths, in seconds, from `[detect]`."""

    breadth: int
    rate: int
    rate_horizon: int
    probing: int
    learning: int  # novelty learning period; 0: novelty off

    @property
    def rate_weight(self) -> float:
        return self.rate / self.rate_horizon


@dataclass(frozen=True, slots=True)
class Observation:
    """One decided check, as the windows see it. Empty fields are not counted."""

    agent: str
    user: str
    at: float  # seconds since the epoch
    entity: str = ""  # the breadth entity asked for, e.g. Patient::"p-1001"
    denial: bool = False  # a denial that counts as probing
    token: str = ""  # the token's digest, counted with `denial`
    habit: str = ""  # an allowed request's `action ResourceType`
    chain: str = ""  # an allowed request's agents, first to current
    txn: str = ""
    txn_owner: str = ""  # the txn's owner as this request shows it: user and first agent
    event: str = ""  # unique per observation (the decision id): a denial's member


@dataclass(frozen=True, slots=True)
class Tally:
    """The windows of the observation's agent, right after it was counted."""

    patients: int = 0
    user_patients: int = 0
    requests: int = 0
    baseline: float = 0.0  # requests per window, 3 decimals rounded down; 0.0: none yet
    denials: int = 0
    token_denials: int = 0
    new_habit: bool = False
    new_chain: bool = False
    learned: bool = False  # first seen at least the learning period ago
    txn_owner: str = ""  # the txn's first owner, when it is not this observation's
    approval_required: bool = False


class Windows(Protocol):
    async def record(self, batch: Sequence[Observation], spec: WindowSpec) -> list[Tally]:
        """Count every observation, in order; one tally each."""
        ...

    async def claim(self, agent: str, kind: str, seconds: int) -> bool:
        """True for the first caller per (agent, kind) until `seconds` have passed."""
        ...

    async def reset(self, agent: str) -> None: ...
    async def flag(self, agent: str, seconds: int) -> None:
        """The agent's new access needs a person's approval for `seconds`."""
        ...

    async def flagged(self, agent: str) -> bool: ...


def next_baseline(count: int, mean: float, has: bool, skipped: int, weight: float) -> float:
    """The moving average once a window of `count` requests, then `skipped` empty ones, ended.

    The first finished window is the first average (`has` False)."""
    mean = mean * (1 - weight) + weight * count if has else float(count)
    return mean * (1 - weight) ** skipped if skipped > 0 else mean


class _Sliding:
    """Members with their last time, oldest first; at most MAX_MEMBERS."""

    def __init__(self) -> None:
        self.members: OrderedDict[str, float] = OrderedDict()

    def add(self, member: str, at: float) -> None:
        self.members[member] = at
        self.members.move_to_end(member)
        while len(self.members) > MAX_MEMBERS:
            self.members.popitem(last=False)

    def count(self, since: float) -> int:
        members = self.members
        while members and next(iter(members.values())) <= since:
            members.popitem(last=False)
        return len(members)


class EmbeddedWindows:
    """The windows of one process (the embedded store): exact, and lost on restart."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._epoch: BoundedCache[str, int] = BoundedCache(MAX_AGENTS, clock=clock)
        self._sliding: BoundedCache[tuple[str, ...], _Sliding] = BoundedCache(
            MAX_AGENTS, clock=clock
        )
        self._rate: BoundedCache[tuple[str, int], list[float]] = BoundedCache(
            MAX_AGENTS, clock=clock
        )
        self._known: BoundedCache[str, set[str]] = BoundedCache(MAX_AGENTS, clock=clock)
        self._first: BoundedCache[str, float] = BoundedCache(MAX_AGENTS, clock=clock)
        self._txns: BoundedCache[str, str] = BoundedCache(MAX_AGENTS, clock=clock)
        self._claims: BoundedCache[tuple[str, str], bool] = BoundedCache(MAX_AGENTS, clock=clock)
        self._flags: BoundedCache[str, bool] = BoundedCache(MAX_AGENTS, clock=clock)

    async def record(self, batch: Sequence[Observation], spec: WindowSpec) -> list[Tally]:
        return [self._one(obs, spec) for obs in batch]

    def _one(self, obs: Observation, spec: WindowSpec) -> Tally:
        epoch = self._epoch.get(obs.agent) or 0
        at = obs.at
        patients = self._window(("ent", obs.agent, str(epoch)), obs.entity, at, spec.breadth)
        users = self._window(("ent", obs.agent, str(epoch), obs.user), obs.entity, at, spec.breadth)
        denied = obs.event if obs.denial else ""
        denials = self._window(("den", obs.agent, str(epoch)), denied, at, spec.probing)
        token_key = ("tok", obs.agent, str(epoch), obs.token)
        token_denials = self._window(token_key, denied, at, spec.probing) if obs.token else 0
        requests, baseline = self._count_rate(obs.agent, epoch, at, spec)
        first = self._first.get(obs.agent)
        if first is None:
            first = at
        self._first.put(obs.agent, first, expires_at=at + HABIT_MEMORY)
        known = self._known.get(obs.agent)
        if known is None:
            known = set()
        if obs.habit or obs.chain:
            self._known.put(obs.agent, known, expires_at=at + HABIT_MEMORY)
        return Tally(
            patients=patients,
            user_patients=users,
            requests=requests,
            baseline=baseline,
            denials=denials,
            token_denials=token_denials,
            new_habit=self._learn(known, "h " + obs.habit),
            new_chain=self._learn(known, "c " + obs.chain),
            learned=spec.learning > 0 and at - first >= spec.learning,
            txn_owner=self._txn(obs, at),
            approval_required=obs.agent in self._flags,
        )

    def _window(self, key: tuple[str, ...], member: str, at: float, seconds: int) -> int:
        window = self._sliding.get(key)
        if window is None:
            if not member:
                return 0
            window = _Sliding()
        if member:
            window.add(member, at)
        self._sliding.put(key, window, expires_at=at + seconds)
        return window.count(at - seconds)

    def _count_rate(self, agent: str, epoch: int, at: float, spec: WindowSpec) -> tuple[int, float]:
        bucket = math.floor(at / spec.rate)
        state = self._rate.get((agent, epoch))
        if state is None:
            state = [bucket, 0, 0.0, 0]  # bucket, count, mean, has a mean
        if bucket > state[0]:
            skipped = bucket - int(state[0]) - 1
            mean = next_baseline(int(state[1]), state[2], bool(state[3]), skipped, spec.rate_weight)
            state = [bucket, 0, mean, 1]
        state[1] += 1
        self._rate.put((agent, epoch), state, expires_at=at + 2 * spec.rate_horizon)
        return int(state[1]), math.floor(state[2] * 1000) / 1000 if state[3] else 0.0

    @staticmethod
    def _learn(known: set[str], habit: str) -> bool:
        """Add `habit` (a prefixed habit or chain; the bare prefix is nothing); True if new."""
        if len(habit) <= 2 or habit in known:
            return False
        known.add(habit)
        return True

    def _txn(self, obs: Observation, at: float) -> str:
        if not obs.txn:
            return ""
        first = self._txns.get(obs.txn)
        if first is None:
            self._txns.put(obs.txn, obs.txn_owner, expires_at=at + TXN_MEMORY)
            return ""
        return first if first != obs.txn_owner else ""

    async def claim(self, agent: str, kind: str, seconds: int) -> bool:
        if (agent, kind) in self._claims:
            return False
        self._claims.put((agent, kind), True, expires_at=self._clock() + seconds)
        return True

    async def reset(self, agent: str) -> None:
        self._epoch.put(agent, (self._epoch.get(agent) or 0) + 1)

    async def flag(self, agent: str, seconds: int) -> None:
        self._flags.put(agent, True, expires_at=self._clock() + seconds)

    async def flagged(self, agent: str) -> bool:
        return agent in self._flags
