"""The demo EHR as an MCP server: the `mcp` SDK's own server, over streamable HTTP at /mcp.

Tools: get_patient_record, get_medications, write_note, get_claims, on the
same charts as the HTTP demo upstream. Like it, it trusts Envoy + Lasthop in
front of it to decide who may call what (that is the point), and every result
carries the `x-lasthop-*` headers it received, so the demo and the tests can
see who was let in and check the receipt. Runs in a thread on a free loopback
port; `close()` stops it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from authz.dev.upstream import MEDICATIONS, RECORDS

START_TIMEOUT = 10.0


def _seen(ctx: Context) -> dict[str, str]:
    """The `x-lasthop-*` headers of the HTTP request that carried this call."""
    request = ctx.request_context.request
    headers = getattr(request, "headers", {})
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-lasthop-")}


def build() -> MCPServer:
    server = MCPServer(
        "demo-ehr", instructions="A hospital's EHR, behind Envoy and Lasthop.", log_level="WARNING"
    )

    @server.tool()
    def get_patient_record(patient_id: str, ctx: Context) -> dict[str, Any]:
        """The patient's chart: problems and allergies."""
        return {"patient": patient_id, "record": RECORDS.get(patient_id), "lasthop": _seen(ctx)}

    @server.tool()
    def get_medications(
        patient_id: str, ctx: Context, history_days: int | None = None
    ) -> dict[str, Any]:
        """The patient's current medications, and optionally their history."""
        return {
            "patient": patient_id,
            "medications": MEDICATIONS.get(patient_id),
            "history_days": history_days,
            "lasthop": _seen(ctx),
        }

    @server.tool()
    def write_note(patient_id: str, text: str, ctx: Context) -> dict[str, Any]:
        """File a clinical note in the patient's chart."""
        return {"patient": patient_id, "note_chars": len(text), "lasthop": _seen(ctx)}

    @server.tool()
    def get_claims(claim_id: str, ctx: Context) -> dict[str, Any]:
        """A billing claim."""
        return {"claim": claim_id, "status": "submitted", "amount": "182.40", "lasthop": _seen(ctx)}

    return server


class EhrMcpServer:
    """The MCP server on 127.0.0.1 in a thread of its own, with its own event loop."""

    def __init__(self, port: int = 0) -> None:
        # Envoy forwards the client's Host; the SDK's DNS-rebinding guard is for servers a
        # browser can reach, which this loopback demo is not.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        app = build().streamable_http_app(transport_security=security)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the demo MCP server did not start")
            time.sleep(0.02)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
