"""A small synchronous client of the admin API, used by the CLI and the demo."""

from __future__ import annotations

import grpc

from authz._proto import grants_pb2 as pb
from authz._proto import grants_pb2_grpc as pb_grpc

TIMEOUT_SECONDS = 5.0


class AdminError(Exception):
    """The admin API refused a call; the message says why."""


class AdminClient:
    def __init__(self, address: str, token: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._grants = pb_grpc.GrantsStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: object) -> object:
        try:
            return method(request, metadata=self._metadata, timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as err:
            code = err.code().name.lower() if err.code() else "error"
            raise AdminError(f"{code}: {err.details()}") from None

    def issue(self, request: pb.IssueGrantRequest) -> pb.Grant:
        result = self._call(self._grants.IssueGrant, request)
        assert isinstance(result, pb.Grant)
        return result

    def revoke(self, grant_id: str) -> pb.Grant:
        result = self._call(self._grants.RevokeGrant, pb.RevokeGrantRequest(id=grant_id))
        assert isinstance(result, pb.Grant)
        return result

    def get(self, grant_id: str) -> pb.Grant:
        result = self._call(self._grants.GetGrant, pb.GetGrantRequest(id=grant_id))
        assert isinstance(result, pb.Grant)
        return result

    def list(self, agent: str = "", user: str = "") -> list[pb.Grant]:
        result = self._call(self._grants.ListGrants, pb.ListGrantsRequest(agent=agent, user=user))
        assert isinstance(result, pb.ListGrantsResponse)
        return list(result.grants)

    def close(self) -> None:
        self._channel.close()
