"""policy.evaluate.decide on the shipped bundle: allows, each forbid's reason, failing closed."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import cedarpy
import pytest

from authz.errors import PolicyDenied, PolicyError
from authz.model import DEFAULT_TIERS, Agent, EntityRef, Risk, RiskTiers
from authz.policy import evaluate as policy
from authz.policy import load as policy_load
from authz.policy.load import PolicyBundle
from tests.conftest import POLICIES, PURPOSE, SCHEMA

PATIENT = EntityRef("Patient", "p-1001")
RECORDS = EntityRef("Records", "p-1001")
NOTES = EntityRef("Notes", "p-1001")
MEDICATIONS = EntityRef("Medications", "p-1001")
CLAIM = EntityRef("Claim", "c-1")

# The purpose each seeded agent acts for by default: the first of its allowed_purposes.
OWN_PURPOSE = {
    "scribe": "clinical-documentation",
    "med-reconciler": "medication-reconciliation",
    "billing-bot": "billing",
    "orchestrator": "clinical-documentation",
    "dictation-vendor": "clinical-documentation",
    "chart-exporter": "billing",
}
SAME = "<the request's purpose>"  # grant_purpose default: a grant for the purpose acted for


def context(
    agents: tuple[str, ...] = ("scribe",),
    purpose: str | None = None,
    grant_purpose: str | None = SAME,
    path: str = "/patients/p-1001/records",
    method: str = "GET",
) -> dict[str, Any]:
    """A request context; by default the actor acts for its own purpose, under a grant for it."""
    if purpose is None:
        purpose = OWN_PURPOSE.get(agents[-1], PURPOSE) if agents else PURPOSE
    if grant_purpose == SAME:
        grant_purpose = purpose
    ctx: dict[str, Any] = {
        "user": {"__entity": {"type": "User", "id": "dr-alice"}},
        "chain_depth": len(agents),
        "agents": [{"__entity": {"type": "Agent", "id": a}} for a in agents],
        "chain": {"max_risk": 0, "risk_tier": "low", "purpose_allowed": True},  # `ask` sets it
        "delegator": "dr-alice",
        "purpose": purpose,
        "txn": "txn-1",
        "request": {"method": method, "path": path, "host": "ehr.local"},
        "time": 1_800_000_000,
        "risk": Risk().as_context(),
    }
    if grant_purpose is not None:
        ctx["grant"] = {
            "id": "g-1",
            "purpose": grant_purpose,
            "issued_by": "dr-alice",
            "expires_at": 1_800_000_900,
        }
    return ctx


def ask(
    bundle: PolicyBundle,
    agent: Agent | None,
    action: str,
    resource: EntityRef,
    ctx: dict[str, Any],
    parents: tuple[EntityRef, ...] = (PATIENT,),
    tiers: RiskTiers = DEFAULT_TIERS,
) -> policy.CedarOutcome:
    principal = EntityRef("Agent", agent.id) if agent else EntityRef("User", "dr-alice")
    hops = [agent] if agent else []
    ctx = {**ctx, "chain": policy.chain_context(hops, ctx["purpose"], tiers)}  # as the server
    request = policy.CedarRequest(
        principal=principal, action=action, resource=resource, context=ctx
    )
    delta = policy.request_entities(resource, parents, [agent] if agent else [], tiers)
    return policy.PolicyEngine(bundle).decide(request, delta)


def denied(
    bundle: PolicyBundle,
    agent: Agent | None,
    action: str,
    resource: EntityRef,
    ctx: dict[str, Any],
    parents: tuple[EntityRef, ...] = (PATIENT,),
    tiers: RiskTiers = DEFAULT_TIERS,
) -> PolicyDenied:
    with pytest.raises(PolicyDenied) as info:
        ask(bundle, agent, action, resource, ctx, parents, tiers)
    assert info.value.status == 403
    return info.value


def test_own_purposes_match_the_seeds(bundle: PolicyBundle) -> None:
    """The helper's default purposes are the seeded agents' own."""
    assert set(OWN_PURPOSE) == set(bundle.agents)
    for name, purpose in OWN_PURPOSE.items():
        assert bundle.agents[name].allowed_purposes[0] == purpose


# --- allows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "action", "resource", "parents", "policy_id"),
    [
        ("scribe", "read", RECORDS, (PATIENT,), "scribe-read-records"),
        ("scribe", "write", NOTES, (PATIENT,), "scribe-write-notes"),
        ("med-reconciler", "read", MEDICATIONS, (PATIENT,), "med-reconciler-read-medications"),
        ("billing-bot", "read", CLAIM, (), "billing-bot-read-claims"),
    ],
)
def test_allowed_with_a_grant(
    bundle: PolicyBundle,
    agent: str,
    action: str,
    resource: EntityRef,
    parents: tuple[EntityRef, ...],
    policy_id: str,
) -> None:
    outcome = ask(bundle, bundle.agents[agent], action, resource, context((agent,)), parents)
    assert outcome.allowed
    assert outcome.reason == "allowed"
    assert outcome.policies == (policy_id,)


@pytest.mark.parametrize("purpose", ["clinical-documentation", "medication-reconciliation"])
def test_an_agent_with_two_purposes_may_act_for_either(bundle: PolicyBundle, purpose: str) -> None:
    """The orchestrator is registered for both: it has no permit of its own, but neither
    purpose is refused as not allowed."""
    err = denied(
        bundle,
        bundle.agents["orchestrator"],
        "read",
        RECORDS,
        context(("orchestrator",), purpose=purpose),
    )
    assert err.reason == "policy_denied"
    assert err.policies == ()


# --- denies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "action", "resource", "parents"),
    [
        ("scribe", "read", RECORDS, (PATIENT,)),
        ("scribe", "write", NOTES, (PATIENT,)),
        ("med-reconciler", "read", MEDICATIONS, (PATIENT,)),
        ("billing-bot", "read", CLAIM, ()),
    ],
)
def test_no_grant_in_context_is_policy_denied(
    bundle: PolicyBundle,
    agent: str,
    action: str,
    resource: EntityRef,
    parents: tuple[EntityRef, ...],
) -> None:
    err = denied(
        bundle,
        bundle.agents[agent],
        action,
        resource,
        context((agent,), grant_purpose=None),
        parents,
    )
    assert err.reason == "policy_denied"
    assert err.policies == ()


@pytest.mark.parametrize(
    ("agent", "action", "resource"),
    [
        ("med-reconciler", "read", RECORDS),
        ("scribe", "read", MEDICATIONS),
        ("orchestrator", "read", RECORDS),
        ("orchestrator", "write", NOTES),
    ],
)
def test_agent_outside_its_job_is_policy_denied(
    bundle: PolicyBundle, agent: str, action: str, resource: EntityRef
) -> None:
    """Each acts for its own purpose under a matching grant: only the missing permit denies."""
    err = denied(bundle, bundle.agents[agent], action, resource, context((agent,)))
    assert err.reason == "policy_denied"
    assert err.policies == ()


@pytest.mark.parametrize("purpose", [PURPOSE, "research", "billing"])
def test_user_acting_directly_has_no_permit(bundle: PolicyBundle, purpose: str) -> None:
    """A User principal is not held to the agent purpose forbid: it simply has no permit."""
    err = denied(bundle, None, "read", RECORDS, context((), purpose=purpose))
    assert err.reason == "policy_denied"
    assert err.policies == ()


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("read", RECORDS),
        ("read", MEDICATIONS),
        ("write", NOTES),
    ],
)
def test_billing_bot_never_clinical(bundle: PolicyBundle, action: str, resource: EntityRef) -> None:
    """Under its own purpose and a matching grant, so only billing-never-clinical holds."""
    err = denied(bundle, bundle.agents["billing-bot"], action, resource, context(("billing-bot",)))
    assert err.reason == "billing_not_clinical"
    assert "billing-never-clinical" in err.detail
    assert err.policies == ("billing-never-clinical",)


@pytest.mark.parametrize(
    ("agent", "action", "resource", "parents"),
    [
        ("scribe", "read", RECORDS, (PATIENT,)),
        ("scribe", "write", NOTES, (PATIENT,)),
        ("med-reconciler", "read", MEDICATIONS, (PATIENT,)),
        ("billing-bot", "read", CLAIM, ()),
    ],
)
def test_purpose_mismatch(
    bundle: PolicyBundle,
    agent: str,
    action: str,
    resource: EntityRef,
    parents: tuple[EntityRef, ...],
) -> None:
    """The agent acts for a purpose it is allowed, under a grant issued for another."""
    other = "billing" if OWN_PURPOSE[agent] != "billing" else PURPOSE
    err = denied(
        bundle,
        bundle.agents[agent],
        action,
        resource,
        context((agent,), grant_purpose=other),
        parents,
    )
    assert err.reason == "purpose_mismatch"
    assert err.policies == ("grant-purpose-must-match",)


# --- purpose_not_allowed: the agent's registered purposes -------------------------------------


@pytest.mark.parametrize(
    ("agent", "action", "resource", "parents", "permit", "purpose"),
    [
        ("scribe", "read", RECORDS, (PATIENT,), "scribe-read-records", "research"),
        ("scribe", "read", RECORDS, (PATIENT,), "scribe-read-records", "medication-reconciliation"),
        ("scribe", "write", NOTES, (PATIENT,), "scribe-write-notes", "billing"),
        (
            "med-reconciler",
            "read",
            MEDICATIONS,
            (PATIENT,),
            "med-reconciler-read-medications",
            "clinical-documentation",
        ),
        ("billing-bot", "read", CLAIM, (), "billing-bot-read-claims", "clinical-documentation"),
        ("orchestrator", "read", RECORDS, (PATIENT,), None, "billing"),
    ],
)
def test_purpose_outside_allowed_purposes_is_denied_even_with_a_matching_grant(
    bundle: PolicyBundle,
    agent: str,
    action: str,
    resource: EntityRef,
    parents: tuple[EntityRef, ...],
    permit: str | None,
    purpose: str,
) -> None:
    seeded = bundle.agents[agent]
    assert purpose not in seeded.allowed_purposes
    # the same request, for the agent's own purpose: the permit (if any) holds
    if permit is not None:
        assert ask(bundle, seeded, action, resource, context((agent,)), parents).policies == (
            permit,
        )
    # for a purpose it is not registered for, with a grant issued for exactly that purpose
    err = denied(
        bundle,
        seeded,
        action,
        resource,
        context((agent,), purpose=purpose, grant_purpose=purpose),
        parents,
    )
    assert err.reason == "purpose_not_allowed"
    assert err.policies == ("agent-purpose-must-be-allowed",)
    assert "agent-purpose-must-be-allowed" in err.detail


@pytest.mark.parametrize(
    "purpose", ["Clinical-Documentation", "clinical-documentation ", "clinical", ""]
)
def test_allowed_purposes_match_exactly(bundle: PolicyBundle, purpose: str) -> None:
    err = denied(
        bundle,
        bundle.agents["scribe"],
        "read",
        RECORDS,
        context(purpose=purpose, grant_purpose=purpose),
    )
    assert err.reason == "purpose_not_allowed"


def test_allowed_purposes_come_from_the_agent_on_each_decision(bundle: PolicyBundle) -> None:
    """The registry's agent, not the seed, is what Cedar sees."""
    scribe = bundle.agents["scribe"]
    retasked = dataclasses.replace(scribe, allowed_purposes=("research",))
    outcome = ask(bundle, retasked, "read", RECORDS, context(purpose="research"))
    assert outcome.policies == ("scribe-read-records",)
    err = denied(bundle, retasked, "read", RECORDS, context(purpose=PURPOSE))
    assert err.reason == "purpose_not_allowed"


def test_an_agent_with_no_allowed_purposes_acts_for_none(bundle: PolicyBundle) -> None:
    unpurposed = dataclasses.replace(bundle.agents["scribe"], allowed_purposes=())
    for purpose in (PURPOSE, "research"):
        err = denied(bundle, unpurposed, "read", RECORDS, context(purpose=purpose))
        assert err.reason == "purpose_not_allowed"
        assert err.policies == ("agent-purpose-must-be-allowed",)


# --- risk tiers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "expected"),
    [
        (RiskTiers(), {0: "low", 29: "low", 30: "medium", 69: "medium", 70: "high", 100: "high"}),
        (
            RiskTiers(medium=10, high=50),
            {0: "low", 9: "low", 10: "medium", 49: "medium", 50: "high", 60: "high"},
        ),
    ],
)
def test_risk_tiers(tiers: RiskTiers, expected: dict[int, str]) -> None:
    assert {risk: tiers.of(risk) for risk in expected} == expected


@pytest.mark.parametrize("risk", [70, 80, 100])
def test_high_risk_agent_never_writes(bundle: PolicyBundle, risk: int) -> None:
    risky = dataclasses.replace(bundle.agents["scribe"], risk=risk)
    assert DEFAULT_TIERS.of(risk) == "high"
    err = denied(bundle, risky, "write", NOTES, context())
    assert err.reason == "risk_too_high"
    assert err.policies == ("high-risk-agents-never-write",)


def test_seeded_high_risk_agent_never_writes(bundle: PolicyBundle) -> None:
    """dictation-vendor: risk 75, active, acting for its own purpose under a write grant."""
    vendor = bundle.agents["dictation-vendor"]
    assert (vendor.risk, vendor.active) == (75, True)
    err = denied(bundle, vendor, "write", NOTES, context(("dictation-vendor",)))
    assert err.reason == "risk_too_high"
    assert err.policies == ("high-risk-agents-never-write",)


def test_high_risk_agent_may_still_read(bundle: PolicyBundle) -> None:
    risky = dataclasses.replace(bundle.agents["scribe"], risk=80)
    outcome = ask(bundle, risky, "read", RECORDS, context())
    assert outcome.policies == ("scribe-read-records",)


@pytest.mark.parametrize("risk", [0, 30, 69])
def test_risk_below_the_high_tier_writes(bundle: PolicyBundle, risk: int) -> None:
    agent = dataclasses.replace(bundle.agents["scribe"], risk=risk)
    assert DEFAULT_TIERS.of(risk) != "high"
    outcome = ask(bundle, agent, "write", NOTES, context())
    assert outcome.policies == ("scribe-write-notes",)


def test_custom_risk_tiers_decide_who_writes(bundle: PolicyBundle) -> None:
    """The forbid reads risk_tier: the configured thresholds, not a fixed 70, decide."""
    strict = RiskTiers(medium=10, high=50)
    agent = dataclasses.replace(bundle.agents["scribe"], risk=60)
    assert ask(bundle, agent, "write", NOTES, context()).policies == ("scribe-write-notes",)
    err = denied(bundle, agent, "write", NOTES, context(), tiers=strict)
    assert err.reason == "risk_too_high"
    assert err.policies == ("high-risk-agents-never-write",)
    below = dataclasses.replace(agent, risk=49)
    assert ask(bundle, below, "write", NOTES, context(), tiers=strict).policies == (
        "scribe-write-notes",
    )


def test_lenient_risk_tiers_let_a_risk_80_agent_write(bundle: PolicyBundle) -> None:
    agent = dataclasses.replace(bundle.agents["scribe"], risk=80)
    denied(bundle, agent, "write", NOTES, context())
    outcome = ask(bundle, agent, "write", NOTES, context(), tiers=RiskTiers(medium=50, high=90))
    assert outcome.policies == ("scribe-write-notes",)


def test_unseeded_high_risk_agent_in_the_delta(bundle: PolicyBundle) -> None:
    """An agent only the per-request delta knows is still held to the forbids."""
    newcomer = Agent(
        id="ghostwriter", owner="dr-alice", risk=80, status="active", allowed_purposes=(PURPOSE,)
    )
    err = denied(bundle, newcomer, "write", NOTES, context(("ghostwriter",)))
    assert err.reason == "risk_too_high"
    assert err.policies == ("high-risk-agents-never-write",)


def test_unseeded_agent_without_purposes_in_the_delta(bundle: PolicyBundle) -> None:
    newcomer = Agent(id="ghostwriter", owner="dr-alice", risk=10, status="active")
    err = denied(bundle, newcomer, "read", RECORDS, context(("ghostwriter",)))
    assert err.reason == "purpose_not_allowed"
    assert err.policies == ("agent-purpose-must-be-allowed",)


# --- fail closed ------------------------------------------------------------------------------

ERRORING_FORBID = (
    '@id("erroring-forbid")\n@reason("should_not_be_skipped")\n'
    "forbid (principal, action, resource)\n"
    'when { context.request.path like "*" && principal.nosuch == 1 };\n'
)


@pytest.fixture
def erroring_bundle(bundle: PolicyBundle) -> PolicyBundle:
    shipped = "\n".join(p.read_text() for p in sorted(POLICIES.glob("*.cedar")))
    erroring = policy_load.with_enforced_text(bundle, shipped + "\n" + ERRORING_FORBID)
    assert len(erroring.policy_set) == len(bundle.policies) + 1
    return erroring


def test_cedar_skips_the_erroring_forbid(
    bundle: PolicyBundle, erroring_bundle: PolicyBundle
) -> None:
    """Precondition for the next test: cedar on its own says Allow, with an error."""
    scribe = bundle.agents["scribe"]
    request = policy.CedarRequest(EntityRef("Agent", "scribe"), "read", RECORDS, context())
    entities = bundle.entities.with_added_json_str(
        policy.request_entities(RECORDS, (PATIENT,), [scribe])
    )
    result = cedarpy.is_authorized(request.as_cedar(), erroring_bundle.policy_set, entities)
    assert result.decision == cedarpy.Decision.Allow
    assert result.diagnostics.errors
    assert "nosuch" in result.diagnostics.errors[0]


def test_allow_with_an_erroring_forbid_is_policy_error(
    bundle: PolicyBundle, erroring_bundle: PolicyBundle
) -> None:
    with pytest.raises(PolicyError) as info:
        ask(erroring_bundle, bundle.agents["scribe"], "read", RECORDS, context())
    assert info.value.reason == "policy_error"
    assert info.value.status == 503
    assert "nosuch" in info.value.detail


def test_deny_with_an_erroring_forbid_is_still_not_an_allow(
    bundle: PolicyBundle, erroring_bundle: PolicyBundle
) -> None:
    with pytest.raises((PolicyError, PolicyDenied)):
        ask(erroring_bundle, bundle.agents["scribe"], "read", RECORDS, context(grant_purpose=None))


@pytest.mark.parametrize(
    ("file", "old"),
    [
        ("high-risk-agents-never-write.cedar", "principal.risk_tier"),
        ("agent-purpose-must-be-allowed.cedar", "principal.allowed_purposes"),
    ],
)
def test_erroring_policy_is_named_by_its_id(bundle: PolicyBundle, file: str, old: str) -> None:
    paths = sorted(POLICIES.glob("*.cedar"))
    # keep the positional ids of the shipped bundle: the broken policy keeps its own
    index = [p.name for p in paths].index(file)
    cedar_id = f"policy{index}"
    policy_id = file.removesuffix(".cedar")
    assert bundle.policies[cedar_id].id == policy_id
    texts = [p.read_text() for p in paths]
    assert old in texts[index]
    texts[index] = texts[index].replace(old, "principal.nosuch")
    broken = policy_load.with_enforced_text(bundle, "\n".join(texts))
    with pytest.raises(PolicyError) as info:
        ask(broken, bundle.agents["scribe"], "write", NOTES, context())
    assert policy_id in info.value.detail
    assert f"`{cedar_id}`" not in info.value.detail


@pytest.mark.parametrize(
    "bad_context",
    [
        {"x": {"__extn": {"fn": "nope", "arg": "1"}}},
        {"x": {"__entity": {"type": "", "id": "a"}}},
        {"x": 2**70},
        {"x": {"__expr": "1 +"}},
    ],
    ids=["unknown-extension", "bad-entity-escape", "huge-int", "expr-escape"],
)
def test_invalid_context_never_returns(bundle: PolicyBundle, bad_context: dict[str, Any]) -> None:
    ctx = {**context(), **bad_context}
    with pytest.raises((PolicyError, PolicyDenied)) as info:
        ask(bundle, bundle.agents["scribe"], "read", RECORDS, ctx)
    assert info.value.status in (403, 503)


def test_no_decision_is_policy_error(bundle: PolicyBundle) -> None:
    ctx = {**context(), "x": {"__extn": {"fn": "nope", "arg": "1"}}}
    with pytest.raises(PolicyError) as info:
        ask(bundle, bundle.agents["scribe"], "read", RECORDS, ctx)
    assert info.value.reason == "policy_error"


@pytest.mark.parametrize(
    "delta",
    [
        "not json",
        json.dumps({"uid": {}}),
        json.dumps([{"uid": {"type": "Agent"}, "attrs": {}, "parents": []}]),
    ],
)
def test_rejected_request_entities_are_policy_error(bundle: PolicyBundle, delta: str) -> None:
    request = policy.CedarRequest(EntityRef("Agent", "scribe"), "read", RECORDS, context())
    with pytest.raises(PolicyError) as info:
        policy.PolicyEngine(bundle).decide(request, delta)
    assert info.value.reason == "policy_error"


OWNER = {"__entity": {"type": "User", "id": "dr-alice"}}


@pytest.mark.parametrize(
    ("attrs", "named"),
    [
        ({"risk": "high"}, None),
        # a delta built without tiers: the high-risk forbid errors on the missing risk_tier
        (
            {"owner": OWNER, "risk": 80, "allowed_purposes": [PURPOSE], "status": "active"},
            "high-risk-agents-never-write",
        ),
        # purposes as a string, not a set: the purpose forbid errors
        (
            {
                "owner": OWNER,
                "risk": 20,
                "risk_tier": "low",
                "allowed_purposes": PURPOSE,
                "status": "active",
            },
            "agent-purpose-must-be-allowed",
        ),
        # no allowed_purposes at all
        (
            {"owner": OWNER, "risk": 20, "risk_tier": "low", "status": "active"},
            "agent-purpose-must-be-allowed",
        ),
    ],
    ids=["string-risk", "no-risk-tier", "purposes-string", "no-purposes"],
)
def test_ill_typed_agent_in_the_delta_cannot_write(
    bundle: PolicyBundle, attrs: dict[str, Any], named: str | None
) -> None:
    """A forbid that errors on an ill-typed agent is skipped by Cedar; that must not allow."""
    delta = json.dumps(
        [
            {"uid": {"type": "Agent", "id": "scribe"}, "attrs": attrs, "parents": []},
            {
                "uid": {"type": "Notes", "id": "p-1001"},
                "attrs": {},
                "parents": [{"type": "Patient", "id": "p-1001"}],
            },
        ]
    )
    request = policy.CedarRequest(EntityRef("Agent", "scribe"), "write", NOTES, context())
    with pytest.raises(PolicyError) as info:
        policy.PolicyEngine(bundle).decide(request, delta)
    assert info.value.reason == "policy_error"
    if named is not None:
        assert named in info.value.detail


# --- the per-request delta --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "tier"),
    [
        (None, "low"),
        (RiskTiers(medium=10, high=50), "medium"),
        (RiskTiers(medium=5, high=20), "high"),
    ],
    ids=["default", "custom-medium", "custom-high"],
)
def test_request_entities_shape(tiers: RiskTiers | None, tier: str) -> None:
    agent = Agent(
        id="scribe",
        owner="dr-alice",
        risk=20,
        status="active",
        description="drafts notes",
        allowed_purposes=(PURPOSE, "research"),
        created_at=1_700_000_000,
        registered_by="admin",
    )
    resource, parents = EntityRef("Records", "p-1"), (EntityRef("Patient", "p-1"),)
    text = (
        policy.request_entities(resource, parents, [agent])
        if tiers is None
        else policy.request_entities(resource, parents, [agent], tiers)
    )
    # description, created_at and registered_by are registry bookkeeping: never sent to Cedar
    assert json.loads(text) == [
        {
            "uid": {"type": "Agent", "id": "scribe"},
            "attrs": {
                "owner": {"__entity": {"type": "User", "id": "dr-alice"}},
                "risk": 20,
                "risk_tier": tier,
                "allowed_purposes": [PURPOSE, "research"],
                "status": "active",
            },
            "parents": [],
        },
        {
            "uid": {"type": "Records", "id": "p-1"},
            "attrs": {},
            "parents": [{"type": "Patient", "id": "p-1"}],
        },
        {"uid": {"type": "Patient", "id": "p-1"}, "attrs": {}, "parents": []},
    ]


def test_request_entities_conform_to_the_schema(bundle: PolicyBundle) -> None:
    agents = list(bundle.agents.values())
    for tiers in (DEFAULT_TIERS, RiskTiers(medium=10, high=50)):
        delta = json.loads(policy.request_entities(RECORDS, (PATIENT,), agents, tiers))
        cedarpy.Entities.from_json_str(json.dumps(delta), SCHEMA)
        assert [e["attrs"]["risk_tier"] for e in delta[: len(agents)]] == [
            tiers.of(a.risk) for a in agents
        ]
