"""The admin gRPC API (`lasthop.v1.Grants`) and its caller authentication.

Auth rule: `authorization: Bearer <jwt>` metadata; the JWT verifies against the
configured issuer's keys with audience `admin.audience`, is not a delegated
(`act`) token, and its `scope` holds `lasthop:admin` or `lasthop:approver`.
No or bad token: UNAUTHENTICATED. Valid token, wrong scope: PERMISSION_DENIED.

Who for whom (`authz.access.authority`): an admin issues, reads and revokes
any grant; an approver only grants for itself (`user` = its `sub`), else
PERMISSION_DENIED. A grant for a suspended agent: FAILED_PRECONDITION.

Audit rule: every issue and revoke goes into the audit trail as an event
(`grant_issued`, `grant_revoked`) naming the caller. A grant whose issue
cannot be recorded is withdrawn and the call fails UNAVAILABLE; a revocation
always stands (it only takes access away), and a failure to record it is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from authz._proto import grants_pb2 as pb
from authz._proto import grants_pb2_grpc as pb_grpc
from authz.access.authority import Caller, check_acts_for, user_filter
from authz.access.issue import GrantRequest, new_grant
from authz.audit.records import AuditSink, EventRecord, grant_detail
from authz.check import identity
from authz.check.keys import KeySource
from authz.codec import rfc3339
from authz.errors import (
    AgentNotActive,
    GrantRequestError,
    NotPermitted,
    StoreUnavailable,
    TokenError,
)
from authz.model import Grant
from authz.stores.protocols import AgentRegistry, GrantStore

log = logging.getLogger(__name__)

GRANT_SCOPES = frozenset({"lasthop:admin", "lasthop:approver"})


class AdminAuth:
    def __init__(
        self, keys: KeySource, rules: identity.IdentityRules, clock: Callable[[], float]
    ) -> None:
        self._keys = keys
        self._rules = rules
        self._clock = clock

    async def caller(self, context: grpc.aio.ServicerContext, allowed: frozenset[str]) -> str:
        """The `sub` of an authorised caller; aborts the RPC otherwise."""
        return (await self.principal(context, allowed)).sub

    async def principal(self, context: grpc.aio.ServicerContext, allowed: frozenset[str]) -> Caller:
        """The authorised caller, with its scopes; aborts the RPC otherwise."""
        claims = await self.claims(context, allowed)
        return Caller(sub=str(claims["sub"]), scopes=frozenset(_scopes(claims)))

    async def token_claims(self, context: grpc.aio.ServicerContext) -> dict[str, Any]:
        """The claims of the call's bearer token, verified as an admin token; raises TokenError."""
        values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        token = identity.bearer_token([str(v) for v in values])
        return await identity.verified(
            self._keys, lambda: identity.verify(token, self._keys, self._rules, self._clock())
        )

    async def claims(
        self, context: grpc.aio.ServicerContext, allowed: frozenset[str]
    ) -> dict[str, Any]:
        """The verified claims of an authorised caller; aborts the RPC otherwise."""
        try:
            claims = await self.token_claims(context)
        except TokenError as err:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"admin token refused: {err.reason}: {err.detail}"
            )
            raise  # abort raises; this keeps type checkers honest
        if "act" in claims:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "a delegated (agent) token cannot call the admin API",
            )
        if not _scopes(claims) & allowed:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"token scope must include one of {sorted(allowed)}",
            )
        return claims


def _scopes(claims: dict[str, Any]) -> set[str]:
    scope = claims.get("scope", "")
    return set(scope.split()) if isinstance(scope, str) else set()


def grant_message(grant: Grant, uses: int) -> pb.Grant:
    return pb.Grant(
        id=grant.id,
        agent=grant.agent,
        user=grant.user,
        actions=list(grant.actions),
        resources=list(grant.resources),
        purpose=grant.purpose,
        issued_by=grant.issued_by,
        issued_at=grant.issued_at,
        expires_at=grant.expires_at,
        max_uses=grant.max_uses,
        uses=uses,
        txn=grant.txn,
        request_id=grant.request_id,
        break_glass=grant.break_glass,
    )


class GrantsService(pb_grpc.GrantsServicer):
    def __init__(
        self,
        *,
        auth: AdminAuth,
        store: GrantStore,
        registry: AgentRegistry,
        actions: Callable[[], frozenset[str]],
        max_ttl: int,
        clock: Callable[[], float],
        audit: AuditSink,
    ) -> None:
        self._auth = auth
        self._store = store
        self._registry = registry
        self._actions = actions
        self._max_ttl = max_ttl
        self._clock = clock
        self._audit = audit

    async def IssueGrant(
        self,
        request: pb.IssueGrantRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.Grant:
        caller = await self._auth.principal(context, GRANT_SCOPES)
        req = GrantRequest(
            agent=request.agent,
            user=request.user,
            actions=tuple(request.actions),
            resources=tuple(request.resources),
            purpose=request.purpose,
            ttl_seconds=request.ttl_seconds,
            max_uses=request.max_uses,
        )
        try:
            check_acts_for(caller, req.user)
            agent = await self._registry.get(req.agent)
            grant = new_grant(
                req,
                caller.sub,
                int(self._clock()),
                {req.agent: agent} if agent is not None else {},
                self._actions(),
                self._max_ttl,
            )
            await self._store.put(grant)
        except NotPermitted as err:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
            raise
        except AgentNotActive as err:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
            raise
        except GrantRequestError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise
        except StoreUnavailable as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, err.detail)
            raise
        if not await self._record("grant_issued", caller.sub, grant):
            await store_call(context, self._store.revoke(grant.id))
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the audit trail cannot record the grant, so it was not issued",
            )
        log.info(
            "grant %s issued by %s to %s for %s",
            grant.id,
            caller.sub,
            grant.agent,
            grant.user,
            extra={"event": "admin.grant_issued"},
        )
        return grant_message(grant, 0)

    async def RevokeGrant(
        self,
        request: pb.RevokeGrantRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.Grant:
        caller = await self._auth.principal(context, GRANT_SCOPES)
        await self._existing(context, caller, request.id, revoked=True)
        revocation = await store_call(context, self._store.revoke(request.id))
        if revocation is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no grant `{request.id}`")
        grant = revocation.grant
        if revocation.already:
            log.info(
                "grant %s: already revoked (a retry by %s)",
                request.id,
                caller.sub,
                extra={"event": "admin.grant_already_revoked"},
            )
        elif not await self._record("grant_revoked", caller.sub, grant):
            log.error(
                "grant %s revoked by %s, but the audit trail could not record it",
                request.id,
                caller.sub,
                extra={"event": "admin.grant_revoke_unrecorded"},
            )
        else:
            log.info(
                "grant %s revoked by %s",
                request.id,
                caller.sub,
                extra={"event": "admin.grant_revoked"},
            )
        message = grant_message(grant, 0)
        message.already_revoked = revocation.already
        return message

    async def _existing(
        self,
        context: grpc.aio.ServicerContext,
        caller: Caller,
        grant_id: str,
        revoked: bool = False,
    ) -> Grant:
        """The grant, if it exists (or, with `revoked`, was revoked and its tombstone lasts)
        and the caller acts for its user; aborts the RPC otherwise."""
        grant = await store_call(context, self._store.get(grant_id))
        if grant is None and revoked:
            grant = await store_call(context, self._store.revoked(grant_id))
        if grant is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no grant `{grant_id}`")
        await permitted(context, check_acts_for, caller, grant.user)
        assert isinstance(grant, Grant)
        return grant

    async def _record(self, event: str, caller: str, grant: Grant) -> bool:
        record = EventRecord(
            event=event,
            actor=caller,
            target=grant.id,
            time=rfc3339(self._clock()),
            detail=grant_detail(grant),
        )
        return (await self._audit.commit(record)).ok

    async def GetGrant(
        self,
        request: pb.GetGrantRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.Grant:
        caller = await self._auth.principal(context, GRANT_SCOPES)
        grant = await self._existing(context, caller, request.id)
        return grant_message(grant, await store_call(context, self._store.uses(grant.id)))

    async def ListGrants(
        self,
        request: pb.ListGrantsRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.ListGrantsResponse:
        caller = await self._auth.principal(context, GRANT_SCOPES)
        user = await permitted(context, user_filter, caller, request.user)
        found = await store_call(context, self._store.list(request.agent, user))
        now = self._clock()
        messages = [
            grant_message(g, await store_call(context, self._store.uses(g.id)))
            for g in sorted(found, key=lambda g: g.expires_at)
            if g.expires_at > now
        ]
        return pb.ListGrantsResponse(grants=messages)


async def permitted(context: grpc.aio.ServicerContext, rule: Callable[..., Any], *args: Any) -> Any:
    """`rule(*args)`; a NotPermitted aborts the RPC PERMISSION_DENIED."""
    try:
        return rule(*args)
    except NotPermitted as err:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
        raise


async def store_call(context: grpc.aio.ServicerContext, awaitable: Any) -> Any:
    """Await a store operation; a store that cannot answer aborts the RPC UNAVAILABLE."""
    try:
        return await awaitable
    except StoreUnavailable as err:
        await context.abort(grpc.StatusCode.UNAVAILABLE, err.detail)
        raise
