"""Every allow and deny reason, through real Envoy to real Lasthop backed by real Redis."""

from __future__ import annotations

import time

import pytest

from authz.dev.tokens import DemoIssuer
from tests.integration.conftest import (
    PURPOSE,
    RECORDS,
    Stack,
    assert_deny,
    raw_request,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_allowed_read_with_grant_echoes_identity_headers(stack: Stack) -> None:
    user = unique("u-allow")
    txn = f"txn-{user}"
    stack.grant(user)
    resp = stack.get(RECORDS, stack.token(user, ["scribe"], txn=txn))
    assert resp.status == 200, resp.raw[:500]
    assert resp.body["patient"] == "p-1001"
    seen = resp.upstream_saw
    assert seen["x-lasthop-user"] == user
    assert seen["x-lasthop-agent"] == "scribe"
    assert seen["x-lasthop-chain"] == f"{user},scribe"
    assert seen["x-lasthop-purpose"] == PURPOSE
    assert seen["x-lasthop-txn"] == txn
    decision_id = seen["x-lasthop-decision-id"]
    assert len(decision_id) == 32 and int(decision_id, 16) >= 0


def test_no_grant(stack: Stack) -> None:
    user = unique("u-nogrant")
    assert_deny(stack.get(RECORDS, stack.token(user, ["scribe"])), 403, "no_grant")


def test_grant_for_another_user_does_not_cover(stack: Stack) -> None:
    owner, other = unique("u-owner"), unique("u-other")
    stack.grant(owner)
    assert stack.get(RECORDS, stack.token(owner, ["scribe"])).status == 200
    assert_deny(stack.get(RECORDS, stack.token(other, ["scribe"])), 403, "no_grant")


def test_grant_for_another_patient_does_not_cover(stack: Stack) -> None:
    user = unique("u-patient")
    stack.grant(user, resources=('Patient::"p-1002"',))
    token = stack.token(user, ["scribe"])
    assert stack.get("/patients/p-1002/records", token).status == 200
    assert_deny(stack.get(RECORDS, token), 403, "no_grant")


def test_billing_bot_never_reads_clinical_records(stack: Stack) -> None:
    user = unique("u-bill")
    stack.grant(user, "billing-bot", purpose="billing")
    token = stack.token(user, ["billing-bot"], purpose="billing")
    assert_deny(stack.get(RECORDS, token), 403, "billing_not_clinical")


def test_billing_bot_reads_a_claim_with_a_grant(stack: Stack) -> None:
    user = unique("u-claim")
    token = stack.token(user, ["billing-bot"], purpose="billing")
    assert_deny(stack.get("/claims/c-77", token), 403, "no_grant")
    stack.grant(user, "billing-bot", resources=('Claim::"c-77"',), purpose="billing")
    resp = stack.get("/claims/c-77", token)
    assert resp.status == 200, resp.raw[:500]
    assert resp.upstream_saw["x-lasthop-agent"] == "billing-bot"


def test_chain_orchestrator_to_scribe_allowed(stack: Stack) -> None:
    user = unique("u-chain")
    stack.grant(user, "scribe")
    resp = stack.get(RECORDS, stack.token(user, ["orchestrator", "scribe"]))
    assert resp.status == 200, resp.raw[:500]
    assert resp.upstream_saw["x-lasthop-chain"] == f"{user},orchestrator,scribe"
    assert resp.upstream_saw["x-lasthop-agent"] == "scribe"
    assert resp.upstream_saw["x-lasthop-user"] == user


def test_grant_does_not_transfer_along_the_chain(stack: Stack) -> None:
    user = unique("u-xfer")
    stack.grant(user, "orchestrator")  # the delegator's grant, not the current actor's
    resp = stack.get(RECORDS, stack.token(user, ["orchestrator", "scribe"]))
    assert_deny(resp, 403, "no_grant")


def test_purpose_mismatch(stack: Stack) -> None:
    user = unique("u-purpose")
    stack.grant(user, purpose="research")
    assert_deny(stack.get(RECORDS, stack.token(user, ["scribe"])), 403, "purpose_mismatch")


def test_write_note_needs_write_action(stack: Stack) -> None:
    user = unique("u-note")
    token = stack.token(user, ["scribe"])
    stack.grant(user, actions=("read",))
    resp = stack.get("/patients/p-1001/notes", token, method="POST", data=b"note")
    assert_deny(resp, 403, "no_grant")
    stack.grant(user, actions=("write",))
    resp = stack.get("/patients/p-1001/notes", token, method="POST", data=b"visit note")
    assert resp.status == 201, resp.raw[:500]
    assert resp.body["note_chars"] == len("visit note")


def test_expired_grant_is_refused(stack: Stack) -> None:
    user = unique("u-expire")
    issued = stack.grant(user, ttl=1)
    token = stack.token(user, ["scribe"])
    # Wait past the grant's absolute expiry (at most ~1.5 s), not a fixed sleep.
    assert wait_until(lambda: time.time() > issued.expires_at + 0.5, timeout=5.0)
    resp = stack.get(RECORDS, token)
    assert resp.status != 200, "an expired grant allowed a read"
    assert resp.status == 403, resp.raw[:500]
    assert resp.reason in ("grant_expired", "no_grant"), resp.body
    assert_deny(resp, 403, resp.reason)


def test_exhausted_grant(stack: Stack) -> None:
    user = unique("u-uses")
    issued = stack.grant(user, max_uses=2)
    token = stack.token(user, ["scribe"])
    assert stack.get(RECORDS, token).status == 200
    assert stack.get(RECORDS, token).status == 200
    assert_deny(stack.get(RECORDS, token), 403, "grant_exhausted")
    assert_deny(stack.get(RECORDS, token), 403, "grant_exhausted")
    assert stack.admin.get(issued.id).uses >= 2


def test_revoked_grant(stack: Stack) -> None:
    user = unique("u-revoke")
    issued = stack.grant(user)
    token = stack.token(user, ["scribe"])
    assert stack.get(RECORDS, token).status == 200
    stack.admin.revoke(issued.id)
    assert_deny(stack.get(RECORDS, token), 403, "no_grant")


@pytest.mark.parametrize(
    ("agents", "extra", "reason"),
    [
        pytest.param(["chart-exporter"], {}, "agent_suspended", id="agent_suspended"),
        pytest.param(["ghost-agent"], {}, "agent_unregistered", id="agent_unregistered"),
        pytest.param(
            ["orchestrator", "scribe"],
            {"client_id": "billing-bot"},
            "impersonation",
            id="impersonation-client-not-actor",
        ),
        pytest.param([], {"client_id": "scribe"}, "impersonation", id="impersonation-no-act"),
        pytest.param(
            ["orchestrator", "med-reconciler", "billing-bot", "x-agent", "scribe"],
            {},
            "chain_too_deep",
            id="chain_too_deep",
        ),
        pytest.param(
            ["scribe", "orchestrator", "scribe"], {}, "delegation_cycle", id="delegation_cycle"
        ),
    ],
)
def test_chain_and_registry_denials(
    stack: Stack, agents: list[str], extra: dict[str, str], reason: str
) -> None:
    user = unique("u-chainrule")
    # Grants that would allow, so only the chain or registry rule can refuse.
    stack.grant(user, "scribe")
    stack.grant(user, "billing-bot", purpose=PURPOSE)
    resp = stack.get(RECORDS, stack.token(user, agents, **extra))
    assert_deny(resp, 403, reason)


def test_suspended_agent_in_the_middle_of_a_chain(stack: Stack) -> None:
    user = unique("u-midsusp")
    stack.grant(user, "scribe")
    resp = stack.get(RECORDS, stack.token(user, ["chart-exporter", "scribe"]))
    assert_deny(resp, 403, "agent_suspended")


def _assert_401(
    resp_status: int, headers: dict[str, str], reason: str, body: dict[str, object]
) -> None:
    assert resp_status == 401, body
    assert body.get("decision") == "deny" and body.get("reason") == reason, body
    assert isinstance(body.get("decision_id"), str) and body["decision_id"]
    assert headers.get("www-authenticate", "").startswith('Bearer error="invalid_token"'), headers


def test_missing_token(stack: Stack) -> None:
    resp = stack.get(RECORDS)
    _assert_401(resp.status, resp.headers, "missing_token", resp.body)


def test_bad_signature(stack: Stack) -> None:
    forger = DemoIssuer("ES256", kid=stack.issuer.kid)  # same kid, another key
    user = unique("u-forged")
    stack.grant(user)
    resp = stack.get(RECORDS, forger.access_token(user, ["scribe"], purpose=PURPOSE))
    _assert_401(resp.status, resp.headers, "bad_signature", resp.body)


def test_no_route(stack: Stack) -> None:
    user = unique("u-noroute")
    stack.grant(user)
    assert_deny(stack.get("/admin", stack.token(user, ["scribe"])), 403, "no_route")


@pytest.mark.parametrize(
    "path",
    [
        "/patients/p-1001/../p-1002/records",
        "/patients//records",
        "/patients/p-1001%2Frecords",
        "/patients/%2e%2e/records",
        "/patients/p-1001/./records",
        "/patients/p-1001%2frecords",
        "/patients/p-1002/records/../../p-1001/records",
    ],
)
def test_invalid_path_is_refused_never_normalised(stack: Stack, path: str) -> None:
    user = unique("u-path")
    # Grants on both patients: any normalisation into a real route would be a 200.
    stack.grant(user, resources=('Patient::"p-1001"', 'Patient::"p-1002"'))
    token = stack.token(user, ["scribe"])
    resp = raw_request(stack.envoy.port, path, token)
    assert resp.status != 200, f"{path} reached the upstream: {resp.raw[:300]!r}"
    assert_deny(resp, 403, "invalid_path")


def test_query_string_does_not_change_matching(stack: Stack) -> None:
    user = unique("u-query")
    token = stack.token(user, ["scribe"])
    assert_deny(stack.get(f"{RECORDS}?x=1", token), 403, "no_grant")
    stack.grant(user)
    resp = stack.get(f"{RECORDS}?x=1", token)
    assert resp.status == 200, resp.raw[:500]
    assert resp.body["patient"] == "p-1001"
    assert_deny(stack.get("/admin?path=/patients/p-1001/records", token), 403, "no_route")
