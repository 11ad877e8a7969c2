"""The MCP part of `lasthop demo`: an agent calls the EHR's MCP server through Envoy.

The agent is the `mcp` SDK's own client (streamable HTTP, with its protocol
negotiation), sending its bearer token; the server is the SDK's own server
(`dev.ehr_mcp`); Envoy (envoy/mcp.yaml) sends Lasthop each JSON-RPC body, and
Lasthop decides each tool call by the tool and its arguments. A refusal
reaches the SDK as a failed request; `call_tool` reads Lasthop's JSON reason
off the HTTP response so the demo can show it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from authz._proto import grants_pb2 as pb
from authz.audit import receipts
from authz.audit.signing import read_jwks
from authz.cli.admin_client import AdminClient
from authz.dev import stack as devstack
from authz.dev.ehr_mcp import EhrMcpServer
from authz.dev.tokens import DemoIssuer

PURPOSE = "clinical-documentation"
TIMEOUT = 10.0


@dataclass
class ToolOutcome:
    status: int  # the HTTP status of the tools/call POST (200 when the server answered)
    reason: str  # Lasthop's reason on a refusal, "allowed" otherwise
    result: dict[str, Any] = field(default_factory=dict)  # the tool's structured result


async def call_tool(url: str, token: str, tool: str, arguments: dict[str, Any]) -> ToolOutcome:
    """Connect with the SDK's client, call one tool, and say what happened."""
    refused: list[tuple[int, str]] = []

    async def look(response: httpx2.Response) -> None:
        if response.status_code >= 400 and response.request.method == "POST":
            body = json.loads(await response.aread() or b"{}")
            refused.append((response.status_code, str(body.get("reason", ""))))

    http = httpx2.AsyncClient(
        headers={"authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
        trust_env=False,  # loopback only, whatever proxy the environment names
        event_hooks={"response": [look]},
    )
    try:
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool(tool, arguments)
    except (MCPError, ExceptionGroup):
        if not refused:
            raise
        return ToolOutcome(*refused[-1])
    return ToolOutcome(200, "allowed", _structured(result))


def _structured(result: Any) -> dict[str, Any]:
    for item in getattr(result, "content", []):
        text = getattr(item, "text", None)
        if isinstance(text, str):
            parsed = json.loads(text)
            return parsed if isinstance(parsed, dict) else {}
    return {}


def run(work: Path, lasthop_port: int, admin: AdminClient, issuer: DemoIssuer, jwks: Path) -> None:
    """Start the MCP server and an Envoy in front of it; walk the scenario; stop both."""
    server = EhrMcpServer()
    envoy = None
    try:
        envoy = devstack.Envoy(work, lasthop_port, server.port, devstack.MCP_ENVOY_TEMPLATE)
        print(
            f"\n\nThe same EHR as an MCP server (the mcp SDK) on 127.0.0.1:{server.port}, behind "
            f"Envoy on {envoy.url}/mcp (envoy/mcp.yaml sends Lasthop each JSON-RPC body)."
        )
        scenario(f"{envoy.url}/mcp", admin, issuer, jwks)
    finally:
        if envoy:
            envoy.close()
        server.close()


def scenario(url: str, admin: AdminClient, issuer: DemoIssuer, jwks: Path) -> list[ToolOutcome]:
    grant = _read_grant(admin, "scribe", PURPOSE)
    print(f"\n+ dr-alice approves grant {grant.id}: scribe may read p-1001, 15 minutes")
    _read_grant(admin, "med-reconciler", "medication-reconciliation")
    scribe = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    billing = issuer.access_token("bob", ["billing-bot"], purpose="billing")
    meds = issuer.access_token("dr-alice", ["med-reconciler"], purpose="medication-reconciliation")
    steps: list[tuple[str, str, str, dict[str, Any]]] = [
        ("scribe calls get_patient_record for p-1001, with the grant", scribe,
         "get_patient_record", {"patient_id": "p-1001"}),
        ("scribe calls the same tool for another patient, p-1002", scribe,
         "get_patient_record", {"patient_id": "p-1002"}),
        ("billing-bot calls a clinical tool (it holds a billing grant on p-1001)", billing,
         "get_patient_record", {"patient_id": "p-1001"}),
        ("med-reconciler asks get_medications for 400 days of history (a policy on the "
         "arguments allows at most 365)", meds,
         "get_medications", {"patient_id": "p-1001", "history_days": 400}),
    ]  # fmt: skip
    outcomes = []
    for title, token, tool, arguments in steps:
        outcome = asyncio.run(call_tool(url, token, tool, arguments))
        _show(title, tool, arguments, outcome, jwks)
        outcomes.append(outcome)
    return outcomes


def _read_grant(admin: AdminClient, agent: str, purpose: str) -> pb.Grant:
    """dr-alice's grant to `agent`: read p-1001's chart for `purpose`, 15 minutes."""
    request = pb.IssueGrantRequest(
        agent=agent, user="dr-alice", actions=["read"], resources=['Patient::"p-1001"'],
        purpose=purpose, ttl_seconds=900,
    )  # fmt: skip
    return admin.issue(request)


def _show(
    title: str, tool: str, arguments: dict[str, Any], outcome: ToolOutcome, jwks: Path
) -> None:
    print(f"\n- {title}\n  tools/call {tool} {json.dumps(arguments)}")
    print(f"  -> {outcome.status} {outcome.reason}")
    seen = outcome.result.get("lasthop")
    if isinstance(seen, dict) and seen:
        print(f"     the MCP server saw chain={seen.get('x-lasthop-chain')}")
        receipt = seen.get("x-lasthop-receipt")
        if isinstance(receipt, str):
            claims = receipts.verify(receipt, read_jwks(jwks), receipts.Binding("POST", "/mcp"))
            print(
                f"     and a signed receipt for decision {claims['jti']}, verified offline, "
                f"naming tool {claims.get('tool')}, bound to the body's SHA-256 "
                f"{str(claims.get('body_sha256'))[:16]}..."
            )
