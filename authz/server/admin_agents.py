"""The admin gRPC API for the agent registry (`lasthop.v1.Agents`). Callers need `lasthop:admin`.

Every refusal names the field; nothing is written on a refusal.

Audit rule: every change goes into the trail as an event with the caller's
`sub` (agent_registered, agent_updated, agent_suspended, agent_resumed,
agent_deregistered). A change that widens access (register, update,
resume) is undone if the trail cannot record it; one that narrows access
(suspend, deregister) stands, and the failure is logged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import grpc

from authz._proto import agents_pb2 as pb
from authz._proto import agents_pb2_grpc as pb_grpc
from authz.audit.records import AuditSink, EventRecord
from authz.codec import rfc3339
from authz.errors import AgentRequestError
from authz.model import AGENT_STATUSES, STORED_STATUSES, Agent, RiskTiers
from authz.server.admin_grants import AdminAuth, store_call
from authz.stores.protocols import AgentStore, GrantStore

log = logging.getLogger(__name__)

ADMIN_SCOPES = frozenset({"lasthop:admin"})
SWAP_ATTEMPTS = 50


def agent_message(agent: Agent, tiers: RiskTiers) -> pb.Agent:
    return pb.Agent(
        id=agent.id,
        owner=agent.owner,
        description=agent.description,
        risk=agent.risk,
        risk_tier=tiers.of(agent.risk),
        allowed_purposes=list(agent.allowed_purposes),
        status=agent.status,
        created_at=agent.created_at,
        registered_by=agent.registered_by,
        spiffe_id=agent.spiffe_id,
        hours=agent.hours,
    )


def check_fields(agent: Agent) -> Agent:
    """The fields a caller sets; the status is the verbs' to set (deregistration included)."""
    try:
        return agent.check(STORED_STATUSES)
    except ValueError as err:
        raise AgentRequestError(str(err)) from None


class AgentsService(pb_grpc.AgentsServicer):
    def __init__(
        self,
        *,
        auth: AdminAuth,
        agents: AgentStore,
        grant_store: GrantStore,
        tiers: RiskTiers,
        clock: Callable[[], float],
        audit: AuditSink,
    ) -> None:
        self._audit = audit
        self._auth = auth
        self._agents = agents
        self._grants = grant_store
        self._tiers = tiers
        self._clock = clock

    async def RegisterAgent(
        self,
        request: pb.RegisterAgentRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.Agent:
        caller = await self._auth.caller(context, ADMIN_SCOPES)
        agent = await self._valid(
            context,
            Agent(
                id=request.id,
                owner=request.owner,
                description=request.description,
                risk=request.risk,
                status="active",
                allowed_purposes=tuple(request.allowed_purposes),
                created_at=int(self._clock()),
                registered_by=caller,
                spiffe_id=request.spiffe_id,
                hours=request.hours,
            ),
        )
        if not await store_call(context, self._agents.add_agent(agent)):
            existing = await store_call(context, self._agents.get_agent(agent.id))
            if (
                existing is None
                or existing.registered
                or not await store_call(context, self._agents.replace_agent(existing, agent))
            ):
                await context.abort(
                    grpc.StatusCode.ALREADY_EXISTS, f"agent `{agent.id}` is already registered"
                )
        if not await self._record("agent_registered", caller, agent):
            await store_call(
                context, self._agents.put_agent(dataclasses.replace(agent, status="deregistered"))
            )
            await self._unrecorded(context)
        log.info(
            "agent %s registered by %s", agent.id, caller, extra={"event": "admin.agent_registered"}
        )
        return agent_message(agent, self._tiers)

    async def GetAgent(
        self,
        request: pb.AgentRef,
        context: grpc.aio.ServicerContext,
    ) -> pb.Agent:
        await self._auth.caller(context, ADMIN_SCOPES)
        return agent_message(await self._existing(context, request.id), self._tiers)

    async def ListAgents(
        self,
        request: pb.ListAgentsRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.ListAgentsResponse:
        await self._auth.caller(context, ADMIN_SCOPES)
        if request.status not in ("", *AGENT_STATUSES):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"status `{request.status}` is not one of {list(AGENT_STATUSES)}",
            )
        found = await store_call(context, self._agents.list_agents())
        return pb.ListAgentsResponse(
            agents=[
                agent_message(a, self._tiers)
                for a in found
                if a.registered
                and (not request.owner or a.owner == request.owner)
                and (not request.status or a.status == request.status)
            ]
        )

    async def UpdateAgent(
        self,
        request: pb.UpdateAgentRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.Agent:
        caller = await self._auth.caller(context, ADMIN_SCOPES)
        changes: dict[str, Any] = {}
        for name in ("owner", "description", "risk", "spiffe_id", "hours"):
            if request.HasField(name):
                changes[name] = getattr(request, name)
        if request.set_allowed_purposes:
            changes["allowed_purposes"] = tuple(request.allowed_purposes)
        if not changes:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nothing to update")
        current, agent = await self._swap(
            context, request.id, lambda a: dataclasses.replace(a, **changes)
        )
        if not await self._record("agent_updated", caller, agent, changed=sorted(changes)):
            await store_call(context, self._agents.replace_agent(agent, current))
            await self._unrecorded(context)
        log.info(
            "agent %s updated by %s: %s",
            agent.id,
            caller,
            sorted(changes),
            extra={"event": "admin.agent_updated"},
        )
        return agent_message(agent, self._tiers)

    async def SuspendAgent(
        self,
        request: pb.AgentRef,
        context: grpc.aio.ServicerContext,
    ) -> pb.Agent:
        return await self._set_status(request, context, "suspended")

    async def ResumeAgent(
        self,
        request: pb.AgentRef,
        context: grpc.aio.ServicerContext,
    ) -> pb.Agent:
        return await self._set_status(request, context, "active")

    async def DeregisterAgent(
        self,
        request: pb.AgentRef,
        context: grpc.aio.ServicerContext,
    ) -> pb.Agent:
        caller = await self._auth.caller(context, ADMIN_SCOPES)
        # Suspend first, so no check passes while its grants are being revoked; then leave
        # a tombstone, so a seed in entities.json cannot bring the agent back.
        _, agent = await self._swap(
            context, request.id, lambda a: dataclasses.replace(a, status="suspended")
        )
        for grant in await store_call(context, self._grants.list(agent=agent.id)):
            await store_call(context, self._grants.revoke(grant.id))
        await self._swap(
            context, request.id, lambda a: dataclasses.replace(a, status="deregistered")
        )
        if not await self._record("agent_deregistered", caller, agent):
            log.error(
                "agent %s deregistered by %s, but the trail could not record it",
                agent.id,
                caller,
                extra={"event": "admin.agent_deregister_unrecorded"},
            )
        log.info(
            "agent %s deregistered by %s",
            agent.id,
            caller,
            extra={"event": "admin.agent_deregistered"},
        )
        return agent_message(agent, self._tiers)

    async def _set_status(
        self, request: pb.AgentRef, context: grpc.aio.ServicerContext, status: str
    ) -> pb.Agent:
        caller = await self._auth.caller(context, ADMIN_SCOPES)
        current, agent = await self._swap(
            context, request.id, lambda a: dataclasses.replace(a, status=status)
        )
        event = "agent_suspended" if status == "suspended" else "agent_resumed"
        if not await self._record(event, caller, agent):
            if status == "active":  # resuming widens access: not without a record
                await store_call(context, self._agents.replace_agent(agent, current))
                await self._unrecorded(context)
            log.error(
                "agent %s suspended by %s, but the trail could not record it",
                agent.id,
                caller,
                extra={"event": "admin.agent_status_unrecorded"},
            )
        log.info(
            "agent %s %s by %s",
            agent.id,
            status,
            caller,
            extra={"event": "admin.agent_status_changed"},
        )
        return agent_message(agent, self._tiers)

    async def _swap(
        self, context: grpc.aio.ServicerContext, agent_id: str, change: Callable[[Agent], Agent]
    ) -> tuple[Agent, Agent]:
        """Read, change and compare-and-set, so concurrent writers never undo each other."""
        for _ in range(SWAP_ATTEMPTS):
            current = await self._existing(context, agent_id)
            new = await self._valid(context, change(current))
            if await store_call(context, self._agents.replace_agent(current, new)):
                return current, new
        await context.abort(
            grpc.StatusCode.ABORTED, f"agent `{agent_id}` kept changing underneath; retry"
        )
        raise AssertionError("unreachable")

    async def _record(self, event: str, caller: str, agent: Agent, **extra: Any) -> bool:
        detail: dict[str, Any] = {
            "owner": agent.owner,
            "risk": agent.risk,
            "risk_tier": self._tiers.of(agent.risk),
            "allowed_purposes": list(agent.allowed_purposes),
            "status": agent.status,
            "spiffe_id": agent.spiffe_id,
            **extra,
        }
        record = EventRecord(
            event=event, actor=caller, target=agent.id, time=rfc3339(self._clock()), detail=detail
        )
        try:
            return (await self._audit.commit(record)).ok
        except Exception:
            log.exception(
                "audit event %s for %s failed",
                event,
                agent.id,
                extra={"event": "admin.audit_event_failed"},
            )
            return False

    async def _unrecorded(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "the audit trail cannot record the change, so it was undone",
        )

    async def _existing(self, context: grpc.aio.ServicerContext, agent_id: str) -> Agent:
        agent = await store_call(context, self._agents.get_agent(agent_id))
        if agent is None or not agent.registered:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no agent `{agent_id}`")
        assert isinstance(agent, Agent)
        return agent

    async def _valid(self, context: grpc.aio.ServicerContext, agent: Agent) -> Agent:
        try:
            return check_fields(agent)
        except AgentRequestError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise
