"""Per-stage micro benchmarks: token verify, chain, grant lookup, Cedar decision, audit enqueue,
an MCP body read and resolved to its tool's action and resource.

    .venv/bin/python -m pytest benchmarks/micro                      # with timings
    .venv/bin/python -m pytest benchmarks/micro --benchmark-disable  # the CI smoke: runs each once

Each stage runs uncached (the caches that make the fast path fast are
measured by benchmarks/run.py, end to end). Not in the default test run.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from pathlib import Path
from typing import Any

import pytest

from authz.audit.chain import Head
from authz.audit.receipts import ReceiptSigner
from authz.audit.records import AuditRecord, NullAudit, Repeat
from authz.audit.signing import SigningKey
from authz.audit.templates import Templates
from authz.audit.trail import TrailOptions
from authz.audit.writer import AuditLog
from authz.check import delegation, grants, identity, mcp
from authz.dev.tokens import DemoIssuer
from authz.model import CheckInput, EntityRef, RouteMatch
from authz.policy import evaluate as policy
from authz.policy import load as policy_load
from authz.stores.embedded import EmbeddedGrantStore
from tests.audit_helpers import allowed
from tests.audit_helpers import decision as audit_record
from tests.conftest import POLICIES, PURPOSE, grant, keys_for, rules

ROUTE = RouteMatch(
    action="read",
    resource=EntityRef("Records", "p-1001"),
    parents=(EntityRef("Patient", "p-1001"),),
    template="/patients/{patient}/records",
    phi=True,
)


@pytest.fixture(scope="module")
def es() -> DemoIssuer:
    return DemoIssuer("ES256", kid="micro-es")


@pytest.fixture(scope="module")
def rs() -> DemoIssuer:
    return DemoIssuer("RS256", kid="micro-rs")


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_token_verify(benchmark: Any, es: DemoIssuer, rs: DemoIssuer, alg: str) -> None:
    issuer = es if alg == "ES256" else rs
    keys = keys_for(es, rs)
    token = issuer.access_token("dr-alice", ["orchestrator", "scribe"], purpose=PURPOSE)
    claims = benchmark(identity.verify, token, keys, rules(), time.time())
    assert claims["sub"] == "dr-alice"


def test_chain(benchmark: Any, es: DemoIssuer) -> None:
    verifier = identity.AccessTokenVerifier(keys_for(es), rules(), time.time)
    claims = verifier.verify(es.access_token("dr-alice", ["orchestrator", "scribe"]))
    chain = benchmark(delegation.read_chain, claims, 4)
    assert chain.agents == ("orchestrator", "scribe")


def test_grant_lookup(benchmark: Any) -> None:
    store = EmbeddedGrantStore(time.time)
    asyncio.run(store.put(grant()))
    held = asyncio.run(store.for_pair("scribe", "dr-alice"))
    chosen = benchmark(grants.select, held, ROUTE, PURPOSE, time.time())
    assert chosen.agent == "scribe"


def test_cedar_decision(benchmark: Any) -> None:
    bundle = policy_load.load(POLICIES)
    hops = [bundle.agents["orchestrator"], bundle.agents["scribe"]]
    context = {
        "user": {"__entity": {"type": "User", "id": "dr-alice"}},
        "chain_depth": 2,
        "agents": [
            {"__entity": {"type": "Agent", "id": "orchestrator"}},
            {"__entity": {"type": "Agent", "id": "scribe"}},
        ],
        "chain": policy.chain_context(hops, PURPOSE),
        "delegator": "orchestrator",
        "purpose": PURPOSE,
        "txn": "t",
        "grant": {"id": "g", "purpose": PURPOSE, "issued_by": "x", "expires_at": 2**40},
        "request": {"method": "GET", "path": "/patients/p-1001/records", "host": "h"},
        "time": int(time.time()),
    }
    request = policy.CedarRequest(EntityRef("Agent", "scribe"), "read", ROUTE.resource, context)
    delta = policy.request_entities(ROUTE.resource, ROUTE.parents, hops)

    def decide() -> policy.CedarOutcome:
        return policy.PolicyEngine(bundle).evaluate(request, delta)  # a fresh engine: uncached

    assert benchmark(decide).allowed


def test_mcp_body(benchmark: Any) -> None:
    """What a tool call adds to the route phase: read the JSON-RPC body, check, resolve."""
    endpoint = policy_load.load(POLICIES).routes.mcp["/mcp"]
    body = mcp.call_body("get_patient_record", {"patient_id": "p-1001"}, 42)
    request = CheckInput.with_body(body, method="POST", path="/mcp", host="h", headers={})

    def resolve() -> RouteMatch:
        return endpoint.resolve(*mcp.read(request, endpoint.max_body_bytes, endpoint.max_depth))

    assert benchmark(resolve).resource == EntityRef("Records", "p-1001")


def test_audit_enqueue(benchmark: Any, tmp_path: Path) -> None:
    """What the Check path pays: hand one record to the writer thread (fsync every 50 ms)."""
    options = TrailOptions(fsync_interval=0.05, key=SigningKey.generate())
    log = AuditLog(tmp_path / "decisions.jsonl", queue_size=10_000_000, options=options)
    record = AuditRecord(
        decision_id="d",
        time="2026-11-23T00:00:00.000Z",
        decision="allow",
        status=200,
        reason="allowed",
        user="dr-alice",
        chain=["orchestrator", "scribe"],
        agent="scribe",
        client_id="scribe",
        peer="",
        action="read",
        resource='Records::"p-1001"',
        method="GET",
        host="h",
        path="/patients/p-1001/records",
        purpose=PURPOSE,
        txn="t",
        grant_id="g",
        policies=["scribe-read-records"],
        policy_version="v",
        token_sha256="0" * 64,
        latency_ms=1.0,
    )
    log.open()
    try:
        assert benchmark(log.emit, record)
    finally:
        asyncio.run(log.close())


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_receipts(benchmark: Any, batch: int) -> None:
    """`batch` receipts under one Ed25519 signature: what a group commit of `batch` allows
    signs (divide by `batch` for one receipt). 1 is also what an interval signs per allow."""
    signer = ReceiptSigner(SigningKey.generate(), 60)
    unsigned = [signer.claims(*allowed(n)) for n in range(batch)]
    assert len(benchmark(signer.sign, unsigned)) == batch


def test_receipt_hmac_reference(benchmark: Any) -> None:
    """For comparison only: an HMAC-SHA256 over the same claims, what a receipt under a key
    shared with the upstream would cost (and why it is not one: nobody else can verify it)."""
    claims = ReceiptSigner(SigningKey.generate(), 60).claims(*allowed(0)).claims
    key = b"k" * 32
    assert len(benchmark(hmac.digest, key, claims, "sha256")) == 32


@pytest.mark.parametrize("how", ["whole", "repeat"])
def test_record_seal(benchmark: Any, how: str) -> None:
    """Seal one decision record into the chain: encoded whole, or a repeat of a cached
    decision filled into its record's template."""
    head, templates, like = Head(), Templates(), audit_record(0)
    repeat = Repeat(like, "d-1", like.time, 0.5, "request-1", "")

    def seal() -> bytes:
        if how == "whole":
            return head.seal_line(repeat.to_dict())
        return templates.seal(head, repeat)

    assert benchmark(seal).endswith(b"\n")


def test_detect_signals(benchmark: Any, es: DemoIssuer) -> None:
    """The risk phase: context.risk from the detectors' last values (no I/O)."""
    from authz.config import DetectSettings
    from authz.detect.monitor import Monitor
    from authz.detect.respond import Responder
    from authz.stores.embedded import EmbeddedAgentStore
    from authz.stores.registry import StoreRegistry
    from authz.stores.windows import EmbeddedWindows

    bundle = policy_load.load(POLICIES)
    agents = EmbeddedAgentStore()
    windows = EmbeddedWindows()
    settings = DetectSettings()
    responder = Responder(
        settings=settings, windows=windows, agents=agents, grants=EmbeddedGrantStore(time.time),
        audit=NullAudit(),
    )  # fmt: skip
    monitor = Monitor(settings, windows, responder, StoreRegistry(agents))
    verifier = identity.AccessTokenVerifier(keys_for(es), rules(), time.time)
    claims = verifier.verify(es.access_token("dr-alice", ["orchestrator", "scribe"]))
    chain = delegation.read_chain(claims, 4)
    chain_agents = (bundle.agents["orchestrator"], bundle.agents["scribe"])
    risk = benchmark(monitor.signals, chain, chain_agents, claims, "0" * 64)
    assert risk.patients == 0 and risk.token_jti


def test_detect_window_record(benchmark: Any) -> None:
    """One decided check counted in the embedded windows (the background flush's work)."""
    from authz.stores.windows import EmbeddedWindows, Observation, WindowSpec

    windows = EmbeddedWindows()
    spec = WindowSpec(breadth=600, rate=60, rate_horizon=3600, probing=60, learning=86400)
    observation = Observation(
        agent="scribe", user="dr-alice", at=time.time(), entity='Patient::"p-1001"',
        token="0" * 64, habit="read Records", chain="orchestrator scribe", txn="t",
        txn_owner="dr-alice orchestrator", event="d",
    )  # fmt: skip

    # the work of `record` for one observation, without an event loop around it
    assert benchmark(windows._one, observation, spec).patients == 1
