"""Whole-decision cache: identical requests in one second and one store state share a decision."""

from __future__ import annotations

import asyncio
from typing import Any

from authz.audit.receipts import ReceiptSigner, Unsigned
from authz.audit.records import AuditRecord, Committed, Record, Repeat
from authz.audit.signing import SigningKey
from authz.check.decisions import DecisionCache
from authz.check.pipeline import Pipeline
from authz.dev.tokens import DemoIssuer
from authz.stores.embedded import EmbeddedAgentStore, EmbeddedGrantStore, Generation
from authz.stores.registry import StoreRegistry, seed
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant


class CountingPipeline:
    """Wraps a pipeline built with a decision cache and counts full decisions."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.full = 0
        real = pipeline._decide

        async def counted(*args: Any) -> None:
            self.full += 1
            await real(*args)

        pipeline._decide = counted  # type: ignore[method-assign,assignment]


def build(
    make_pipeline: PipelineFactory, clock: Clock, max_uses: int = 0, with_grant: bool = True
) -> tuple[CountingPipeline, EmbeddedGrantStore, EmbeddedAgentStore]:
    generation = Generation()
    store = EmbeddedGrantStore(clock, generation)
    agents = EmbeddedAgentStore(generation)
    pipeline = make_pipeline(store=store)
    asyncio.run(seed(agents, dict(pipeline.bundle.agents), 0))
    if with_grant:
        asyncio.run(store.put(grant(now=clock.now, max_uses=max_uses)))
    pipeline.registry = StoreRegistry(agents)
    pipeline.decisions = DecisionCache(lambda: generation.value)
    return CountingPipeline(pipeline), store, agents


def test_a_repeat_in_the_same_second_is_served_from_the_cache(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    counting, _, _ = build(make_pipeline, clock)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    first = asyncio.run(counting.pipeline.check(check_input(token)))
    second = asyncio.run(counting.pipeline.check(check_input(token)))
    assert first.allowed and second.allowed
    assert counting.full == 1
    assert first.decision_id != second.decision_id  # every decision has its own id


def test_revoking_the_grant_is_seen_at_once(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    counting, store, _ = build(make_pipeline, clock)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    assert asyncio.run(counting.pipeline.check(check_input(token))).allowed
    g = grant(now=clock.now)
    asyncio.run(store.revoke(g.id))
    assert asyncio.run(counting.pipeline.check(check_input(token))).reason == "no_grant"


def test_suspending_the_agent_is_seen_at_once(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    counting, _, agents = build(make_pipeline, clock)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    assert asyncio.run(counting.pipeline.check(check_input(token))).allowed
    scribe = asyncio.run(agents.get_agent("scribe"))
    assert scribe is not None
    import dataclasses

    asyncio.run(agents.put_agent(dataclasses.replace(scribe, status="suspended")))
    assert asyncio.run(counting.pipeline.check(check_input(token))).reason == "agent_suspended"


def test_the_next_second_decides_afresh(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    counting, _, _ = build(make_pipeline, clock)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    asyncio.run(counting.pipeline.check(check_input(token)))
    clock.now += 1
    asyncio.run(counting.pipeline.check(check_input(token)))
    assert counting.full == 2


def test_use_limited_grants_count_every_use(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    counting, _, _ = build(make_pipeline, clock, max_uses=2)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    reasons = [asyncio.run(counting.pipeline.check(check_input(token))).reason for _ in range(4)]
    assert reasons == ["allowed", "allowed", "grant_exhausted", "grant_exhausted"]


def test_a_503_is_never_cached(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    counting, store, _ = build(make_pipeline, clock)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    calls = {"n": 0}
    real = store.for_pair

    async def flaky(agent: str, user: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            from authz.errors import StoreUnavailable

            raise StoreUnavailable("redis down")
        return await real(agent, user)

    store.for_pair = flaky  # type: ignore[method-assign]
    first = asyncio.run(counting.pipeline.check(check_input(token)))
    second = asyncio.run(counting.pipeline.check(check_input(token)))
    assert (first.status, first.reason) == (503, "store_unavailable")
    assert second.allowed


def test_no_generation_means_no_cache(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    counting, _, _ = build(make_pipeline, clock)
    counting.pipeline.decisions = DecisionCache(lambda: None)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    for _ in range(3):
        asyncio.run(counting.pipeline.check(check_input(token)))
    assert counting.full == 3


def test_a_method_override_is_part_of_the_key(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    """Found by issue 11's Envoy test: an allowed GET was served from the cache to the same
    GET carrying `x-http-method-override: DELETE`, which the pipeline denies."""
    counting, _, _ = build(make_pipeline, clock)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    plain = asyncio.run(counting.pipeline.check(check_input(token)))
    override = {"x-http-method-override": ["DELETE"]}
    overridden = asyncio.run(counting.pipeline.check(check_input(token, headers=override)))
    assert plain.allowed
    assert (overridden.allowed, overridden.reason) == (False, "method_override")
    assert counting.full == 2


class RawAudit:
    """Keeps what the pipeline hands the sink, as handed."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def commit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        self.records.append(record)
        return Committed(True, receipt.signer.sign([receipt])[0] if receipt else "")


def test_a_repeat_is_recorded_as_a_repeat_of_the_first_record_with_its_own_id(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    counting, _, _ = build(make_pipeline, clock)
    pipeline = counting.pipeline
    pipeline.audit = audit = RawAudit()
    pipeline.receipts = ReceiptSigner(SigningKey.generate(), 60, clock)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    first, second = (asyncio.run(pipeline.check(check_input(token))) for _ in range(2))
    made, repeated = audit.records
    assert isinstance(made, AuditRecord) and isinstance(repeated, Repeat)
    assert repeated.like is made and made.decision_id == first.decision_id
    assert repeated.decision_id == second.decision_id != first.decision_id
    assert repeated.record() == AuditRecord.of(
        second, check_input(token), repeated.time, repeated.latency_ms / 1000, repeated.trace_id
    )
    assert first.receipt != second.receipt  # each receipt binds its own decision id
