"""OpenTelemetry: one span per check, its phases as events on it (`tracing.enabled`).

Off by default, and then nothing here is imported: the pipeline's observer is
the metrics alone. On, `TracingObserver` sits in front of the metrics (the
pipeline's `CheckObserver` seam) and, per check:

- continues the W3C trace context the check arrived with (`CheckInput.traceparent`:
  Envoy's ext_authz span, else the request's own `traceparent`), or starts a trace;
- names the span `lasthop.check`, kind SERVER, and adds an event per phase, named
  for the phase and stamped when it ended (the gaps between them are the phases'
  durations; `lasthop_phase_duration_seconds` has them as histograms). Events, not
  child spans: a span per phase cost about four times as much
  (benchmarks/tracing_overhead.py);
- records the decision, reason, status, decision id, policies, policy version,
  route template, current agent and Envoy's request id as attributes. Never a
  token, a header value, the user or the concrete path (it may name a patient);
- marks the span an error only when Lasthop could not decide (503).

Per-check state lives in a context variable: each check runs in its own task.
Spans go to an OTLP/gRPC collector (`tracing.endpoint`) through a batching
processor, off the request path; tests pass an in-memory exporter instead.
"""

from __future__ import annotations

import contextvars

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from authz import version
from authz.check.pipeline import CheckObserver
from authz.config import TracingSettings
from authz.errors import ConfigError
from authz.model import CheckInput, Decision

SPAN_NAME = "lasthop.check"
_PROPAGATOR = TraceContextTextMapPropagator()


_current: contextvars.ContextVar[trace.Span | None] = contextvars.ContextVar(
    "lasthop_check_span", default=None
)


def provider(settings: TracingSettings, exporter: SpanExporter | None = None) -> TracerProvider:
    """A tracer provider of its own (the global one is left alone): parent-based sampling,
    `sample_ratio` for traces that start here, batched export to OTLP or `exporter`."""
    resource = Resource.create({SERVICE_NAME: settings.service_name, SERVICE_VERSION: version()})
    sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    if exporter is None:
        exporter = _otlp_exporter(settings)
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    return tracer_provider


def _otlp_exporter(settings: TracingSettings) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as err:
        # xds-protos ships an older copy of opentelemetry-proto's modules in the same files;
        # when it was installed last, the exporter cannot load its messages.
        raise ConfigError(
            "tracing.enabled",
            f"the OTLP exporter cannot load ({err}); xds-protos, which Lasthop needs for "
            "Envoy's protos, overwrote opentelemetry-proto's modules with an older copy: "
            "reinstall it over them with `pip install --force-reinstall --no-deps "
            "opentelemetry-proto`",
        ) from err
    return OTLPSpanExporter(endpoint=settings.endpoint or None)


class TracingObserver:
    """The pipeline's observer when tracing is on: reports to `inner`, and traces."""

    def __init__(self, inner: CheckObserver, tracer: trace.Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    def started(self, req: CheckInput) -> str:
        self._inner.started(req)
        parent = _PROPAGATOR.extract({"traceparent": req.traceparent}) if req.traceparent else None
        span = self._tracer.start_span(SPAN_NAME, context=parent, kind=SpanKind.SERVER)
        if req.request_id:
            span.set_attribute("lasthop.request_id", req.request_id)
        span.set_attribute("http.request.method", req.method)
        _current.set(span)
        ctx = span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else ""

    def phase(self, name: str, seconds: float) -> None:
        self._inner.phase(name, seconds)
        span = _current.get()
        if span is not None and span.is_recording():
            span.add_event(name)

    def decided(self, decision: Decision, seconds: float, cached: bool) -> None:
        self._inner.decided(decision, seconds, cached)
        span = _current.get()
        if span is None or not span.is_recording():
            return
        span.set_attributes(_attributes(decision, cached))
        if decision.status == 503:
            span.set_status(Status(StatusCode.ERROR, str(decision.reason)))

    def ended(self) -> None:
        try:
            span = _current.get()
            if span is not None:
                span.end()
                _current.set(None)
        finally:
            self._inner.ended()


def _attributes(decision: Decision, cached: bool) -> dict[str, str | int | bool | list[str]]:
    attributes: dict[str, str | int | bool | list[str]] = {
        "lasthop.decision": "allow" if decision.allowed else "deny",
        "lasthop.reason": str(decision.reason),
        "lasthop.status": decision.status,
        "lasthop.decision_id": decision.decision_id,
        "lasthop.policy_version": decision.policy_version,
        "lasthop.policies": list(decision.policies),
        "lasthop.cached": cached,
    }
    if decision.route is not None:
        attributes["lasthop.route"] = decision.route.template
        attributes["lasthop.action"] = decision.route.action
    if decision.chain is not None and decision.chain.agents:
        attributes["lasthop.agent"] = decision.chain.actor
        attributes["lasthop.chain_depth"] = decision.chain.depth
    return attributes
