"""An OTLP/gRPC trace collector in this process, for the tracing test and benchmark.

It keeps every span it is sent, with its resource's `service.name`; nothing is
forwarded. Needs the `otel` extra (opentelemetry-proto comes with the exporter).
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc


class Collector(otlp_grpc.TraceServiceServicer):
    """Listens on a free loopback port (`port`) until `close()`."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []  # (service.name, span)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        otlp_grpc.add_TraceServiceServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(self, request: otlp.ExportTraceServiceRequest, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append((attrs.get("service.name", ""), span))
        return otlp.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Any]:
        return [span for _, span in self.spans if span.name == name]

    def close(self) -> None:
        self.server.stop(0)
