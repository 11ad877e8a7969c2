"""A small synchronous client of the admin API, used by the CLI and the demo."""

from __future__ import annotations

import builtins
from dataclasses import dataclass

import grpc

from authz._proto import agents_pb2 as apb
from authz._proto import agents_pb2_grpc as apb_grpc
from authz._proto import grants_pb2 as pb
from authz._proto import grants_pb2_grpc as pb_grpc
from authz.errors import AdminError

TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class ClientTls:
    """TLS to the admin API: `ca` (PEM) verifies the server, None for the system's CAs;
    `cert` and `key` (PEM) are the client's own, for an admin listener that wants mTLS."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


class AdminClient:
    def __init__(self, address: str, token: str, tls: ClientTls | None = None) -> None:
        self._channel = (
            grpc.secure_channel(address, tls.credentials())
            if tls is not None
            else grpc.insecure_channel(address)
        )
        self._grants = pb_grpc.GrantsStub(self._channel)
        self._agents = apb_grpc.AgentsStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: object) -> object:
        try:
            return method(request, metadata=self._metadata, timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as err:
            code = err.code().name.lower() if err.code() else "error"
            raise AdminError(code, str(err.details())) from None

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

    def _agent(self, method: grpc.UnaryUnaryMultiCallable, request: object) -> apb.Agent:
        result = self._call(method, request)
        assert isinstance(result, apb.Agent)
        return result

    def register_agent(self, request: apb.RegisterAgentRequest) -> apb.Agent:
        return self._agent(self._agents.RegisterAgent, request)

    def get_agent(self, agent_id: str) -> apb.Agent:
        return self._agent(self._agents.GetAgent, apb.AgentRef(id=agent_id))

    def update_agent(self, request: apb.UpdateAgentRequest) -> apb.Agent:
        return self._agent(self._agents.UpdateAgent, request)

    def suspend_agent(self, agent_id: str) -> apb.Agent:
        return self._agent(self._agents.SuspendAgent, apb.AgentRef(id=agent_id))

    def resume_agent(self, agent_id: str) -> apb.Agent:
        return self._agent(self._agents.ResumeAgent, apb.AgentRef(id=agent_id))

    def deregister_agent(self, agent_id: str) -> apb.Agent:
        return self._agent(self._agents.DeregisterAgent, apb.AgentRef(id=agent_id))

    def list_agents(self, owner: str = "", status: str = "") -> builtins.list[apb.Agent]:
        result = self._call(
            self._agents.ListAgents, apb.ListAgentsRequest(owner=owner, status=status)
        )
        assert isinstance(result, apb.ListAgentsResponse)
        return list(result.agents)

    def close(self) -> None:
        self._channel.close()
