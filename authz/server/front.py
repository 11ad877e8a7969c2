"""The ext_authz front: the gRPC server Envoy's Check calls arrive on.

Two fronts, chosen by `server.threads` (benchmarks/run.py measures both, and
`lasthop serve --workers N`, on the same machine in the same run):

  threads > 0 (the default, 32)  grpcio's threaded server. A check whose decision
      is cached (`pipeline.check_now`) is answered in the handler's thread, its
      record's fsync waited for there; any other check is decided on the event
      loop (`pipeline.check`) while the handler waits. The C core does the
      HTTP/2 work without the GIL, and a cached check never wakes the loop.
  threads = 0  grpc.aio: every check on the event loop.

Either way Check takes the request's raw bytes and answers the serialised
CheckResponse (`ext_authz.to_response`), and never a gRPC error. gRPC does not
decode the request: a CheckRequest protobuf refuses (invalid UTF-8 in a string
field) would otherwise be a gRPC error with no audit record, and a gRPC error
is what Envoy's `failure_mode_allow` lets through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from authz.check.pipeline import Pipeline
from authz.errors import MalformedRequest
from authz.model import CheckInput, Decision
from authz.server import ext_authz

log = logging.getLogger(__name__)

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
Options = list[tuple[str, int]]


class AuthorizationService:
    """Check on grpc.aio: every check on the event loop."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def Check(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            check = _read(raw, context)
            if isinstance(check, MalformedRequest):
                refused = await self._pipeline.refuse(ext_authz.UNREADABLE, check)
                return ext_authz.to_response(refused, ext_authz.UNREADABLE)
            return self._answer(await self._pipeline.check(check), check)
        except Exception:  # noqa: BLE001 - whatever broke, Envoy gets a deny, never a gRPC error
            return _failed()

    def _answer(self, decision: Decision, check: CheckInput) -> bytes:
        return ext_authz.to_response(decision, check, self._pipeline.options.method_overrides)


class ThreadedAuthorizationService(AuthorizationService):
    """Check on the threaded server: a cached decision in this thread, any other on the loop."""

    def __init__(self, pipeline: Pipeline, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(pipeline)
        self._loop = loop

    def Check(self, raw: bytes, context: grpc.ServicerContext) -> bytes:  # type: ignore[override]
        try:
            check = _read(raw, context)
            if isinstance(check, MalformedRequest):
                err = check
                refused = self._on_loop(lambda: self._pipeline.refuse(ext_authz.UNREADABLE, err))
                return ext_authz.to_response(refused, ext_authz.UNREADABLE)
            decision = self._pipeline.check_now(check)
            if decision is None:
                request = check
                decision = self._on_loop(lambda: self._pipeline.check(request))
            return self._answer(decision, check)
        except Exception:  # noqa: BLE001 - whatever broke, Envoy gets a deny, never a gRPC error
            return _failed()

    def _on_loop(self, call: Callable[[], Awaitable[Decision]]) -> Decision:
        async def run() -> Decision:
            return await call()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()


def _read(raw: bytes, context: Any) -> CheckInput | MalformedRequest:
    """The request, or why it cannot be read."""
    try:
        return ext_authz.to_input(ext_authz.decode(raw), _traceparent(context))
    except MalformedRequest as err:
        return err


def _traceparent(context: Any) -> str:
    """The `traceparent` Envoy put on the gRPC call (its ext_authz span), if any."""
    metadata = context.invocation_metadata() if context is not None else None
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            return value
    return ""


def _failed() -> bytes:
    log.exception("Check failed outside the pipeline", extra={"event": "check.adapter_failed"})
    return ext_authz.internal_error_response()


class ThreadedServer:
    """grpcio's threaded server with the grpc.aio server's interface (`serve` drives both)."""

    def __init__(self, threads: int, options: Options) -> None:
        pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lasthop-check")
        self.server = grpc.server(pool, options=options)

    def add_insecure_port(self, address: str) -> int:
        port: int = self.server.add_insecure_port(address)
        return port

    def add_secure_port(self, address: str, creds: grpc.ServerCredentials) -> int:
        port: int = self.server.add_secure_port(address, creds)
        return port

    async def start(self) -> None:
        self.server.start()

    async def stop(self, grace: float | None) -> None:
        await asyncio.to_thread(self.server.stop(grace).wait)


class ThreadedHealth:
    """grpc.health.v1 for the threaded server, with the grpc.aio servicer's interface."""

    def __init__(self) -> None:
        self.servicer = health.HealthServicer()

    async def set(self, service: str, status: Any) -> None:
        self.servicer.set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        self.servicer.enter_graceful_shutdown()


class Front:
    """The ext_authz server and its health servicer (and a health-only server, when asked)."""

    def __init__(self, pipeline: Pipeline, threads: int, options: Options) -> None:
        self.threads, self.options = threads, options
        grpc_server: Any
        if threads:
            self.server: Any = ThreadedServer(threads, options)
            self.health: Any = ThreadedHealth()
            service: Any = ThreadedAuthorizationService(pipeline, asyncio.get_running_loop())
            grpc_server, servicer = self.server.server, self.health.servicer
        else:
            self.server, self.health = grpc.aio.server(options=options), health.aio.HealthServicer()
            service = AuthorizationService(pipeline)
            grpc_server, servicer = self.server, self.health
        check = grpc.unary_unary_rpc_method_handler(service.Check)  # raw bytes in and out
        grpc_server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(AUTHZ_SERVICE, {"Check": check})]
        )
        health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)

    def health_only(self) -> Any:
        """A server that serves this front's health alone (`server.health_listen`)."""
        if self.threads:
            only = ThreadedServer(1, self.options)
            health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, only.server)
            return only
        only_aio = grpc.aio.server(options=self.options)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, only_aio)
        return only_aio
