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

import functools
import json
from dataclasses import dataclass
from typing import Any

import cedarpy

from authz.errors import PolicyDenied, PolicyError
from authz.model import Agent, EntityRef, RiskTiers
from authz.policy_load import AGENT_TYPE, PolicyBundle

DEFAULT_TIERS = RiskTiers()
ENTITY_CACHE_ENTRIES = 4096
DECISION_CACHE_ENTRIES = 8192


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
    reason: str  # "allowed", a forbid's @reason, or "policy_denied"
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


def request_entities(
    resource: EntityRef,
    parents: tuple[EntityRef, ...],
    agents: list[Agent],
    tiers: RiskTiers = DEFAULT_TIERS,
) -> str:
    """The per-request delta: the chain's agents, and the resource under its parents."""
    return _delta(resource, parents, tuple(agents), tiers)


@functools.lru_cache(maxsize=4096)
def _delta(
    resource: EntityRef, parents: tuple[EntityRef, ...], agents: tuple[Agent, ...], tiers: RiskTiers
) -> str:
    # Agents are frozen values: a changed agent is a different key, never a stale entry.
    delta: list[dict[str, Any]] = [agent_entity(a, tiers) for a in agents]
    delta.append(
        {"uid": resource.as_cedar(), "attrs": {}, "parents": [p.as_cedar() for p in parents]}
    )
    delta.extend({"uid": p.as_cedar(), "attrs": {}, "parents": []} for p in parents)
    return json.dumps(delta)


def decide(bundle: PolicyBundle, request: CedarRequest, delta_json: str) -> CedarOutcome:
    """`evaluate`, raising PolicyDenied on a deny."""
    outcome = evaluate(bundle, request, delta_json)
    if not outcome.allowed:
        raise PolicyDenied(outcome.reason, outcome.detail, policies=outcome.policies)
    return outcome


def evaluate(bundle: PolicyBundle, request: CedarRequest, delta_json: str) -> CedarOutcome:
    """Evaluate `request` against one bundle (the caller holds one snapshot for the whole check).

    Raises PolicyError when Cedar cannot decide; returns allow or deny otherwise.

    Cedar is a pure function of the policies, the request and the entities, so
    an outcome is kept per exact input (the bundle, the request with its whole
    context, which holds the time to the second, and the entity delta, which
    holds every agent attribute). A later identical input gets the same
    answer Cedar would give; any difference is a different key. Errors are
    never kept.
    """
    cedar_request = request.as_cedar()
    cedar_request["context"] = json.dumps(request.context, sort_keys=True)
    key = (json.dumps(cedar_request, sort_keys=True), delta_json)
    cache = bundle.decision_cache
    found: CedarOutcome | None = cache.get(key)
    if found is not None:
        return found
    outcome = _evaluate(bundle, request, cedar_request, delta_json)
    if len(cache) >= DECISION_CACHE_ENTRIES:
        cache.pop(next(iter(cache)))
    cache[key] = outcome
    return outcome


def _evaluate(
    bundle: PolicyBundle, request: CedarRequest, cedar_request: dict[str, Any], delta_json: str
) -> CedarOutcome:
    try:
        entities = _entities(bundle, delta_json)
    except ValueError as err:
        raise PolicyError(f"request entities rejected: {err}") from err
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
    reason, detail = ("allowed", "allowed") if allowed else _deny_reason(bundle, result)
    shadow, disagrees = _shadow(bundle, cedar_request, entities, allowed, result)
    return CedarOutcome(
        allowed=allowed,
        reason=reason,
        detail=detail,
        policies=determining,
        shadow=shadow,
        shadow_disagrees=disagrees,
    )


def _entities(bundle: PolicyBundle, delta_json: str) -> cedarpy.Entities:
    """The base entities plus this delta, parsed once per distinct delta and bundle."""
    cache = bundle.entity_cache
    found = cache.get(delta_json)
    if found is None:
        found = bundle.entities.with_added_json_str(delta_json)
        if len(cache) >= ENTITY_CACHE_ENTRIES:
            cache.pop(next(iter(cache)))
        cache[delta_json] = found
    return found


def _deny_reason(bundle: PolicyBundle, result: cedarpy.AuthzResult) -> tuple[str, str]:
    """The first matching forbid in file order: Cedar lists them in no fixed order."""
    for cedar_id in sorted(result.diagnostics.reasons, key=_position):
        info = bundle.policies.get(cedar_id)
        if info is not None and info.effect == "forbid":
            return info.reason or "policy_denied", f"forbidden by `{info.id}`"
    return "policy_denied", "no policy permits this request"


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
