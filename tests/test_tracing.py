"""OpenTelemetry: a span per check, its phases as events, the trace id in the audit record.

The SDK's in-memory exporter stands in for a collector; `tests/integration/test_tracing.py`
follows one request through a real Envoy.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from authz import codec
from authz.audit.receipts import Unsigned
from authz.audit.records import AuditRecord, Committed, MemoryAudit, Record
from authz.check.pipeline import Pipeline
from authz.config import TracingSettings
from authz.dev.tokens import DemoIssuer
from authz.model import CheckInput
from authz.server import tracing
from authz.server.metrics import Metrics
from authz.stores.embedded import EmbeddedGrantStore
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced(
    make_pipeline: PipelineFactory, exporter: InMemorySpanExporter, clock: Clock
) -> tuple[Pipeline, MemoryAudit, EmbeddedGrantStore, TracerProvider]:
    provider = tracing.provider(TracingSettings(enabled=True), exporter)
    observer = tracing.TracingObserver(Metrics(CollectorRegistry()), provider.get_tracer("t"))
    audit, store = MemoryAudit(), EmbeddedGrantStore(clock)
    return make_pipeline(store=store, audit=audit, observer=observer), audit, store, provider


def run(pipeline: Pipeline, req: CheckInput) -> None:
    asyncio.run(pipeline.check(req))


def spans(provider: TracerProvider, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    provider.force_flush()
    return list(exporter.get_finished_spans())


def with_trace(req: CheckInput, traceparent: str, request_id: str = "req-7") -> CheckInput:
    return CheckInput(
        method=req.method,
        path=req.path,
        host=req.host,
        headers=req.headers,
        request_id=request_id,
        traceparent=traceparent,
    )


def test_a_check_is_one_span_in_the_callers_trace_with_its_phases(
    make_pipeline: PipelineFactory,
    exporter: InMemorySpanExporter,
    clock: Clock,
    issuer: DemoIssuer,
) -> None:
    pipeline, audit, store, provider = traced(make_pipeline, exporter, clock)
    asyncio.run(store.put(grant(now=clock.now)))
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    run(pipeline, with_trace(check_input(token), PARENT))
    found = spans(provider, exporter)
    check = next(s for s in found if s.name == tracing.SPAN_NAME)
    assert format(check.context.trace_id, "032x") == TRACE_ID
    assert check.parent is not None and format(check.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert [s.name for s in found] == [tracing.SPAN_NAME]  # phases are events, not spans
    phases = [event.name for event in check.events]
    assert phases[:3] == ["identity", "chain", "registry"]
    assert "cedar" in phases and phases[-1] == "audit"
    stamps = [event.timestamp for event in check.events]
    assert check.start_time is not None and check.end_time is not None
    assert check.start_time <= stamps[0] and stamps == sorted(stamps)
    assert stamps[-1] <= check.end_time
    attributes = dict(check.attributes or {})
    assert attributes["lasthop.decision"] == "allow"
    assert attributes["lasthop.reason"] == "allowed"
    assert attributes["lasthop.request_id"] == "req-7"
    assert attributes["lasthop.route"] == "/patients/{patient}/records"
    assert attributes["lasthop.agent"] == "scribe"
    assert "scribe-read-records" in list(attributes["lasthop.policies"])  # type: ignore[arg-type]
    record = audit.records[-1]
    assert isinstance(record, AuditRecord)
    assert (record.trace_id, record.request_id) == (TRACE_ID, "req-7")
    everything = json.dumps([dict(s.attributes or {}) for s in found], default=str)
    assert token not in everything and "dr-alice" not in everything
    assert "p-1001" not in everything  # the route template, never the concrete path


def test_a_check_without_trace_context_starts_a_trace_the_record_names(
    make_pipeline: PipelineFactory,
    exporter: InMemorySpanExporter,
    clock: Clock,
) -> None:
    pipeline, audit, _, provider = traced(make_pipeline, exporter, clock)
    run(pipeline, check_input(None))
    check = next(s for s in spans(provider, exporter) if s.name == tracing.SPAN_NAME)
    assert check.parent is None
    assert dict(check.attributes or {})["lasthop.reason"] == "missing_token"
    record = audit.records[-1]
    assert isinstance(record, AuditRecord)
    assert record.trace_id == format(check.context.trace_id, "032x")


def test_a_503_marks_the_span_an_error(
    make_pipeline: PipelineFactory,
    exporter: InMemorySpanExporter,
    clock: Clock,
    issuer: DemoIssuer,
) -> None:
    class Refusing(MemoryAudit):
        async def commit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
            return Committed(False)

    provider = tracing.provider(TracingSettings(enabled=True), exporter)
    observer = tracing.TracingObserver(Metrics(CollectorRegistry()), provider.get_tracer("t"))
    pipeline = make_pipeline(audit=Refusing(), observer=observer)
    run(pipeline, check_input(issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)))
    check = next(s for s in spans(provider, exporter) if s.name == tracing.SPAN_NAME)
    assert check.status.status_code.name == "ERROR"
    assert dict(check.attributes or {})["lasthop.reason"] == "audit_unavailable"


def test_with_tracing_off_the_record_still_names_envoys_trace(
    make_pipeline: PipelineFactory,
) -> None:
    audit = MemoryAudit()
    run(make_pipeline(audit=audit), with_trace(check_input(None), PARENT, "req-9"))
    record = audit.records[-1]
    assert isinstance(record, AuditRecord)
    assert (record.trace_id, record.request_id) == (TRACE_ID, "req-9")


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        (PARENT, True),
        (PARENT.upper(), True),
        (f"01-{TRACE_ID}-00f067aa0ba902b7-01-future", True),
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra", False),
        (f"ff-{TRACE_ID}-00f067aa0ba902b7-01", False),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", False),
        (f"00-{TRACE_ID}-{'0' * 16}-01", False),
        (f"00-{TRACE_ID[:-1]}-00f067aa0ba902b7-01", False),
        ("", False),
        ("garbage", False),
    ],
)
def test_traceparent_is_taken_only_when_valid(header: str, valid: bool) -> None:
    parsed = codec.traceparent(header)
    assert bool(parsed) is valid
    if valid:
        assert codec.trace_id_of(parsed) == TRACE_ID
