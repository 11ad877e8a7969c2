"""Policy slicing: a principal's slice decides exactly as the whole set does."""

from __future__ import annotations

import itertools

import cedarpy
import pytest

from authz.model import Agent, EntityRef, Risk
from authz.policy import evaluate as policy
from authz.policy import load as policy_load
from authz.policy.load import PolicyBundle
from tests.conftest import POLICIES

RECORDS, PATIENT = EntityRef("Records", "p-1001"), EntityRef("Patient", "p-1001")
PER_AGENT = """
@id("pinned-{n}")
permit (principal == Agent::"{n}", action == Action::"read", resource is Records)
when {{ context has grant }};
"""


def scaled(bundle: PolicyBundle, names: list[str]) -> PolicyBundle:
    shipped = "\n".join(p.read_text() for p in sorted(POLICIES.glob("*.cedar")))
    return policy_load.with_enforced_text(
        bundle, shipped + "".join(PER_AGENT.format(n=n) for n in names)
    )


def context(agent: str, grant: bool) -> dict[str, object]:
    ctx: dict[str, object] = {
        "user": {"__entity": {"type": "User", "id": "dr-alice"}},
        "chain_depth": 1,
        "agents": [{"__entity": {"type": "Agent", "id": agent}}],
        "chain": {"max_risk": 20, "risk_tier": "low", "purpose_allowed": True},
        "delegator": "dr-alice",
        "purpose": "clinical-documentation",
        "txn": "t",
        "request": {"method": "GET", "path": "/patients/p-1001/records", "host": "h"},
        "time": 0,
        "risk": Risk().as_context(),
    }
    if grant:
        ctx["grant"] = {
            "id": "g",
            "purpose": "clinical-documentation",
            "issued_by": "x",
            "expires_at": 2**40,
        }
    return ctx


def test_a_slice_holds_the_general_policies_and_only_its_own(bundle: PolicyBundle) -> None:
    big = scaled(bundle, [f"a-{i}" for i in range(200)])
    assert len(big.policy_set) == len(bundle.policies) + 200
    sliced = big.slices.for_principal("Agent", "a-7")
    # the shipped policies not pinned to another agent, plus a-7's own
    pinned_elsewhere = {
        "scribe-read-records",
        "scribe-write-notes",
        "billing-bot-read-claims",
        "med-reconciler-read-medications",
        "billing-never-clinical",
    }
    assert len(sliced) == len(bundle.policies) - len(pinned_elsewhere) + 1
    assert big.slices.for_principal("Agent", "a-7") is sliced  # built once


def test_no_pinned_policies_uses_the_whole_set() -> None:
    text = '@id("p") permit (principal, action, resource);'
    base = policy_load.load(POLICIES)
    plain = policy_load.with_enforced_text(base, text)
    assert plain.slices.for_principal("Agent", "anyone") is plain.policy_set


@pytest.mark.parametrize(
    ("agent", "grant"),
    list(itertools.product(["a-3", "a-150", "scribe", "billing-bot", "nobody"], [True, False])),
)
def test_slice_decides_as_the_whole_set(bundle: PolicyBundle, agent: str, grant: bool) -> None:
    big = scaled(bundle, [f"a-{i}" for i in range(200)])
    who = Agent(agent, "dr-alice", 20, "active", allowed_purposes=("clinical-documentation",))
    request = policy.CedarRequest(EntityRef("Agent", agent), "read", RECORDS, context(agent, grant))
    delta = policy.request_entities(RECORDS, (PATIENT,), [who])
    entities = big.entities.with_added_json_str(delta)
    whole = cedarpy.is_authorized(request.as_cedar(), big.policy_set, entities)
    sliced = cedarpy.is_authorized(
        request.as_cedar(), big.slices.for_principal("Agent", agent), entities
    )
    assert sliced.decision == whole.decision
    assert sorted(sliced.diagnostics.reasons) == sorted(whole.diagnostics.reasons)
    outcome_allowed = policy.PolicyEngine(big).evaluate(request, delta).allowed
    assert outcome_allowed == (whole.decision == cedarpy.Decision.Allow)
