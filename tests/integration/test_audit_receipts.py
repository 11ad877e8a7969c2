"""Receipts end to end: the upstream gets one, it verifies offline, a changed path does not."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.dev import stack as devstack
from tests.integration.conftest import (
    RECORDS,
    Stack,
    assert_deny,
    read_audit,
    request,
    run_cli,
    unique,
)

pytestmark = pytest.mark.integration

NOTES = "/patients/p-1001/notes"


def served_jwks(stack: Stack, tmp_path: Path) -> Path:
    metrics = stack.lasthop.ready["metrics_listen"]
    with urllib.request.urlopen(
        f"http://{metrics}/.well-known/lasthop-receipts.json", timeout=5
    ) as resp:
        assert resp.headers["content-type"] == "application/json"
        path = tmp_path / "jwks.json"
        path.write_bytes(resp.read())
    return path


def test_receipt_round_trip(stack: Stack, tmp_path: Path) -> None:
    user = unique("u-receipt")
    stack.grant(user)
    resp = stack.get(RECORDS + "?fields=all", stack.token(user, ["orchestrator", "scribe"]))
    assert resp.status == 200, resp.raw[:500]
    receipt = resp.upstream_saw["x-lasthop-receipt"]
    decision_id = resp.upstream_saw["x-lasthop-decision-id"]
    jwks = served_jwks(stack, tmp_path)
    assert json.loads(jwks.read_text()) == json.loads(
        (stack.audit_path.parent / "lasthop-receipts.json").read_text()
    )

    ok = run_cli(
        "receipt",
        "verify",
        receipt,
        "--jwks",
        str(jwks),
        "--method",
        "GET",
        "--path",
        RECORDS + "?fields=all",
        "--host",
        f"127.0.0.1:{stack.envoy.port}",
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    claims = json.loads(ok.stdout.split("\n", 1)[1])
    assert claims["jti"] == decision_id
    assert (claims["sub"], claims["agent"], claims["chain"]) == (
        user,
        "scribe",
        ["orchestrator", "scribe"],
    )
    assert claims["path"] == RECORDS
    record = next(r for r in read_audit(stack.audit_path) if r.get("decision_id") == decision_id)
    assert (record["decision"], record["policy_version"]) == ("allow", claims["policy_version"])

    changed = run_cli(
        "receipt",
        "verify",
        receipt,
        "--jwks",
        str(jwks),
        "--method",
        "GET",
        "--path",
        "/patients/p-1002/records",
    )
    assert changed.returncode == 1
    assert changed.stdout.startswith("INVALID: binding_mismatch: the receipt is for path")


def test_no_receipt_on_a_deny(stack: Stack) -> None:
    resp = stack.get(RECORDS, stack.token(unique("u-noreceipt"), ["scribe"]))
    assert_deny(resp, 403, "no_grant")
    assert "x-lasthop-receipt" not in resp.headers


@pytest.fixture(scope="module")
def body_envoy(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second Envoy in front of the same Lasthop that sends whole bodies to ext_authz."""
    work = tmp_path_factory.mktemp("envoy-body")
    marker = "              encode_raw_headers: true\n"
    text = devstack.ENVOY_TEMPLATE.read_text()
    assert marker in text
    template = work / "sidecar-body.yaml"
    template.write_text(
        text.replace(
            marker,
            marker
            + (
                "              with_request_body:\n"
                "                max_request_bytes: 65536\n"
                "                allow_partial_message: false\n"
                "                pack_as_bytes: true\n"
            ),
        )
    )
    envoy = devstack.Envoy(work, stack.lasthop.port, stack.upstream.port, template=template)
    try:
        yield envoy.url
    finally:
        envoy.close()


def test_receipt_binds_the_body_when_envoy_sends_it(
    stack: Stack, body_envoy: str, tmp_path: Path
) -> None:
    user = unique("u-body")
    stack.grant(user, actions=("write",))
    body = b"Visit note: BP 128/82, continue lisinopril."
    resp = request(body_envoy, NOTES, stack.token(user, ["scribe"]), method="POST", data=body)
    assert resp.status == 201, resp.raw[:500]
    receipt = resp.upstream_saw["x-lasthop-receipt"]
    sent = tmp_path / "body.txt"
    sent.write_bytes(body)
    jwks = served_jwks(stack, tmp_path)
    ok = run_cli(
        "receipt",
        "verify",
        receipt,
        "--jwks",
        str(jwks),
        "--method",
        "POST",
        "--path",
        NOTES,
        "--body",
        str(sent),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (
        json.loads(ok.stdout.split("\n", 1)[1])["body_sha256"] == hashlib.sha256(body).hexdigest()
    )
    sent.write_bytes(body.replace(b"128", b"182"))
    changed = run_cli("receipt", "verify", receipt, "--jwks", str(jwks), "--body", str(sent))
    assert changed.returncode == 1 and "binding_mismatch" in changed.stdout
