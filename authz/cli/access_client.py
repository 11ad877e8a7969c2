"""A small synchronous client of the access-request API (`lasthop.v1.Access`)."""

from __future__ import annotations

import grpc

from authz._proto import access_pb2 as pb
from authz._proto import access_pb2_grpc as pb_grpc
from authz.errors import AdminError

TIMEOUT_SECONDS = 5.0


class AccessClient:
    """Calls with one bearer token: the agent's own, or an approver's or admin's."""

    def __init__(self, address: str, token: str, txn_token: str = "") -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.AccessStub(self._channel)
        metadata = [("authorization", f"Bearer {token}")]
        if txn_token:
            metadata.append(("txn-token", txn_token))
        self._metadata = tuple(metadata)

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable, request: object, wait: float = 0
    ) -> object:
        try:
            return method(request, metadata=self._metadata, timeout=TIMEOUT_SECONDS + wait)
        except grpc.RpcError as err:
            code = err.code().name.lower() if err.code() else "error"
            raise AdminError(code, str(err.details())) from None

    def _one(
        self, method: grpc.UnaryUnaryMultiCallable, request: object, wait: float = 0
    ) -> pb.AccessRequest:
        result = self._call(method, request, wait)
        assert isinstance(result, pb.AccessRequest)
        return result

    def request(self, request: pb.RequestAccessRequest) -> pb.AccessRequest:
        return self._one(self._stub.RequestAccess, request)

    def get(self, request_id: str, wait: float = 0) -> pb.AccessRequest:
        return self._one(
            self._stub.GetRequest, pb.GetRequestRequest(id=request_id, wait_seconds=wait), wait
        )

    def list(self, status: str = "", user: str = "") -> list[pb.AccessRequest]:
        result = self._call(
            self._stub.ListRequests, pb.ListRequestsRequest(status=status, user=user)
        )
        assert isinstance(result, pb.ListRequestsResponse)
        return list(result.requests)

    def approve(self, request_id: str, ttl_seconds: int = 0) -> pb.AccessRequest:
        request = pb.ApproveRequestRequest(id=request_id, ttl_seconds=ttl_seconds)
        return self._one(self._stub.ApproveRequest, request)

    def deny(self, request_id: str, reason: str) -> pb.AccessRequest:
        return self._one(
            self._stub.DenyRequest, pb.DenyRequestRequest(id=request_id, reason=reason)
        )

    def end_task(self, txn: str) -> pb.EndTaskResponse:
        result = self._call(self._stub.EndTask, pb.EndTaskRequest(txn=txn))
        assert isinstance(result, pb.EndTaskResponse)
        return result

    def close(self) -> None:
        self._channel.close()
