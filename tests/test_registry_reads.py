"""The registry phase reads the whole chain in one round trip, whatever its depth (one MGET)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from authz.check.pipeline import Pipeline
from authz.dev.stack import RedisServer
from authz.dev.tokens import DemoIssuer
from authz.model import Agent
from authz.policy.load import PolicyBundle
from authz.stores.caching import CachingRegistry
from authz.stores.invalidation import Invalidation
from authz.stores.redis_store import RedisStore
from authz.stores.registry import StoreRegistry
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant

CHAIN = ["relay-2", "relay-1", "orchestrator", "scribe"]  # all may act for the purpose
RELAYS = [
    Agent(f"relay-{n}", "dr-alice", 10, "active", allowed_purposes=(PURPOSE,)) for n in (1, 2)
]


class Calls:
    """The store's round trips, by operation (a StoreObserver)."""

    def __init__(self) -> None:
        self.ops: list[str] = []

    def store_call(self, op: str, seconds: float, failed: bool) -> None:
        self.ops.append(op)

    def cache_lookup(self, cache: str, hit: bool) -> None:
        return None


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.close()


def pipeline_on(
    make_pipeline: PipelineFactory, store: RedisStore, bundle: PolicyBundle, registry: object
) -> Pipeline:
    pipeline = make_pipeline(store=store)
    pipeline.registry = registry  # type: ignore[assignment]
    return pipeline


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_a_chain_of_any_depth_is_one_registry_read(
    make_pipeline: PipelineFactory,
    issuer: DemoIssuer,
    bundle: PolicyBundle,
    clock: Clock,
    redis_url: str,
    depth: int,
) -> None:
    calls = Calls()

    async def main() -> bool:
        store = RedisStore(redis_url, 500, observer=calls)
        for agent in [*bundle.agents.values(), *RELAYS]:
            await store.add_agent(agent)
        await store.put(grant(now=clock.now))
        calls.ops.clear()
        pipeline = pipeline_on(make_pipeline, store, bundle, StoreRegistry(store))
        token = issuer.access_token("dr-alice", CHAIN[-depth:], purpose=PURPOSE)
        decision = await pipeline.check(check_input(token))
        await store.close()
        return decision.allowed

    assert asyncio.run(main())
    assert calls.ops == ["agents", "grants"]


def test_an_unknown_agent_in_the_middle_is_still_named(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, bundle: PolicyBundle, redis_url: str
) -> None:
    async def main() -> tuple[str, str]:
        store = RedisStore(redis_url, 500)
        for agent in bundle.agents.values():
            await store.add_agent(agent)
        pipeline = pipeline_on(make_pipeline, store, bundle, StoreRegistry(store))
        token = issuer.access_token(
            "dr-alice", ["orchestrator", "ghost", "scribe"], purpose=PURPOSE
        )
        decision = await pipeline.check(check_input(token))
        await store.close()
        return str(decision.reason), decision.detail

    assert asyncio.run(main()) == ("agent_unregistered", "agent `ghost` is not registered")


def test_the_cached_registry_reads_only_what_it_lacks_in_one_round_trip(redis_url: str) -> None:
    calls = Calls()
    agents = [Agent(f"reads-{n}", "dr-alice", 10, "active") for n in range(4)]

    async def main() -> list[list[Agent | None]]:
        store = RedisStore(redis_url, 500, observer=calls)
        for agent in agents:
            await store.add_agent(agent)
        inval = Invalidation(store, ttl=30.0)
        listener = asyncio.create_task(inval.run())
        deadline = time.monotonic() + 5
        while not inval.live and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        registry = CachingRegistry(store, inval)
        calls.ops.clear()
        seen = [await registry.get_many([a.id for a in agents[:2]])]
        seen.append(await registry.get_many([a.id for a in agents] + ["reads-missing"]))
        seen.append(await registry.get_many([a.id for a in agents]))
        listener.cancel()
        await store.close()
        return seen

    first, second, third = asyncio.run(main())
    assert first == agents[:2] and second == [*agents, None] and third == agents
    # the first two, then the other two and the missing one; then nothing: all cached
    assert calls.ops == ["agents", "agents"]
