"""The Python floor: a grpc.aio ext_authz server that allows everything and does nothing else.

Lasthop's fast path is measured against this, through the same Envoy, in
the same run. It is what any Python ext_authz costs before it decides
anything.

    python benchmarks/noop_authz.py --port 50051 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from google.rpc import code_pb2, status_pb2

OK = pb.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=pb.OkHttpResponse())


class Allow(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(
        self,
        request: pb.CheckRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.CheckResponse:
        return OK


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_AuthorizationServicer_to_server(Allow(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"noop ready {bound}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
