"""Grant lifecycle events a check causes go into the same trail: used, exhausted, expired."""

from __future__ import annotations

import asyncio

from authz.audit.records import EventRecord, MemoryAudit
from authz.dev.tokens import DemoIssuer
from authz.stores.embedded import EmbeddedGrantStore
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant


def events(audit: MemoryAudit) -> list[tuple[str, str, object]]:
    return [
        (r.event, r.target, r.detail.get("uses"))
        for r in audit.records
        if isinstance(r, EventRecord)
    ]


def test_use_limited_grant_records_each_use_and_its_exhaustion(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    store, audit = EmbeddedGrantStore(clock), MemoryAudit()
    g = grant(now=clock.now, max_uses=2)
    asyncio.run(store.put(g))
    pipeline = make_pipeline(store=store, audit=audit)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    reasons = [asyncio.run(pipeline.check(check_input(token))).reason for _ in range(3)]
    assert reasons == ["allowed", "allowed", "grant_exhausted"]
    assert events(audit) == [
        ("grant_used", g.id, 1),
        ("grant_used", g.id, 2),
        ("grant_exhausted", g.id, 2),
    ]
    assert all(
        isinstance(r, EventRecord) and r.actor == "lasthop"
        for r in audit.records
        if isinstance(r, EventRecord)
    )


def test_an_expired_grant_is_recorded_once(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    store, audit = EmbeddedGrantStore(clock), MemoryAudit()
    g = grant(now=clock.now, ttl=60)
    asyncio.run(store.put(g))
    pipeline = make_pipeline(store=store, audit=audit)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE, ttl=600)
    assert asyncio.run(pipeline.check(check_input(token))).allowed
    clock.now += 61
    for _ in range(2):
        assert asyncio.run(pipeline.check(check_input(token))).reason == "grant_expired"
    assert events(audit) == [("grant_expired", g.id, None)]


def test_an_event_the_trail_refuses_fails_the_check_closed(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    class EventsRefused(MemoryAudit):
        def emit(self, record: object) -> bool:
            return not isinstance(record, EventRecord)

    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now, max_uses=5)))
    pipeline = make_pipeline(store=store, audit=EventsRefused())
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    decision = asyncio.run(pipeline.check(check_input(token)))
    assert (decision.allowed, decision.status, decision.reason) == (False, 503, "audit_unavailable")
