"""MCP through a real Envoy (envoy/mcp.yaml) to the demo EHR's MCP server (the mcp SDK).

The agent is the SDK's own client; Envoy sends Lasthop the JSON-RPC body;
each refusal reason of a body Lasthop cannot decide on is shown through Envoy,
as a client sees it: the status, Lasthop's JSON reason, and nothing reaching
the server. All on the shared stack's Lasthop, with users no other test uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.audit import receipts
from authz.audit.signing import read_jwks
from authz.check import mcp
from authz.dev import stack as devstack
from authz.dev.demo_mcp import ToolOutcome, call_tool
from authz.dev.ehr_mcp import EhrMcpServer
from authz.errors import ReceiptError
from authz.policy.mcp import arguments_digest
from tests.integration.conftest import (
    Response,
    Stack,
    assert_deny,
    read_audit,
    request,
    unique,
    wait_until,
)
from tests.integration.test_audit_receipts import served_jwks

pytestmark = pytest.mark.integration

NOTE = "Visit note: BP 128/82, continue lisinopril."
MODERN = {  # what the SDK's client sends on a 2026-07-28 connection: no session needed
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
}


@pytest.fixture(scope="module")
def server() -> Iterator[EhrMcpServer]:
    ehr = EhrMcpServer()
    try:
        yield ehr
    finally:
        ehr.close()


def envoy_for(stack: Stack, server: EhrMcpServer, work: Path, **changes: str) -> devstack.Envoy:
    text = devstack.MCP_ENVOY_TEMPLATE.read_text()
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    template = work / "mcp.yaml"
    template.write_text(text)
    return devstack.Envoy(work, stack.lasthop.port, server.port, template=template)


@pytest.fixture(scope="module")
def mcp_url(
    stack: Stack, server: EhrMcpServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The shipped envoy/mcp.yaml in front of the shared Lasthop and the MCP server."""
    envoy = envoy_for(stack, server, tmp_path_factory.mktemp("envoy-mcp"))
    try:
        yield envoy.url
    finally:
        envoy.close()


@pytest.fixture(scope="module")
def loose_url(
    stack: Stack, server: EhrMcpServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """envoy/mcp.yaml set up wrong: partial bodies allowed, a larger limit than Lasthop's."""
    envoy = envoy_for(
        stack,
        server,
        tmp_path_factory.mktemp("envoy-mcp-loose"),
        **{
            "max_request_bytes: 65536": "max_request_bytes: 131072",
            "allow_partial_message: false": "allow_partial_message: true",
        },
    )
    try:
        yield envoy.url
    finally:
        envoy.close()


def call(url: str, token: str, tool: str, **arguments: object) -> ToolOutcome:
    return asyncio.run(call_tool(f"{url}/mcp", token, tool, dict(arguments)))


def post(url: str, token: str, body: bytes, **headers: str) -> Response:
    sent = {**MODERN, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return request(url, "/mcp", token, method="POST", data=body, headers=sent)


# --- the SDK's client, through Envoy ------------------------------------------------------------


def test_the_scribes_tool_call_with_a_grant_and_for_another_patient(
    stack: Stack, mcp_url: str
) -> None:
    user = unique("u-mcp-scribe")
    stack.grant(user)
    token = stack.token(user, ["scribe"])
    allowed = call(mcp_url, token, "get_patient_record", patient_id="p-1001")
    assert (allowed.status, allowed.reason) == (200, "allowed")
    assert allowed.result["record"]["name"] == "Jordan Rivera"
    assert allowed.result["lasthop"]["x-lasthop-chain"] == f"{user},scribe"
    other = call(mcp_url, token, "get_patient_record", patient_id="p-1002")
    assert (other.status, other.reason) == (403, "no_grant")


def test_the_billing_bot_is_refused_a_clinical_tool(stack: Stack, mcp_url: str) -> None:
    user = unique("u-mcp-billing")
    stack.grant(user, "billing-bot", purpose="billing")
    token = stack.token(user, ["billing-bot"], purpose="billing")
    refused = call(mcp_url, token, "get_patient_record", patient_id="p-1001")
    assert (refused.status, refused.reason) == (403, "billing_not_clinical")
    stack.grant(user, "billing-bot", purpose="billing", resources=('Claim::"c-77"',))
    claim = call(mcp_url, token, "get_claims", claim_id="c-77")
    assert (claim.status, claim.reason, claim.result["claim"]) == (200, "allowed", "c-77")


def test_the_trail_has_the_tool_and_a_digest_never_the_arguments(
    stack: Stack, mcp_url: str
) -> None:
    user = unique("u-mcp-note")
    stack.grant(user, actions=("write",))
    wrote = call(
        mcp_url, stack.token(user, ["scribe"]), "write_note", patient_id="p-1001", text=NOTE
    )
    assert (wrote.status, wrote.result["note_chars"]) == (200, len(NOTE))

    def mine() -> list[dict[str, object]]:
        records = read_audit(stack.audit_path)
        return [r for r in records if r.get("user") == user and r.get("tool") == "write_note"]

    assert wait_until(lambda: len(mine()) == 1, 5)
    [record] = mine()
    digest = arguments_digest({"patient_id": "p-1001", "text": NOTE})
    assert (record["decision"], record["mcp_method"], record["arguments_sha256"]) == (
        "allow",
        "tools/call",
        digest,
    )
    trail = stack.audit_path.read_text()
    assert "lisinopril" not in trail and "128/82" not in trail


def test_the_receipt_binds_the_exact_body(stack: Stack, mcp_url: str, tmp_path: Path) -> None:
    user = unique("u-mcp-receipt")
    stack.grant(user)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    call = {"name": "get_patient_record", "arguments": {"patient_id": "p-1001"}, "_meta": meta}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}).encode()
    routing = {"mcp_method": "tools/call", "mcp_name": "get_patient_record"}
    resp = post(mcp_url, stack.token(user, ["scribe"]), body, **routing)
    assert resp.status == 200, resp.raw[:300]
    result = json.loads(_json_rpc_result(resp.raw)["content"][0]["text"])
    receipt = result["lasthop"]["x-lasthop-receipt"]
    keys = read_jwks(served_jwks(stack, tmp_path))
    claims = receipts.verify(receipt, keys, receipts.Binding("POST", "/mcp", body=body))
    assert claims["tool"] == "get_patient_record"
    assert claims["body_sha256"] == hashlib.sha256(body).hexdigest()
    with pytest.raises(ReceiptError) as info:
        receipts.verify(receipt, keys, receipts.Binding(body=body.replace(b"1001", b"1002")))
    assert info.value.reason == "binding_mismatch"


def _json_rpc_result(raw: bytes) -> dict[str, Any]:
    """The result of a JSON-RPC response sent as JSON or as one server-sent event."""
    text = raw.decode()
    data = [line[5:] for line in text.splitlines() if line.startswith("data:")]
    message = json.loads(data[-1] if data else text)
    assert "result" in message, message
    result: dict[str, Any] = message["result"]
    return result


# --- each refusal of a body Lasthop cannot decide on, through Envoy -------------------------

CALL = mcp.call_body("get_patient_record", {"patient_id": "p-1001"})


def test_no_body_from_envoy_is_a_503_naming_the_setting(stack: Stack) -> None:
    """The HTTP sidecar (envoy/sidecar.yaml) sends no body: Lasthop cannot decide."""
    token = stack.token(unique("u-mcp-nobody"), ["scribe"])
    resp = post(stack.base, token, CALL, x_envoy_auth_partial_body="false")  # spoof: ignored
    assert_deny(resp, 503, "mcp_body_missing")
    assert "with_request_body" in resp.body["detail"]


def test_a_partial_body_and_one_over_lasthops_bound(stack: Stack, loose_url: str) -> None:
    token = stack.token(unique("u-mcp-size"), ["scribe"])
    padded = CALL[:-1] + b"," + b" " * 100_000 + b"}"  # 100 KB: whole, over Lasthop's 64 KiB
    assert_deny(post(loose_url, token, padded), 413, "mcp_body_too_large")
    cut = CALL[:-1] + b"," + b" " * 200_000 + b"}"  # over this Envoy's 128 KiB: sent cut
    assert_deny(post(loose_url, token, cut), 413, "mcp_body_partial")


def test_envoys_own_limit_refuses_before_lasthop_is_asked(stack: Stack, mcp_url: str) -> None:
    user = unique("u-mcp-envoy413")
    resp = post(mcp_url, stack.token(user, ["scribe"]), CALL + b" " * 70_000)
    assert resp.status == 413 and resp.body.get("decision") is None, resp.raw[:200]
    assert not [r for r in read_audit(stack.audit_path) if r.get("user") == user]


LONE_SURROGATE = CALL.replace(b"p-1001", b"\\ud800")
BATCH = b"[" + CALL + b"," + CALL.replace(b'"id":1', b'"id":2') + b"]"
READ_RESOURCE = b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}'


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"\xff" + CALL, {}, 400, "mcp_invalid_encoding"),
        (LONE_SURROGATE, {}, 400, "mcp_invalid_encoding"),
        (b"tools/call get_patient_record p-1001", {}, 400, "mcp_not_json"),
        (b"[" * 30_000 + b"]" * 30_000, {}, 400, "mcp_too_deep"),
        (CALL.replace(b'"params"', b'"method":"ping","params"'), {}, 400, "mcp_duplicate_member"),
        (CALL.replace(b'"2.0"', b'"1.0"'), {}, 400, "mcp_invalid_message"),
        (CALL, {"mcp_name": "get_claims"}, 400, "mcp_header_mismatch"),
        (BATCH, {}, 403, "mcp_batch_refused"),
        (READ_RESOURCE, {}, 403, "mcp_method_not_allowed"),
        (mcp.call_body("export_all_patients", {}), {}, 403, "mcp_unknown_tool"),
        (CALL.replace(b'"p-1001"', b'"p-1001","all":true'), {}, 403, "mcp_invalid_arguments"),
        (CALL.replace(b'"p-1001"', b'"../p-1002"'), {}, 403, "mcp_invalid_arguments"),
    ],
)  # fmt: skip
def test_each_refusal_through_envoy(
    stack: Stack, mcp_url: str, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    user = unique("u-mcp-refuse")
    stack.grant(user)  # a grant that would cover the call: the body is refused before it counts
    resp = post(mcp_url, stack.token(user, ["scribe"]), body, **headers)
    assert_deny(resp, status, reason)
