"""The detection windows give the same answers in process and in Redis (a real redis-server).

Every case runs against `EmbeddedWindows` and `RedisWindows`; times are given
with each observation, so sliding windows are exercised without waiting.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from authz.dev import stack as devstack
from authz.stores.redis_store import RedisStore
from authz.stores.redis_windows import RedisWindows, agent_prefix
from authz.stores.windows import (
    MAX_MEMBERS,
    EmbeddedWindows,
    Observation,
    Tally,
    Windows,
    WindowSpec,
)

SPEC = WindowSpec(breadth=600, rate=60, rate_horizon=600, probing=60, learning=3600)
T0 = 1_800_000_000.0

Factory = Callable[[], Windows]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with devstack.workdir("lasthop-windows-") as work:
        server = devstack.RedisServer(Path(work))
        try:
            yield server.url
        finally:
            server.close()


@pytest.fixture(
    params=["embedded", pytest.param("redis", marks=pytest.mark.integration)],
)
def make(request: pytest.FixtureRequest) -> Factory:
    if request.param == "embedded":
        return lambda: EmbeddedWindows(clock=lambda: T0)
    url = request.getfixturevalue("redis_url")
    return lambda: RedisWindows(RedisStore(url, timeout_ms=2000), clock=lambda: T0)


def agent() -> str:
    return f"agent-{uuid.uuid4().hex[:8]}"


def obs(who: str, at: float = T0, **fields: object) -> Observation:
    return replace(Observation(agent=who, user="dr-alice", at=at, event=uuid.uuid4().hex), **fields)  # type: ignore[arg-type]


def record(windows: Windows, *batch: Observation) -> list[Tally]:
    async def go() -> list[Tally]:
        try:
            return await windows.record(list(batch), SPEC)
        finally:
            if isinstance(windows, RedisWindows):
                await windows._store.close()

    return asyncio.run(go())


def call(windows: Windows, work: Callable[[Windows], object]) -> object:
    async def go() -> object:
        try:
            return await work(windows)  # type: ignore[misc]
        finally:
            if isinstance(windows, RedisWindows):
                await windows._store.close()

    return asyncio.run(go())


def test_breadth_counts_distinct_entities_per_agent_and_per_user(make: Factory) -> None:
    a = agent()
    tallies = record(
        make(),
        obs(a, entity='Patient::"p-1"'),
        obs(a, entity='Patient::"p-2"'),
        obs(a, entity='Patient::"p-1"'),  # again: still two
        obs(a, user="dr-bob", entity='Patient::"p-3"'),
        obs(a),  # no entity: counted nowhere, still reported
    )
    assert [t.patients for t in tallies] == [1, 2, 2, 3, 3]
    assert [t.user_patients for t in tallies] == [1, 2, 2, 1, 2]


def test_breadth_slides(make: Factory) -> None:
    a = agent()
    tallies = record(
        make(),
        obs(a, at=T0, entity='Patient::"p-1"'),
        obs(a, at=T0 + 300, entity='Patient::"p-2"'),
        obs(a, at=T0 + 600, entity='Patient::"p-3"'),  # p-1 is exactly 600 s old: gone
        obs(a, at=T0 + 899),
        obs(a, at=T0 + 900),  # p-2 gone too
    )
    assert [t.patients for t in tallies] == [1, 2, 2, 2, 1]


def test_a_sweep_past_the_cap_keeps_the_newest(make: Factory) -> None:
    a = agent()
    sweep = [obs(a, at=T0 + i / 1000, entity=f'Patient::"p-{i}"') for i in range(MAX_MEMBERS + 5)]
    assert record(make(), *sweep)[-1].patients == MAX_MEMBERS


def test_rate_counts_the_window_and_learns_a_baseline(make: Factory) -> None:
    a = agent()
    batch = [obs(a, at=T0 + i) for i in range(0, 60, 6)]  # 10 in the first window
    batch += [obs(a, at=T0 + 60 + i) for i in range(0, 60, 12)]  # 5 in the second
    batch += [obs(a, at=T0 + 120)]  # the third: baseline 10, then 10 * 0.9 + 5 * 0.1
    batch += [obs(a, at=T0 + 300)]  # two empty windows: decayed twice
    tallies = record(make(), *batch)
    assert [t.requests for t in tallies[:10]] == list(range(1, 11))
    assert [t.baseline for t in tallies[:10]] == [0.0] * 10
    assert [t.requests for t in tallies[10:15]] == [1, 2, 3, 4, 5]
    assert tallies[10].baseline == 10.0
    assert (tallies[15].requests, tallies[15].baseline) == (1, 9.5)
    # 9.5 * 0.9 + 1 * 0.1 = 8.65, then two empty windows: * 0.81
    assert tallies[16].baseline == pytest.approx(8.65 * 0.81, abs=0.001)


def test_probing_counts_denials_per_agent_and_per_token(make: Factory) -> None:
    a = agent()
    tallies = record(
        make(),
        obs(a, denial=True, token="t1" * 32),
        obs(a, denial=True, token="t2" * 32),
        obs(a, denial=False, token="t1" * 32),
        obs(a, at=T0 + 30, denial=True, token="t1" * 32),
        obs(a, at=T0 + 61, denial=True, token="t1" * 32),  # the first two have slid out
    )
    assert [t.denials for t in tallies] == [1, 2, 2, 3, 2]
    assert [t.token_denials for t in tallies] == [1, 1, 1, 2, 2]


def test_novelty_learns_habits_and_chains_after_the_learning_period(make: Factory) -> None:
    a = agent()
    later = T0 + SPEC.learning
    tallies = record(
        make(),
        obs(a, habit="read Records", chain="orchestrator scribe"),
        obs(a, habit="read Records", chain="orchestrator scribe"),
        obs(a, at=later - 1, habit="read Medications"),
        obs(a, at=later, habit="write Notes", chain="scribe"),
        obs(a, at=later, habit="write Notes"),
    )
    assert [(t.new_habit, t.new_chain, t.learned) for t in tallies] == [
        (True, True, False),
        (False, False, False),
        (True, False, False),
        (True, True, True),
        (False, False, True),
    ]


def test_a_txn_remembers_its_first_owner(make: Factory) -> None:
    a, txn = agent(), uuid.uuid4().hex
    tallies = record(
        make(),
        obs(a, txn=txn, txn_owner="dr-alice orchestrator"),
        obs(a, txn=txn, txn_owner="dr-alice orchestrator"),
        obs(a, txn=txn, txn_owner="dr-bob orchestrator"),
        obs(a, txn=uuid.uuid4().hex, txn_owner="dr-bob orchestrator"),
    )
    assert [t.txn_owner for t in tallies] == ["", "", "dr-alice orchestrator", ""]


def test_a_reset_starts_the_windows_afresh_and_keeps_the_habits(make: Factory) -> None:
    a = agent()
    windows = make()

    async def go() -> list[Tally]:
        try:
            first = await windows.record(
                [obs(a, entity='Patient::"p-1"', denial=True, habit="read Records")], SPEC
            )
            await windows.reset(a)
            return first + await windows.record(
                [obs(a, at=T0 + 1, entity='Patient::"p-2"', habit="read Records")], SPEC
            )
        finally:
            if isinstance(windows, RedisWindows):
                await windows._store.close()

    before, after = asyncio.run(go())
    assert (before.patients, before.denials, before.requests) == (1, 1, 1)
    assert (after.patients, after.denials, after.requests) == (1, 0, 1)
    assert not after.new_habit


def test_a_claim_is_won_once(make: Factory) -> None:
    a = agent()
    windows = make()

    async def go() -> list[bool]:
        try:
            return [
                await windows.claim(a, "patients", 60),
                await windows.claim(a, "patients", 60),
                await windows.claim(a, "requests", 60),
                await windows.claim(agent(), "patients", 60),
            ]
        finally:
            if isinstance(windows, RedisWindows):
                await windows._store.close()

    assert asyncio.run(go()) == [True, False, True, True]


def test_a_claim_expires() -> None:
    clock = [T0]
    windows = EmbeddedWindows(clock=lambda: clock[0])
    assert asyncio.run(windows.claim("a", "patients", 60))
    clock[0] += 59
    assert not asyncio.run(windows.claim("a", "patients", 60))
    clock[0] += 1
    assert asyncio.run(windows.claim("a", "patients", 60))


@pytest.mark.integration
def test_redis_claims_and_windows_expire_on_their_own(redis_url: str) -> None:
    a = agent()
    windows = RedisWindows(RedisStore(redis_url, timeout_ms=2000), clock=lambda: T0)

    async def go() -> tuple[int, int, int]:
        try:
            await windows.claim(a, "patients", 60)
            await windows.record([obs(a, entity='Patient::"p-1"')], SPEC)
            redis = windows._store.redis
            prefix = agent_prefix(a)
            return (
                await redis.ttl(f"{prefix}claim:patients"),
                await redis.pttl(f"{prefix}0:ent"),
                await redis.pttl(f"{prefix}meta"),
            )
        finally:
            await windows._store.close()

    claim, window, meta = asyncio.run(go())
    assert 0 < claim <= 60
    assert 0 < window <= SPEC.breadth * 1000
    assert meta > SPEC.breadth * 1000  # first seen and the flag outlive the windows


def test_a_flag_holds_for_its_time(make: Factory) -> None:
    a = agent()
    windows = make()

    async def go() -> tuple[bool, bool, bool]:
        try:
            before = await windows.flagged(a)
            await windows.flag(a, 3600)
            tally = (await windows.record([obs(a)], SPEC))[0]
            return before, await windows.flagged(a), tally.approval_required
        finally:
            if isinstance(windows, RedisWindows):
                await windows._store.close()

    assert asyncio.run(go()) == (False, True, True)


@pytest.mark.integration
def test_redis_windows_survive_a_script_flush(redis_url: str) -> None:
    """A restarted or failed-over Redis has no scripts: they are loaded again, once."""
    a = agent()
    windows = RedisWindows(RedisStore(redis_url, timeout_ms=2000), clock=lambda: T0)

    async def go() -> list[int]:
        try:
            first = await windows.record([obs(a, entity='Patient::"p-1"')], SPEC)
            await windows._store.redis.script_flush()
            second = await windows.record([obs(a, entity='Patient::"p-2"', txn="t-1")], SPEC)
            return [first[0].patients, second[0].patients]
        finally:
            await windows._store.close()

    assert asyncio.run(go()) == [1, 2]


@pytest.mark.integration
def test_a_cluster_counts_as_one_server_does() -> None:
    """Redis Cluster: a call per check (one slot each), the txn apart; the same tallies."""
    from authz.dev.topology import ClusterTopology

    agents = [agent() for _ in range(5)]
    batch = [
        obs(agents[i % 5], at=T0 + i, entity=f'Patient::"p-{i % 7}"', denial=i % 3 == 0,
            token=f"{i % 2}" * 64, habit="read Records", txn=f"t-{i % 4}",
            txn_owner=f"dr-alice {agents[i % 5]}")
        for i in range(40)
    ]  # fmt: skip
    expected = asyncio.run(EmbeddedWindows(clock=lambda: T0).record(batch, SPEC))
    with devstack.workdir("lasthop-windows-cluster-") as work:
        cluster = ClusterTopology(Path(work))
        try:
            with warnings.catch_warnings():  # redis-py 6 deprecates an option the store sets
                warnings.simplefilter("ignore", DeprecationWarning)
                store = RedisStore(cluster.url, 2000, cluster=True)
            assert record(RedisWindows(store, clock=lambda: T0), *batch) == expected
        finally:
            cluster.close()
