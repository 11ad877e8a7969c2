"""`server.check_deadline_ms`: a check that cannot be decided in time is a 503
`store_unavailable`, answered by Lasthop, not left to Envoy's ext_authz timeout (issue 12)."""

from __future__ import annotations

import asyncio

from authz.audit.records import AuditRecord, MemoryAudit
from authz.dev.tokens import DemoIssuer
from authz.model import Decision, Grant
from authz.stores.embedded import EmbeddedGrantStore
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant

DEADLINE = 0.05
GIVE_UP = 5.0  # without a deadline the check would hang: fail the test instead


class StalledStore(EmbeddedGrantStore):
    """Answers nothing, ever: a Redis that is up but stalled (SIGSTOP, a long script)."""

    def __init__(self, clock: Clock, stall: str) -> None:
        super().__init__(clock)
        self.stall = stall
        self.cancelled = 0

    async def _hang(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def for_pair(self, agent: str, user: str) -> list[Grant]:
        if self.stall == "grants":
            await self._hang()
        return await super().for_pair(agent, user)

    async def consume(self, grant: Grant) -> int:
        if self.stall == "uses":
            await self._hang()
        return await super().consume(grant)


def _decide(pipeline_factory: PipelineFactory, store: StalledStore, token: str) -> Decision:
    audit = MemoryAudit()
    pipeline = pipeline_factory(store=store, audit=audit, deadline=DEADLINE)

    async def run() -> Decision:
        return await asyncio.wait_for(pipeline.check(check_input(token)), GIVE_UP)

    decision = asyncio.run(run())
    assert len(audit.records) == 1 and isinstance(audit.records[0], AuditRecord)
    assert audit.records[0].reason == "store_unavailable"  # recorded as it was answered
    return decision


def test_a_stalled_grant_read_is_store_unavailable_at_the_deadline(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    store = StalledStore(clock, "grants")
    asyncio.run(store.put(grant(now=clock())))
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    decision = _decide(make_pipeline, store, token)
    assert (decision.status, decision.reason) == (503, "store_unavailable")
    assert "server.check_deadline_ms (50 ms)" in decision.detail
    assert store.cancelled == 1  # the store call was abandoned, not left running


def test_a_stalled_use_count_is_store_unavailable_never_an_allow(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    store = StalledStore(clock, "uses")
    asyncio.run(store.put(grant(now=clock(), max_uses=3)))
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    decision = _decide(make_pipeline, store, token)
    assert (decision.allowed, decision.reason) == (False, "store_unavailable")
