"""The pipeline in process, with the shipped hospital example: each allow and deny reason."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from authz.dev.tokens import DemoIssuer
from authz.stores.embedded import EmbeddedGrantStore
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_read_allowed_with_a_grant(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    store = EmbeddedGrantStore(clock)
    run(store.put(grant(now=clock.now)))
    pipeline = make_pipeline(store=store)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    decision = run(pipeline.check(check_input(token)))
    assert decision.allowed, decision
    assert decision.reason == "allowed"
    assert decision.policies == ("scribe-read-records",)
    assert decision.chain is not None and decision.chain.render() == "dr-alice -> scribe"


def test_same_read_denied_without_a_grant(
    make_pipeline: PipelineFactory, issuer: DemoIssuer
) -> None:
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    decision = run(make_pipeline().check(check_input(token)))
    assert (decision.allowed, decision.status, decision.reason) == (False, 403, "no_grant")
