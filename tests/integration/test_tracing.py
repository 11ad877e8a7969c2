"""One request followed through a real Envoy: one trace id in the traceparent Envoy sends
upstream, in Lasthop's span (exported over OTLP to a collector this test runs), in its log
line and in its audit record; and one x-request-id in all of them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.dev import stack as devstack
from authz.dev.otlp import Collector
from tests.integration.conftest import (
    PURPOSE,
    RECORDS,
    read_audit,
    request,
    running_stack,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration


def envoy_with_tracing(work: Path, collector_port: int) -> Path:
    """The shipped sidecar, plus Envoy's OpenTelemetry tracer sampling every request."""
    text = devstack.ENVOY_TEMPLATE.read_text()
    tracing = """          stat_prefix: ingress
          tracing:
            random_sampling: { value: 100 }
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: envoy-sidecar
                grpc_service:
                  envoy_grpc: { cluster_name: otel }
"""
    text = text.replace("          stat_prefix: ingress\n", tracing, 1)
    text += f"""  - name: otel
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: otel
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {collector_port} }}
"""
    path = work / "sidecar-tracing.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector()
    try:
        yield server
    finally:
        server.close()


def test_one_trace_id_from_envoy_through_lasthop_to_its_log_and_audit_record(
    collector: Collector, tmp_path: Path
) -> None:
    tracing = f'\n[tracing]\nenabled = true\nendpoint = "{collector.endpoint}"\n'
    env = {
        "LASTHOP_SERVER_LOG_FORMAT": "json",
        "LASTHOP_SERVER_LOG_LEVEL": "debug",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s, not the SDK's 5 s
    }
    with running_stack("lasthop-trace-", use_redis=False, audit=tracing, env=env) as stack:
        assert stack.lasthop.ready["tracing"].startswith("otlp http://127.0.0.1:")
        template = envoy_with_tracing(stack.work, collector.port)
        envoy = devstack.Envoy(stack.work, stack.lasthop.port, stack.upstream.port, template)
        try:
            user = unique("u-trace")
            stack.grant(user)
            resp = request(envoy.url, RECORDS, stack.token(user, ["scribe"], purpose=PURPOSE))
        finally:
            envoy.close()
        assert resp.status == 200, resp.raw[:300]
        upstream_saw = resp.body["trace"]
        traceparent, request_id = upstream_saw["traceparent"], upstream_saw["x-request-id"]
        trace_id = traceparent.split("-")[1]
        assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and request_id

        # Lasthop's span, in Envoy's trace, child of Envoy's ext_authz span
        assert wait_until(lambda: collector.named("lasthop.check"), timeout=10)
        span = collector.named("lasthop.check")[-1]
        assert span.trace_id.hex() == trace_id
        assert span.parent_span_id, "the check continued Envoy's span"
        attributes = {a.key: a.value for a in span.attributes}
        assert attributes["lasthop.request_id"].string_value == request_id
        assert attributes["lasthop.decision"].string_value == "allow"
        assert {event.name for event in span.events} >= {"identity", "cedar", "audit"}

        # its log line
        lines = [json.loads(line) for line in stack.lasthop.logs().splitlines() if line]
        decided = [line for line in lines if line["event"] == "check.decided"]
        assert [(d["trace_id"], d["request_id"]) for d in decided][-1] == (trace_id, request_id)
        assert lines[0]["event"] == "server.store"  # the first line names the store

        # its audit record
        assert wait_until(
            lambda: any(r.get("user") == user for r in read_audit(stack.audit_path)), 5
        )
        record = [r for r in read_audit(stack.audit_path) if r.get("user") == user][-1]
        assert (record["trace_id"], record["request_id"]) == (trace_id, request_id)
        assert record["decision"] == "allow"
