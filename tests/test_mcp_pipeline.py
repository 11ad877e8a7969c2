"""MCP tool calls through the whole pipeline, in process: everything a route has carries over.

Grants, the registry, Cedar with `context.tool`, shadow policies, the decision
cache, receipts bound to the body, the audit record (the tool and a digest of
its arguments, never the arguments) and the accounting of disclosures.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from authz.audit import disclosures
from authz.audit.receipts import Binding, ReceiptSigner, verify
from authz.audit.records import AuditRecord, MemoryAudit
from authz.audit.signing import SigningKey
from authz.check import mcp
from authz.check.decisions import DecisionCache
from authz.check.pipeline import Pipeline
from authz.config import IdentitySettings
from authz.dev.tokens import DemoIssuer
from authz.model import CheckInput, Decision
from authz.policy import load as policy_load
from authz.server import ext_authz
from authz.server.app import assemble
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry
from tests.conftest import POLICIES, PURPOSE, Clock, PipelineFactory, grant, keys_for

NOTE = "Visit note: BP 128/82, continue lisinopril."


def post(token: str | None, body: bytes, **headers: str) -> CheckInput:
    sent = {k.replace("_", "-"): [v] for k, v in headers.items()}
    if token is not None:
        sent["authorization"] = [f"Bearer {token}"]
    return CheckInput.with_body(body, method="POST", path="/mcp", host="ehr.local", headers=sent)


def tool(name: str, **arguments: Any) -> bytes:
    return mcp.call_body(name, arguments)


def run(pipeline: Pipeline, req: CheckInput) -> Decision:
    return asyncio.run(pipeline.check(req))


@pytest.fixture
def audit() -> MemoryAudit:
    return MemoryAudit()


@pytest.fixture
def pipeline(make_pipeline: PipelineFactory, clock: Clock, audit: MemoryAudit) -> Pipeline:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(actions=("read", "write"), now=clock.now)))
    asyncio.run(store.put(grant("billing-bot", "bob", purpose="billing", now=clock.now)))
    asyncio.run(store.put(grant("med-reconciler", purpose="medication-reconciliation")))
    return make_pipeline(store=store, audit=audit)


def records(audit: MemoryAudit) -> list[AuditRecord]:
    return [r for r in audit.records if isinstance(r, AuditRecord)]


def test_the_scribes_tool_call_with_a_grant(
    pipeline: Pipeline, issuer: DemoIssuer, audit: MemoryAudit
) -> None:
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    decision = run(pipeline, post(token, tool("get_patient_record", patient_id="p-1001")))
    assert (decision.allowed, decision.reason) == (True, "allowed")
    assert decision.grant is not None and decision.policies == ("scribe-read-records",)
    assert decision.cedar is not None
    assert decision.cedar["resource"] == {"type": "Records", "id": "p-1001"}
    assert decision.cedar["context"]["tool"] == {
        "name": "get_patient_record",
        "arguments": {"patient_id": "p-1001"},
    }
    [record] = records(audit)
    assert (record.mcp_method, record.tool, record.phi) == (
        "tools/call",
        "get_patient_record",
        True,
    )
    assert record.arguments_sha256 == hashlib.sha256(b'{"patient_id":"p-1001"}').hexdigest()


def test_the_audit_record_never_holds_the_arguments(
    pipeline: Pipeline, issuer: DemoIssuer, audit: MemoryAudit
) -> None:
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    body = tool("write_note", patient_id="p-1001", text=NOTE)
    assert run(pipeline, post(token, body)).allowed
    assert run(pipeline, post(token, body.replace(b"p-1001", b"p-1002"))).reason == "no_grant"
    for record in records(audit):
        line = json.dumps(record.to_dict())
        assert "lisinopril" not in line and "128/82" not in line
        assert record.tool == "write_note" and len(record.arguments_sha256) == 64


MED = "medication-reconciliation"
RECORD = tool("get_patient_record", patient_id="p-1001")


@pytest.mark.parametrize(
    ("user", "agents", "purpose", "body", "reason"),
    [
        ("dr-alice", ["scribe"], PURPOSE, RECORD.replace(b"p-1001", b"p-1002"), "no_grant"),
        ("bob", ["billing-bot"], "billing", RECORD, "billing_not_clinical"),
        (
            "dr-alice",
            ["scribe"],
            PURPOSE,
            tool("get_medications", patient_id="p-1001"),
            "policy_denied",
        ),
        (
            "dr-alice",
            ["med-reconciler"],
            MED,
            tool("get_medications", patient_id="p-1001", history_days=400),
            "history_too_long",
        ),
        ("dr-alice", ["orchestrator", "suspended"], PURPOSE, RECORD, "agent_suspended"),
        ("dr-alice", ["unknown-agent"], PURPOSE, RECORD, "agent_unregistered"),
    ],
)
def test_refusals_that_carry_over_from_routes(
    pipeline: Pipeline,
    issuer: DemoIssuer,
    user: str,
    agents: list[str],
    purpose: str,
    body: bytes,
    reason: str,
) -> None:
    if "suspended" in agents:
        suspended = [a for a in pipeline.bundle.agents.values() if a.status == "suspended"]
        agents = ["orchestrator", suspended[0].id]
    token = issuer.access_token(user, agents, purpose=purpose)
    decision = run(pipeline, post(token, body))
    assert (decision.allowed, decision.reason, decision.status) == (False, reason, 403)


def test_the_med_reconcilers_tool_call_within_the_policy(
    pipeline: Pipeline, issuer: DemoIssuer
) -> None:
    token = issuer.access_token("dr-alice", ["med-reconciler"], purpose="medication-reconciliation")
    body = tool("get_medications", patient_id="p-1001", history_days=365)
    assert run(pipeline, post(token, body)).allowed


def test_the_handshake_needs_no_grant_and_no_token_is_still_a_401(
    pipeline: Pipeline, issuer: DemoIssuer
) -> None:
    token = issuer.access_token("bob", ["billing-bot"], purpose="billing")
    hello = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}'
    decision = run(pipeline, post(token, hello))
    assert decision.allowed and decision.grant is None and decision.route is not None
    assert decision.route.resource.type == "McpServer"
    assert run(pipeline, post(None, hello)).reason == "missing_token"


@pytest.mark.parametrize(
    ("body", "reason", "status"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "mcp_too_deep", 400),
        (tool("get_patient_record", patient_id="\ud800"), "mcp_invalid_encoding", 400),
        (b"\xc3\x28", "mcp_invalid_encoding", 400),
        (b"not json", "mcp_not_json", 400),
        (b"x" * 70_000, "mcp_body_too_large", 413),
    ],
)
def test_a_bad_body_is_a_specific_deny_never_a_503(
    pipeline: Pipeline, issuer: DemoIssuer, body: bytes, reason: str, status: int
) -> None:
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    decision = run(pipeline, post(token, body))
    assert (decision.allowed, decision.reason, decision.status) == (False, reason, status)


def test_the_body_is_read_only_after_the_token(pipeline: Pipeline) -> None:
    """An anonymous caller learns nothing about the route table from its body."""
    assert run(pipeline, post(None, b"not json")).reason == "missing_token"


def test_the_decision_cache_tells_bodies_apart(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    """Regression: the cache key had no body, so one patient's allow served another's call."""
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    pipeline = make_pipeline(store=store)
    pipeline.decisions = DecisionCache(lambda: 0)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    first = run(pipeline, post(token, tool("get_patient_record", patient_id="p-1001")))
    other = run(pipeline, post(token, tool("get_patient_record", patient_id="p-1002")))
    assert first.allowed and (other.allowed, other.reason) == (False, "no_grant")
    renamed = run(
        pipeline, post(token, tool("get_patient_record", patient_id="p-1001"), mcp_name="x")
    )
    assert renamed.reason == "mcp_header_mismatch"
    partial = CheckInput(
        method="POST",
        path="/mcp",
        host="ehr.local",
        headers={"authorization": [f"Bearer {token}"]},
        body=RECORD,
        body_partial=True,
    )
    assert run(pipeline, partial).reason == "mcp_body_partial"
    assert run(pipeline, post(token, tool("get_patient_record", patient_id="p-1001"))).allowed


def test_the_receipt_binds_the_body_and_names_the_tool(
    pipeline: Pipeline, issuer: DemoIssuer, clock: Clock
) -> None:
    key = SigningKey.generate()
    pipeline.receipts = ReceiptSigner(key, 60, clock)
    body = tool("write_note", patient_id="p-1001", text=NOTE)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    decision = run(pipeline, post(token, body))
    claims = verify(
        decision.receipt, {key.kid: key.private.public_key()}, Binding("POST", "/mcp", body=body)
    )
    assert claims["tool"] == "write_note"
    assert claims["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_shadow_policy_on_the_arguments_is_reported(
    tmp_path: Path, issuer: DemoIssuer, clock: Clock
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    (policies / "00-shadow-short-history.cedar").write_text(
        '@id("shadow-history-at-most-90-days")\n@mode("shadow")\n'
        "forbid (principal, action, resource is Medications)\n"
        "when { context has tool && context.tool.arguments has history_days &&\n"
        "  context.tool.arguments.history_days > 90 };\n"
    )
    bundle = policy_load.load(policies)
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant("med-reconciler", purpose="medication-reconciliation")))
    pipeline = assemble(
        ident=IdentitySettings(),
        keys=keys_for(issuer),
        bundle=bundle,
        registry=SeededRegistry(bundle.agents),
        store=store,
        audit=MemoryAudit(),
        clock=clock,
    )
    token = issuer.access_token("dr-alice", ["med-reconciler"], purpose="medication-reconciliation")
    decision = run(
        pipeline, post(token, tool("get_medications", patient_id="p-1001", history_days=120))
    )
    assert decision.allowed
    assert decision.shadow == (("shadow-history-at-most-90-days", "forbid"),)
    assert decision.shadow_disagrees


def test_the_accounting_of_disclosures_names_the_tool(
    pipeline: Pipeline, issuer: DemoIssuer, audit: MemoryAudit
) -> None:
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    run(pipeline, post(token, tool("get_patient_record", patient_id="p-1001")))
    run(pipeline, post(token, tool("get_patient_record", patient_id="p-1002")))  # denied
    run(pipeline, post(token, b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'))  # not PHI
    rows = disclosures.account([r.to_dict() for r in records(audit)], patient="p-1001")
    assert [r.description for r in rows] == ['read Records::"p-1001" (MCP tool get_patient_record)']


def test_the_adapter_passes_the_body_as_envoy_sent_it() -> None:
    from envoy.service.auth.v3 import external_auth_pb2 as pb

    def request(partial: str | None, raw: bytes = b"", text: str = "") -> CheckInput:
        req = pb.CheckRequest()
        http = req.attributes.request.http
        http.method, http.path, http.raw_body, http.body = "POST", "/mcp?x=1", raw, text
        if partial is not None:
            http.headers["x-envoy-auth-partial-body"] = partial
        return ext_authz.to_input(req)

    whole = request("false", raw=b"{}")
    assert (whole.path, whole.body, whole.body_partial) == ("/mcp", b"{}", False)
    assert whole.body_sha256 == hashlib.sha256(b"{}").hexdigest()
    assert request("false", text="{}").body == b"{}"  # without pack_as_bytes
    cut = request("true", raw=b"{")
    assert (cut.body, cut.body_partial, cut.body_sha256) == (b"{", True, "")
    none = request(None)
    assert (none.body, none.body_partial, none.body_sha256) == (None, False, "")
