"""The admin gRPC API for access requests (`lasthop.v1.Access`): gRPC <-> `access.requests`.

Authentication, per call (see proto/lasthop/v1/access.proto):
- an agent calls with its own delegated access token (and any `txn-token`),
  verified by the same identity, chain, registry and intent phases as a check;
- an approver or admin calls with an admin token (`admin.audience`, scope
  `lasthop:approver` or `lasthop:admin`); a `roles` claim (a list, or a
  space-separated string) gives the roles approval policies may name;
- an access token where an approver's is needed is told so, PERMISSION_DENIED:
  an agent never approves its own request.

Every refusal maps to one gRPC status in `_refused`; nothing is written on any.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

from authz._proto import access_pb2 as pb
from authz._proto import access_pb2_grpc as pb_grpc
from authz.access.asks import Ask
from authz.access.people import Approver, Viewer
from authz.access.requests import AccessRequests
from authz.check.pipeline import Caller, Pipeline
from authz.errors import (
    AccessRequestError,
    LasthopError,
    TokenError,
    Unauthenticated,
    Unavailable,
)
from authz.model import REQUEST_STATUSES, AccessRequest, CheckInput
from authz.reasons import Reason
from authz.server.admin_grants import GRANT_SCOPES, AdminAuth

log = logging.getLogger(__name__)

T = TypeVar("T")
ADMIN_SCOPE = "lasthop:admin"
_CODES = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
}
_FIELDS = tuple(f.name for f in pb.AccessRequest.DESCRIPTOR.fields)


def request_message(request: AccessRequest) -> pb.AccessRequest:
    return pb.AccessRequest(**{name: getattr(request, name) for name in _FIELDS})


class AccessService(pb_grpc.AccessServicer):
    def __init__(self, *, auth: AdminAuth, pipeline: Pipeline, requests: AccessRequests) -> None:
        self._auth = auth
        self._pipeline = pipeline
        self._requests = requests

    async def RequestAccess(
        self, request: pb.RequestAccessRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessRequest:
        caller = await self._agent(context)
        ask = Ask(
            action=request.action,
            resource=request.resource,
            purpose=request.purpose,
            ttl_seconds=request.ttl_seconds,
            max_uses=request.max_uses,
            txn=request.txn,
            reason=request.reason,
            break_glass=request.break_glass,
        )
        return request_message(await _call(context, self._requests.request(caller, ask)))

    async def GetRequest(
        self, request: pb.GetRequestRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessRequest:
        viewer = await self._viewer(context)
        if request.wait_seconds > 0:
            found = self._requests.wait(request.id, viewer, request.wait_seconds)
        else:
            found = self._requests.get(request.id, viewer)
        return request_message(await _call(context, found))

    async def ListRequests(
        self, request: pb.ListRequestsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRequestsResponse:
        approver = await self._approver(context)
        if request.status not in ("", *REQUEST_STATUSES):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"status `{request.status}` is not one of {list(REQUEST_STATUSES)}",
            )
        found = await _call(context, self._requests.list(approver, request.status, request.user))
        return pb.ListRequestsResponse(requests=[request_message(r) for r in found])

    async def ApproveRequest(
        self, request: pb.ApproveRequestRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessRequest:
        approver = await self._approver(context)
        approved = self._requests.approve(request.id, approver, request.ttl_seconds)
        return request_message(await _call(context, approved))

    async def DenyRequest(
        self, request: pb.DenyRequestRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessRequest:
        approver = await self._approver(context)
        denied = self._requests.deny(request.id, approver, request.reason)
        return request_message(await _call(context, denied))

    async def EndTask(
        self, request: pb.EndTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.EndTaskResponse:
        who = await self._viewer(context)
        ended = await _call(context, self._requests.end_task(request.txn, who))
        return pb.EndTaskResponse(
            txn=ended.txn, revoked_grants=ended.grants, cancelled_requests=ended.requests
        )

    # --- who is calling -------------------------------------------------------------------

    async def _agent(self, context: grpc.aio.ServicerContext) -> Caller:
        """The agent (or user) whose access token the call carries, as a check sees it."""
        req = CheckInput(method="", path="", host="", headers=_headers(context))
        try:
            return await self._pipeline.identify(req)
        except LasthopError as err:
            code = (
                grpc.StatusCode.UNAUTHENTICATED
                if isinstance(err, Unauthenticated)
                else grpc.StatusCode.UNAVAILABLE
                if isinstance(err, Unavailable)
                else grpc.StatusCode.PERMISSION_DENIED
            )
            await context.abort(code, f"access token refused: {err.reason}: {err.detail}")
            raise

    async def _approver(self, context: grpc.aio.ServicerContext) -> Approver:
        """An approver or admin; an agent's token here is refused, saying so."""
        try:
            await self._auth.token_claims(context)
        except TokenError as err:
            if err.reason == Reason.INVALID_AUDIENCE and await self._is_access_token(context):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "this is an agent's access token: access requests are approved, denied and "
                    "listed with an approver's or admin's token (LASTHOP_ADMIN_TOKEN), never "
                    "by the agent that asked",
                )
        claims = await self._auth.claims(context, GRANT_SCOPES)
        return _approver_of(claims)

    async def _viewer(self, context: grpc.aio.ServicerContext) -> Viewer:
        """An approver or admin by an admin token, else the agent by its access token."""
        try:
            await self._auth.token_claims(context)
        except TokenError as err:
            if err.reason == Reason.INVALID_AUDIENCE:
                return await self._agent(context)
        return _approver_of(await self._auth.claims(context, GRANT_SCOPES))

    async def _is_access_token(self, context: grpc.aio.ServicerContext) -> bool:
        try:
            await self._pipeline.identify(CheckInput("", "", "", _headers(context)))
        except LasthopError:
            return False
        return True


def _headers(context: grpc.aio.ServicerContext) -> dict[str, list[str]]:
    """The call's `authorization` and `txn-token` metadata, every value as sent."""
    headers: dict[str, list[str]] = {}
    for key, value in context.invocation_metadata() or ():
        if key in ("authorization", "txn-token"):
            headers.setdefault(key, []).append(str(value))
    return headers


def _approver_of(claims: dict[str, Any]) -> Approver:
    scope = claims.get("scope", "")
    scopes = set(scope.split()) if isinstance(scope, str) else set()
    roles = claims.get("roles", [])
    if isinstance(roles, str):
        roles = roles.split()
    named = frozenset(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else None
    return Approver(sub=str(claims["sub"]), admin=ADMIN_SCOPE in scopes, roles=named or frozenset())


async def _call(context: grpc.aio.ServicerContext, awaitable: Awaitable[T]) -> T:
    """Await a domain call; each refusal becomes its gRPC status, with its message."""
    try:
        return await awaitable
    except AccessRequestError as err:
        await context.abort(_CODES[err.code], err.detail)
        raise
    except LasthopError as err:  # the store, the trail or the approval policies
        log.warning(
            "access request call failed: %s: %s",
            err.reason,
            err.detail,
            extra={"event": "access.call_failed"},
        )
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{err.reason}: {err.detail}")
        raise
