"""authz.policy.decide on the shipped bundle: allows, each forbid's reason, failing closed."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import cedarpy
import pytest

from authz import policy
from authz.errors import PolicyDenied, PolicyError
from authz.model import Agent, EntityRef
from authz.policy_load import PolicyBundle
from tests.conftest import POLICIES, PURPOSE

PATIENT = EntityRef("Patient", "p-1001")


def context(agents: tuple[str, ...] = ("scribe",), purpose: str = PURPOSE,
            grant_purpose: str | None = PURPOSE, path: str = "/patients/p-1001/records",
            method: str = "GET") -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "user": {"__entity": {"type": "User", "id": "dr-alice"}},
        "chain_depth": len(agents),
        "agents": [{"__entity": {"type": "Agent", "id": a}} for a in agents],
        "delegator": "dr-alice",
        "purpose": purpose,
        "txn": "txn-1",
        "request": {"method": method, "path": path, "host": "ehr.local"},
        "time": 1_800_000_000,
    }
    if grant_purpose is not None:
        ctx["grant"] = {"id": "g-1", "purpose": grant_purpose, "issued_by": "dr-alice",
                        "expires_at": 1_800_000_900}
    return ctx


def ask(bundle: PolicyBundle, agent: Agent | None, action: str, resource: EntityRef,
        ctx: dict[str, Any], parents: tuple[EntityRef, ...] = (PATIENT,)) -> policy.CedarOutcome:
    principal = EntityRef("Agent", agent.id) if agent else EntityRef("User", "dr-alice")
    request = policy.CedarRequest(principal=principal, action=action, resource=resource,
                                  context=ctx)
    delta = policy.request_entities(resource, parents, [agent] if agent else [])
    return policy.decide(bundle, request, delta)


def denied(bundle: PolicyBundle, agent: Agent | None, action: str, resource: EntityRef,
           ctx: dict[str, Any], parents: tuple[EntityRef, ...] = (PATIENT,)) -> PolicyDenied:
    with pytest.raises(PolicyDenied) as info:
        ask(bundle, agent, action, resource, ctx, parents)
    assert info.value.status == 403
    return info.value


# --- allows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("agent", "action", "resource", "parents", "policy_id"), [
    ("scribe", "read", EntityRef("Records", "p-1001"), (PATIENT,), "scribe-read-records"),
    ("scribe", "write", EntityRef("Notes", "p-1001"), (PATIENT,), "scribe-write-notes"),
    ("med-reconciler", "read", EntityRef("Medications", "p-1001"), (PATIENT,),
     "med-reconciler-read-medications"),
    ("billing-bot", "read", EntityRef("Claim", "c-1"), (), "billing-bot-read-claims"),
])
def test_allowed_with_a_grant(bundle: PolicyBundle, agent: str, action: str,
                              resource: EntityRef, parents: tuple[EntityRef, ...],
                              policy_id: str) -> None:
    outcome = ask(bundle, bundle.agents[agent], action, resource, context((agent,)), parents)
    assert outcome.policies == (policy_id,)


# --- denies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("agent", "action", "resource", "parents"), [
    ("scribe", "read", EntityRef("Records", "p-1001"), (PATIENT,)),
    ("scribe", "write", EntityRef("Notes", "p-1001"), (PATIENT,)),
    ("med-reconciler", "read", EntityRef("Medications", "p-1001"), (PATIENT,)),
    ("billing-bot", "read", EntityRef("Claim", "c-1"), ()),
])
def test_no_grant_in_context_is_policy_denied(bundle: PolicyBundle, agent: str, action: str,
                                              resource: EntityRef,
                                              parents: tuple[EntityRef, ...]) -> None:
    err = denied(bundle, bundle.agents[agent], action, resource,
                 context((agent,), grant_purpose=None), parents)
    assert err.reason == "policy_denied"
    assert err.policies == ()


@pytest.mark.parametrize(("agent", "action", "resource"), [
    ("med-reconciler", "read", EntityRef("Records", "p-1001")),
    ("scribe", "read", EntityRef("Medications", "p-1001")),
    ("orchestrator", "read", EntityRef("Records", "p-1001")),
    ("orchestrator", "write", EntityRef("Notes", "p-1001")),
])
def test_agent_outside_its_job_is_policy_denied(bundle: PolicyBundle, agent: str, action: str,
                                                resource: EntityRef) -> None:
    err = denied(bundle, bundle.agents[agent], action, resource, context((agent,)))
    assert err.reason == "policy_denied"


def test_user_acting_directly_has_no_permit(bundle: PolicyBundle) -> None:
    err = denied(bundle, None, "read", EntityRef("Records", "p-1001"), context(()))
    assert err.reason == "policy_denied"


@pytest.mark.parametrize(("action", "resource"), [
    ("read", EntityRef("Records", "p-1001")),
    ("read", EntityRef("Medications", "p-1001")),
    ("write", EntityRef("Notes", "p-1001")),
])
def test_billing_bot_never_clinical(bundle: PolicyBundle, action: str,
                                    resource: EntityRef) -> None:
    err = denied(bundle, bundle.agents["billing-bot"], action, resource,
                 context(("billing-bot",)))
    assert err.reason == "billing_not_clinical"
    assert "billing-never-clinical" in err.detail
    assert "billing-never-clinical" in err.policies


@pytest.mark.parametrize(("agent", "action", "resource", "parents"), [
    ("scribe", "read", EntityRef("Records", "p-1001"), (PATIENT,)),
    ("scribe", "write", EntityRef("Notes", "p-1001"), (PATIENT,)),
    ("billing-bot", "read", EntityRef("Claim", "c-1"), ()),
])
def test_purpose_mismatch(bundle: PolicyBundle, agent: str, action: str, resource: EntityRef,
                          parents: tuple[EntityRef, ...]) -> None:
    err = denied(bundle, bundle.agents[agent], action, resource,
                 context((agent,), purpose=PURPOSE, grant_purpose="billing"), parents)
    assert err.reason == "purpose_mismatch"
    assert err.policies == ("grant-purpose-must-match",)


@pytest.mark.parametrize("risk", [70, 80, 100])
def test_high_risk_agent_never_writes(bundle: PolicyBundle, risk: int) -> None:
    risky = Agent(id="scribe", owner="dr-alice", risk=risk, status="active")
    err = denied(bundle, risky, "write", EntityRef("Notes", "p-1001"), context())
    assert err.reason == "risk_too_high"
    assert err.policies == ("high-risk-agents-never-write",)


def test_high_risk_agent_may_still_read(bundle: PolicyBundle) -> None:
    risky = Agent(id="scribe", owner="dr-alice", risk=80, status="active")
    outcome = ask(bundle, risky, "read", EntityRef("Records", "p-1001"), context())
    assert outcome.policies == ("scribe-read-records",)


def test_risk_just_below_the_line_writes(bundle: PolicyBundle) -> None:
    agent = Agent(id="scribe", owner="dr-alice", risk=69, status="active")
    outcome = ask(bundle, agent, "write", EntityRef("Notes", "p-1001"), context())
    assert outcome.policies == ("scribe-write-notes",)


def test_unseeded_high_risk_agent_in_the_delta(bundle: PolicyBundle) -> None:
    """An agent only the per-request delta knows is still held to the forbids."""
    newcomer = Agent(id="ghostwriter", owner="dr-alice", risk=80, status="active")
    err = denied(bundle, newcomer, "write", EntityRef("Notes", "p-1001"),
                 context(("ghostwriter",)))
    assert err.reason == "risk_too_high"


# --- fail closed ------------------------------------------------------------------------------

ERRORING_FORBID = (
    '@id("erroring-forbid")\n@reason("should_not_be_skipped")\n'
    'forbid (principal, action, resource)\n'
    'when { context.request.path like "*" && principal.nosuch == 1 };\n'
)


@pytest.fixture
def erroring_bundle(bundle: PolicyBundle) -> PolicyBundle:
    shipped = "\n".join(p.read_text() for p in sorted(POLICIES.glob("*.cedar")))
    policy_set = cedarpy.PolicySet.from_str(shipped + "\n" + ERRORING_FORBID)
    assert len(policy_set) == len(bundle.policies) + 1
    return dataclasses.replace(bundle, policy_set=policy_set)


def test_cedar_skips_the_erroring_forbid(bundle: PolicyBundle,
                                         erroring_bundle: PolicyBundle) -> None:
    """Precondition for the next test: cedar on its own says Allow, with an error."""
    scribe = bundle.agents["scribe"]
    resource = EntityRef("Records", "p-1001")
    request = policy.CedarRequest(EntityRef("Agent", "scribe"), "read", resource, context())
    entities = bundle.entities.with_added_json_str(
        policy.request_entities(resource, (PATIENT,), [scribe]))
    result = cedarpy.is_authorized(request.as_cedar(), erroring_bundle.policy_set, entities)
    assert result.decision == cedarpy.Decision.Allow
    assert result.diagnostics.errors
    assert "nosuch" in result.diagnostics.errors[0]


def test_allow_with_an_erroring_forbid_is_policy_error(bundle: PolicyBundle,
                                                      erroring_bundle: PolicyBundle) -> None:
    with pytest.raises(PolicyError) as info:
        ask(erroring_bundle, bundle.agents["scribe"], "read", EntityRef("Records", "p-1001"),
            context())
    assert info.value.reason == "policy_error"
    assert info.value.status == 503
    assert "nosuch" in info.value.detail


def test_deny_with_an_erroring_forbid_is_still_not_an_allow(
        bundle: PolicyBundle, erroring_bundle: PolicyBundle) -> None:
    with pytest.raises((PolicyError, PolicyDenied)):
        ask(erroring_bundle, bundle.agents["scribe"], "read", EntityRef("Records", "p-1001"),
            context(grant_purpose=None))


def test_erroring_policy_is_named_by_its_id(bundle: PolicyBundle) -> None:
    text = (POLICIES / "high-risk-agents-never-write.cedar").read_text().replace(
        "principal.risk", "principal.nosuch")
    shipped = [p for p in sorted(POLICIES.glob("*.cedar"))
               if p.name != "high-risk-agents-never-write.cedar"]
    # keep the positional ids of the shipped bundle: the broken policy stays policy3
    files = [p.read_text() for p in shipped[:3]] + [text] + [p.read_text() for p in shipped[3:]]
    broken = dataclasses.replace(bundle,
                                 policy_set=cedarpy.PolicySet.from_str("\n".join(files)))
    with pytest.raises(PolicyError) as info:
        ask(broken, bundle.agents["scribe"], "write", EntityRef("Notes", "p-1001"), context())
    assert "high-risk-agents-never-write" in info.value.detail
    assert "`policy3`" not in info.value.detail


@pytest.mark.parametrize("bad_context", [
    {"x": {"__extn": {"fn": "nope", "arg": "1"}}},
    {"x": {"__entity": {"type": "", "id": "a"}}},
    {"x": 2**70},
    {"x": {"__expr": "1 +"}},
], ids=["unknown-extension", "bad-entity-escape", "huge-int", "expr-escape"])
def test_invalid_context_never_returns(bundle: PolicyBundle, bad_context: dict[str, Any]) -> None:
    ctx = {**context(), **bad_context}
    with pytest.raises((PolicyError, PolicyDenied)) as info:
        ask(bundle, bundle.agents["scribe"], "read", EntityRef("Records", "p-1001"), ctx)
    assert info.value.status in (403, 503)


def test_no_decision_is_policy_error(bundle: PolicyBundle) -> None:
    ctx = {**context(), "x": {"__extn": {"fn": "nope", "arg": "1"}}}
    with pytest.raises(PolicyError) as info:
        ask(bundle, bundle.agents["scribe"], "read", EntityRef("Records", "p-1001"), ctx)
    assert info.value.reason == "policy_error"


@pytest.mark.parametrize("delta", [
    "not json",
    json.dumps({"uid": {}}),
    json.dumps([{"uid": {"type": "Agent"}, "attrs": {}, "parents": []}]),
])
def test_rejected_request_entities_are_policy_error(bundle: PolicyBundle, delta: str) -> None:
    request = policy.CedarRequest(EntityRef("Agent", "scribe"), "read",
                                  EntityRef("Records", "p-1001"), context())
    with pytest.raises(PolicyError) as info:
        policy.decide(bundle, request, delta)
    assert info.value.reason == "policy_error"


def test_ill_typed_agent_in_the_delta_cannot_write(bundle: PolicyBundle) -> None:
    """`principal.risk >= 70` errors on a string risk; the skipped forbid must not allow."""
    delta = json.dumps([
        {"uid": {"type": "Agent", "id": "scribe"}, "attrs": {"risk": "high"}, "parents": []},
        {"uid": {"type": "Notes", "id": "p-1001"}, "attrs": {},
         "parents": [{"type": "Patient", "id": "p-1001"}]},
    ])
    request = policy.CedarRequest(EntityRef("Agent", "scribe"), "write",
                                  EntityRef("Notes", "p-1001"), context())
    with pytest.raises(PolicyError):
        policy.decide(bundle, request, delta)


# --- the per-request delta --------------------------------------------------------------------


def test_request_entities_shape() -> None:
    agent = Agent(id="scribe", owner="dr-alice", risk=20, status="active")
    delta = json.loads(policy.request_entities(EntityRef("Records", "p-1"),
                                               (EntityRef("Patient", "p-1"),), [agent]))
    assert delta == [
        {"uid": {"type": "Agent", "id": "scribe"},
         "attrs": {"owner": {"__entity": {"type": "User", "id": "dr-alice"}}, "risk": 20,
                   "status": "active"},
         "parents": []},
        {"uid": {"type": "Records", "id": "p-1"}, "attrs": {},
         "parents": [{"type": "Patient", "id": "p-1"}]},
        {"uid": {"type": "Patient", "id": "p-1"}, "attrs": {}, "parents": []},
    ]
