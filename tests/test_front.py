"""The threaded front: a cached decision is answered in the handler's thread, after its record is
as safe as `audit.fsync` promises; anything else is decided on the event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as pb
from google.rpc import code_pb2

from authz.audit.receipts import ReceiptSigner, verify
from authz.audit.signing import SigningKey
from authz.audit.trail import TrailOptions
from authz.audit.writer import AuditLog
from authz.check.decisions import DecisionCache
from authz.check.pipeline import Pipeline
from authz.dev.tokens import DemoIssuer
from authz.server.front import ThreadedAuthorizationService
from authz.stores.embedded import EmbeddedGrantStore, Generation
from tests.audit_helpers import records
from tests.conftest import PURPOSE, Clock, PipelineFactory, grant
from tests.test_ext_authz import CallContext, bearer_request, loop_in_a_thread, ok_headers


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "decisions.jsonl", 1000, TrailOptions(fsync_interval=0))
    log.open()
    yield log
    asyncio.run(log.close())


def cached_pipeline(
    make_pipeline: PipelineFactory, clock: Clock, trail: AuditLog, key: SigningKey
) -> Pipeline:
    generation = Generation()
    store = EmbeddedGrantStore(clock, generation)
    asyncio.run(store.put(grant(now=clock.now)))
    pipeline = make_pipeline(store=store, audit=trail)
    pipeline.decisions = DecisionCache(lambda: generation.value)
    pipeline.receipts = ReceiptSigner(key, 60, clock)
    return pipeline


def test_a_repeated_decision_is_answered_without_the_event_loop(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock, trail: AuditLog
) -> None:
    key = SigningKey.generate()
    pipeline = cached_pipeline(make_pipeline, clock, trail, key)
    request = bearer_request(issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE))
    raw = request.SerializeToString()
    with loop_in_a_thread() as loop:  # the first check is decided on the loop
        first = ThreadedAuthorizationService(pipeline, loop).Check(raw, CallContext())
    # the loop is closed now: a check that needed it would be a 503 internal_error
    second = ThreadedAuthorizationService(pipeline, loop).Check(raw, CallContext())
    answers = [pb.CheckResponse.FromString(a) for a in (first, second)]
    assert [a.status.code for a in answers] == [code_pb2.OK, code_pb2.OK]
    ids = [ok_headers(a)["x-lasthop-decision-id"] for a in answers]
    assert ids[0] != ids[1]
    for answer, decision_id in zip(answers, ids, strict=True):
        claims = verify(
            ok_headers(answer)["x-lasthop-receipt"], {key.kid: key.private.public_key()}
        )
        assert claims["jti"] == decision_id


def test_the_answer_waits_for_the_fsync_of_its_record(
    make_pipeline: PipelineFactory,
    issuer: DemoIssuer,
    clock: Clock,
    trail: AuditLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipeline = cached_pipeline(make_pipeline, clock, trail, SigningKey.generate())
    synced: list[int] = []  # the trail's size at each fsync
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fsync", fsync)
    raw = bearer_request(issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE))
    with loop_in_a_thread() as loop:
        service = ThreadedAuthorizationService(pipeline, loop)
        for _ in range(3):  # a miss, then repeats answered in this thread
            answer = pb.CheckResponse.FromString(
                service.Check(raw.SerializeToString(), CallContext())
            )
            decision_id = ok_headers(answer)["x-lasthop-decision-id"]
            data = trail.path.read_bytes()
            end = data.index(f'"decision_id":"{decision_id}"'.encode())
            end = data.index(b"\n", end) + 1
            assert synced and max(synced) >= end  # on disk before Envoy heard of it
    seen = [r.get("decision_id") for r in records(trail.path)]
    assert len(seen) == 4 and seen[-1] == decision_id  # trail_opened, then the three checks
