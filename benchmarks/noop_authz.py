"""The Python floors: ext_authz servers that allow everything and do nothing else.

Lasthop is measured against them, through the same Envoy, in the same run.

  grpc.aio (the floor the targets are ratios to): a `grpc.aio` servicer, protobuf
      in and out, as a Python ext_authz is usually written.
  --threads N (the honest floor): grpcio's threaded server with N handler
      threads, taking the request as bytes and answering pre-serialised bytes:
      the fastest no-op we have found with grpcio. `so_reuseport`,
      `maximum_concurrent_rpcs` and `optimization_target` changed nothing.

    python benchmarks/noop_authz.py --port 50051 [--threads N] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent import futures

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from google.rpc import code_pb2, status_pb2

OK = pb.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=pb.OkHttpResponse())
OK_BYTES: bytes = OK.SerializeToString()
SERVICE = "envoy.service.auth.v3.Authorization"


class Allow(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(
        self,
        request: pb.CheckRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.CheckResponse:
        return OK


async def serve_aio(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_AuthorizationServicer_to_server(Allow(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"noop ready {bound}", flush=True)
    await server.wait_for_termination()


def allow_bytes(request: bytes, context: grpc.ServicerContext) -> bytes:
    return OK_BYTES


def serve_threads(port: int, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    check = grpc.unary_unary_rpc_method_handler(allow_bytes)  # bytes in, bytes out
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Check": check})
    server.add_generic_rpc_handlers([handler])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"noop ready {bound}", flush=True)
    server.wait_for_termination()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="0: grpc.aio; N: threaded server")
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    if args.threads:
        serve_threads(args.port, args.threads)
        return
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(serve_aio(args.port))


if __name__ == "__main__":
    main()
