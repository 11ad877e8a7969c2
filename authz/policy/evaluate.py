"""Cedar evaluation of one request against pre-parsed handles.

Rule: allow only when Cedar says Allow *and* its diagnostics list no errors.
cedarpy skips a `forbid` whose condition errors, so an Allow with errors may
be an Allow that a forbid should have stopped: that is `policy_error`, as is
NoDecision. A Deny reports the `@reason` of the first forbid that matched,
else `policy_denied`.

Shadow policies (`@mode("shadow")`) never change the decision. They are
evaluated in a probe set where each is a permit, so the probe's determining
policies are the shadow policies that hold. With them, the decision would be:
deny if a shadow forbid holds; else allow if Cedar allowed, or if a shadow
permit holds and no enforced forbid did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import cedarpy

from authz.errors import PolicyDenied, PolicyError
from authz.model import DEFAULT_TIERS, Agent, EntityRef, RiskTiers
from authz.policy.load import AGENT_TYPE, PolicyBundle
from authz.reasons import Reason
from authz.stores.cache import BoundedCache

DELTA_ENTRIES = 4096
ENTITY_ENTRIES = 4096
OUTCOME_ENTRIES = 8192


@dataclass(frozen=True, slots=True)
class CedarRequest:
    principal: EntityRef
    action: str
    resource: EntityRef
    context: dict[str, Any]

    def as_cedar(self) -> dict[str, Any]:
        return {
            "principal": self.principal.as_cedar(),
            "action": {"type": "Action", "id": self.action},
            "resource": self.resource.as_cedar(),
            "context": self.context,
        }


@dataclass(frozen=True, slots=True)
class ShadowHit:
    policy: str  # @id
    effect: str  # "permit" | "forbid" | "error"


@dataclass(frozen=True, slots=True)
class CedarOutcome:
    allowed: bool
    reason: Reason | str  # allowed, a forbid's @reason, or policy_denied
    detail: str
    policies: tuple[str, ...]  # @id of every policy that determined the decision
    shadow: tuple[ShadowHit, ...] = ()
    shadow_disagrees: bool = False  # enforcing the shadow policies would flip the decision


def agent_entity(agent: Agent, tiers: RiskTiers) -> dict[str, Any]:
    return {
        "uid": {"type": AGENT_TYPE, "id": agent.id},
        "attrs": {
            "owner": {"__entity": {"type": "User", "id": agent.owner}},
            "risk": agent.risk,
            "risk_tier": tiers.of(agent.risk),
            "allowed_purposes": list(agent.allowed_purposes),
            "status": agent.status,
        },
        "parents": [],
    }


def chain_context(
    agents: list[Agent] | tuple[Agent, ...], purpose: str, tiers: RiskTiers = DEFAULT_TIERS
) -> dict[str, Any]:
    """`context.chain`: what a policy needs to know about every hop, not just the principal.

    Cedar has no quantifier over a set, so a rule about every agent in the chain
    ("no high-risk agent anywhere", "every agent may act for this purpose") reads
    these summaries. With no agents (a person acting), the chain is harmless.
    """
    max_risk = max((a.risk for a in agents), default=0)
    return {
        "max_risk": max_risk,
        "risk_tier": tiers.of(max_risk),
        "purpose_allowed": all(purpose in a.allowed_purposes for a in agents),
    }


def request_entities(
    resource: EntityRef,
    parents: tuple[EntityRef, ...],
    agents: list[Agent] | tuple[Agent, ...],
    tiers: RiskTiers = DEFAULT_TIERS,
) -> str:
    """The per-request delta: the chain's agents, and the resource under its parents."""
    delta: list[dict[str, Any]] = [agent_entity(a, tiers) for a in agents]
    delta.append(
        {"uid": resource.as_cedar(), "attrs": {}, "parents": [p.as_cedar() for p in parents]}
    )
    delta.extend({"uid": p.as_cedar(), "attrs": {}, "parents": []} for p in parents)
    return json.dumps(delta)


def enforce(outcome: CedarOutcome) -> None:
    """A deny becomes PolicyDenied, with the forbid's reason and the deciding policies."""
    if not outcome.allowed:
        raise PolicyDenied(outcome.reason, outcome.detail, policies=outcome.policies)


class PolicyEngine:
    """One policy bundle in force, with the memos of its evaluations.

    A reload installs a new engine, so the memos go with the bundle they were
    made from. Every memo is keyed on its exact inputs and bounded:

    - deltas: (resource, parents, agents) -> the entity delta JSON; agents are
      frozen values, so a changed agent is a different key, never a stale entry;
    - entities: delta JSON -> the parsed Cedar entities (base plus delta);
    - outcomes: (Cedar request JSON, delta JSON) -> the outcome. Cedar is a pure
      function of the policies, the request (whose context holds the time to
      the second) and the entities, so a later identical input gets the answer
      Cedar would give. Errors are never kept.
    """

    def __init__(self, bundle: PolicyBundle, tiers: RiskTiers = DEFAULT_TIERS) -> None:
        self.bundle = bundle
        self.tiers = tiers
        self.deltas: BoundedCache[tuple[Any, ...], str] = BoundedCache(DELTA_ENTRIES)
        self.entities: BoundedCache[str, cedarpy.Entities] = BoundedCache(ENTITY_ENTRIES)
        self.outcomes: BoundedCache[tuple[str, str], CedarOutcome] = BoundedCache(OUTCOME_ENTRIES)

    def delta(
        self, resource: EntityRef, parents: tuple[EntityRef, ...], agents: tuple[Agent, ...]
    ) -> str:
        key = (resource, parents, agents)
        found = self.deltas.get(key)
        if found is None:
            found = request_entities(resource, parents, agents, self.tiers)
            self.deltas.put(key, found)
        return found

    def decide(self, request: CedarRequest, delta_json: str) -> CedarOutcome:
        """`evaluate`, raising PolicyDenied on a deny."""
        outcome = self.evaluate(request, delta_json)
        enforce(outcome)
        return outcome

    def evaluate(self, request: CedarRequest, delta_json: str) -> CedarOutcome:
        """Allow or deny; raises PolicyError when Cedar cannot decide."""
        cedar_request = request.as_cedar()
        cedar_request["context"] = json.dumps(request.context, sort_keys=True)
        key = (json.dumps(cedar_request, sort_keys=True), delta_json)
        found = self.outcomes.get(key)
        if found is not None:
            return found
        outcome = _evaluate(self.bundle, request, cedar_request, self._entities(delta_json))
        self.outcomes.put(key, outcome)
        return outcome

    def _entities(self, delta_json: str) -> cedarpy.Entities:
        """The base entities plus this delta, parsed once per distinct delta."""
        found = self.entities.get(delta_json)
        if found is None:
            try:
                found = self.bundle.entities.with_added_json_str(delta_json)
            except ValueError as err:
                raise PolicyError(f"request entities rejected: {err}") from err
            self.entities.put(delta_json, found)
        return found


def _evaluate(
    bundle: PolicyBundle,
    request: CedarRequest,
    cedar_request: dict[str, Any],
    entities: cedarpy.Entities,
) -> CedarOutcome:
    policies = bundle.slices.for_principal(request.principal.type, request.principal.id)
    result = cedarpy.is_authorized(cedar_request, policies, entities)
    determining = tuple(
        _policy_id(bundle, p) for p in sorted(result.diagnostics.reasons, key=_position)
    )
    if result.diagnostics.errors:
        raise PolicyError("; ".join(_name_errors(bundle, result.diagnostics.errors)))
    if result.decision not in (cedarpy.Decision.Allow, cedarpy.Decision.Deny):
        raise PolicyError(f"cedar returned {result.decision.value}")
    allowed = result.decision == cedarpy.Decision.Allow
    reason, detail = (Reason.ALLOWED, "allowed") if allowed else _deny_reason(bundle, result)
    shadow, disagrees = _shadow(bundle, cedar_request, entities, allowed, result)
    return CedarOutcome(
        allowed=allowed,
        reason=reason,
        detail=detail,
        policies=determining,
        shadow=shadow,
        shadow_disagrees=disagrees,
    )


def _deny_reason(bundle: PolicyBundle, result: cedarpy.AuthzResult) -> tuple[Reason | str, str]:
    """The first matching forbid in file order: Cedar lists them in no fixed order."""
    for cedar_id in sorted(result.diagnostics.reasons, key=_position):
        info = bundle.policies.get(cedar_id)
        if info is not None and info.effect == "forbid":
            return info.reason or Reason.POLICY_DENIED, f"forbidden by `{info.id}`"
    return Reason.POLICY_DENIED, "no policy permits this request"


def _shadow(
    bundle: PolicyBundle,
    cedar_request: dict[str, Any],
    entities: cedarpy.Entities,
    allowed: bool,
    result: cedarpy.AuthzResult,
) -> tuple[tuple[ShadowHit, ...], bool]:
    if bundle.shadow_probe is None:
        return (), False
    probe = cedarpy.is_authorized(cedar_request, bundle.shadow_probe, entities)
    hits = [
        ShadowHit(_policy_id(bundle, p), bundle.policies[p].effect)
        for p in probe.diagnostics.reasons
        if p in bundle.policies
    ]
    errored = [
        cid
        for cid, info in bundle.policies.items()
        if info.mode == "shadow" and any(f"`{cid}`" in e for e in probe.diagnostics.errors)
    ]
    hits.extend(ShadowHit(bundle.policies[cid].id, "error") for cid in errored)
    enforced_forbid = not allowed and any(
        bundle.policies[p].effect == "forbid"
        for p in result.diagnostics.reasons
        if p in bundle.policies
    )
    shadow_forbid = any(h.effect in ("forbid", "error") for h in hits)
    shadow_permit = any(h.effect == "permit" for h in hits)
    would_allow = (allowed or (shadow_permit and not enforced_forbid)) and not shadow_forbid
    return tuple(hits), would_allow != allowed


def _position(cedar_id: str) -> tuple[int, str]:
    number = cedar_id.removeprefix("policy")
    return (int(number), "") if number.isdigit() else (1 << 30, cedar_id)


def _policy_id(bundle: PolicyBundle, cedar_id: str) -> str:
    info = bundle.policies.get(cedar_id)
    return info.id if info is not None else cedar_id


def _name_errors(bundle: PolicyBundle, errors: list[str]) -> list[str]:
    named = []
    for message in errors:
        for cedar_id, info in bundle.policies.items():
            message = message.replace(f"`{cedar_id}`", f"`{info.id}`")
        named.append(message)
    return named
