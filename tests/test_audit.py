"""No record, no allow: a sink that refuses a record turns the decision into audit_unavailable.

The writer itself (chaining, fsync, rotation, faults) is tested in test_audit_log.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from authz.audit.records import MemoryAudit
from authz.dev.tokens import DemoIssuer
from authz.stores.embedded import EmbeddedGrantStore
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant

# --- through the pipeline ---------------------------------------------------------------------


class RefusingAudit(MemoryAudit):
    """A sink that takes nothing (its commit() offers each record to emit())."""

    def __init__(self) -> None:
        super().__init__()
        self.offered: list[Any] = []

    def emit(self, rec: Any) -> bool:
        self.offered.append(rec)
        return False


def test_allowed_request_becomes_503_when_audit_refuses(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)

    # the same request is allowed when the audit trail takes the record
    assert asyncio.run(make_pipeline(store=store).check(check_input(token))).allowed

    sink = RefusingAudit()
    decision = asyncio.run(make_pipeline(store=store, audit=sink).check(check_input(token)))
    assert (decision.allowed, decision.status, decision.reason) == (False, 503, "audit_unavailable")
    assert len(sink.offered) == 1
    assert sink.offered[0].decision == "allow"  # the record it could not take
    assert sink.offered[0].decision_id == decision.decision_id


def test_denied_request_also_becomes_audit_unavailable(
    make_pipeline: PipelineFactory, issuer: DemoIssuer
) -> None:
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    decision = asyncio.run(make_pipeline(audit=RefusingAudit()).check(check_input(token)))
    assert (decision.allowed, decision.status, decision.reason) == (False, 503, "audit_unavailable")
