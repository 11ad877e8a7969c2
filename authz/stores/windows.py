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


@dataclass(slots=True)  # built for every check: a frozen dataclass costs several times more
class Observation:
    """One decided check, as the windows see it. Empty fields are not counted."""

    agent: str
    user: str
    at: float  # seconds since the epoch
    entity: str = ""  # the id of the breadth entity asked for, e.g. p-1001
    denial: bool = False  # a denial that counts as probing
    token: str = ""  # the token's digest, counted with `denial`
    habit: str = ""  # an allowed request's `action ResourceType`
    chain: str = ""  # an allowed request's agents, first to current
    txn: str = ""
    txn_owner: str = ""  # the txn's owner as this request shows it: user and first agent
    event: str = ""  # unique per observation (the decision id): a denial's member


@dataclass(slots=True)  # built for every check: a frozen dataclass costs several times more
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

    __slots__ = ("members",)

    def __init__(self) -> None:
        self.members: OrderedDict[str, float] = OrderedDict()

    def count(self, member: str, at: float, seconds: int) -> int:
        """Add `member` (unless empty) at `at`; how many are younger than `seconds`."""
        members = self.members
        if member:
            members[member] = at
            members.move_to_end(member)
            if len(members) > MAX_MEMBERS:
                members.popitem(last=False)
        since = at - seconds
        while members and next(iter(members.values())) <= since:
            members.popitem(last=False)
        return len(members)


class _Keyed:
    """Sliding windows by key (a user, a token), at most MAX_MEMBERS keys, emptiest go."""

    __slots__ = ("windows",)

    def __init__(self) -> None:
        self.windows: dict[str, _Sliding] = {}

    def count(self, key: str, member: str, at: float, seconds: int) -> int:
        window = self.windows.get(key)
        if window is None:
            if not member:
                return 0
            if len(self.windows) >= MAX_MEMBERS:
                del self.windows[next(iter(self.windows))]
            window = self.windows[key] = _Sliding()
        return window.count(member, at, seconds)


class _Agent:
    """One agent's windows; `reset` keeps what it learnt (first seen, habits)."""

    __slots__ = ("entities", "users", "denials", "tokens", "bucket", "count", "mean", "has_mean",
                 "first", "known")  # fmt: skip

    def __init__(self, first: float, known: set[str] | None = None) -> None:
        self.entities, self.denials = _Sliding(), _Sliding()
        self.users, self.tokens = _Keyed(), _Keyed()
        self.bucket, self.count, self.mean, self.has_mean = -1, 0, 0.0, False
        self.first = first
        self.known = known if known is not None else set()

    def rate(self, at: float, spec: WindowSpec) -> tuple[int, float]:
        bucket = math.floor(at / spec.rate)
        if self.bucket < 0:
            self.bucket = bucket
        elif bucket > self.bucket:
            skipped = bucket - self.bucket - 1
            self.mean = next_baseline(
                self.count, self.mean, self.has_mean, skipped, spec.rate_weight
            )
            self.bucket, self.count, self.has_mean = bucket, 0, True
        self.count += 1
        return self.count, math.floor(self.mean * 1000) / 1000 if self.has_mean else 0.0

    def learn(self, habit: str) -> bool:
        """Add `habit` (a prefixed habit or chain; the bare prefix is nothing); True if new."""
        if len(habit) <= 2 or habit in self.known:
            return False
        self.known.add(habit)
        return True


class EmbeddedWindows:
    """The windows of one process (the embedded store): exact, and lost on restart."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._agents: BoundedCache[str, _Agent] = BoundedCache(MAX_AGENTS, clock=clock)
        self._txns: BoundedCache[str, str] = BoundedCache(MAX_AGENTS, clock=clock)
        self._claims: BoundedCache[tuple[str, str], bool] = BoundedCache(MAX_AGENTS, clock=clock)
        self._flags: BoundedCache[str, bool] = BoundedCache(MAX_AGENTS, clock=clock)

    async def record(self, batch: Sequence[Observation], spec: WindowSpec) -> list[Tally]:
        return [self._one(obs, spec) for obs in batch]

    def _one(self, obs: Observation, spec: WindowSpec) -> Tally:
        at = obs.at
        state = self._agents.get(obs.agent)
        if state is None:
            state = _Agent(at)
        self._agents.put(obs.agent, state, expires_at=at + HABIT_MEMORY)
        denied = obs.event if obs.denial else ""
        requests, baseline = state.rate(at, spec)
        return Tally(
            patients=state.entities.count(obs.entity, at, spec.breadth),
            user_patients=state.users.count(obs.user, obs.entity, at, spec.breadth),
            requests=requests,
            baseline=baseline,
            denials=state.denials.count(denied, at, spec.probing),
            token_denials=state.tokens.count(obs.token, denied, at, spec.probing)
            if obs.token
            else 0,
            new_habit=state.learn("h " + obs.habit),
            new_chain=state.learn("c " + obs.chain),
            learned=spec.learning > 0 and at - state.first >= spec.learning,
            txn_owner=self._txn(obs, at) if obs.txn else "",
            approval_required=bool(self._flags) and obs.agent in self._flags,
        )

    def _txn(self, obs: Observation, at: float) -> str:
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
        state = self._agents.get(agent)
        if state is not None:
            fresh = _Agent(state.first, state.known)
            self._agents.put(agent, fresh, expires_at=self._clock() + HABIT_MEMORY)

    async def flag(self, agent: str, seconds: int) -> None:
        self._flags.put(agent, True, expires_at=self._clock() + seconds)

    async def flagged(self, agent: str) -> bool:
        return agent in self._flags
