"""Deciding an access request with the approval policies (`policy.approval` says how they read).

The request is evaluated as principal = the agent that asks, action =
`Action::"request"`, resource = what it asks a grant on (with its parents
from the route table), and a context holding the request (action, purpose,
ttl, uses, task, break-glass, reason), the chain (user, agents, depth,
delegator, its highest risk and tier) and the time. The agents carry their
registry entries (owner, risk, risk tier, purposes, status).

Outcome, most restrictive first: refuse (a forbid held, or no permit did),
person (who: everyone named by every person permit that held), approve.
Cedar errors never approve: they raise `PolicyError` and nothing is written.
Shadow policies are evaluated with the enforced ones; when the outcome would
differ, the verdict says what it would have been.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, replace
from typing import Any

import cedarpy

from authz.errors import AccessRequestError, PolicyError
from authz.model import AccessRequest, Agent, EntityRef, RiskTiers
from authz.policy.approval import REQUEST_ACTION, ApprovalPolicies, Rule
from authz.policy.evaluate import request_entities
from authz.policy.load import PolicyBundle

NO_POLICY = "no_approval_policy"
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str  # approve | person | refuse
    policies: tuple[str, ...]  # @ids of the policies that decided
    approvers: tuple[str, ...] = ()  # person: user:<id> and role:<name> entries
    reason: str = ""  # refuse: a code
    detail: str = ""
    limit: str = ""  # refuse over a limit: e.g. `ttl_seconds <= 900`
    shadow: tuple[tuple[str, str], ...] = ()  # (@id, effect) of shadow policies that held
    shadow_outcome: str = ""  # with the shadow policies enforced, when it would differ


def resource_of(text: str, bundle: PolicyBundle) -> tuple[EntityRef, tuple[EntityRef, ...]]:
    """A requested resource and its parents, as the route table places it; the resource's
    type must be one a route uses. Raises AccessRequestError naming what is wrong."""
    try:
        resource = EntityRef.parse(text)
    except ValueError as err:
        raise AccessRequestError(f"resource {err}") from None
    known: set[str] = set()
    for route in bundle.routes.routes:
        known.update(p.entity_type for p in route.parents)
        template = route.resource
        known.add(template.entity_type)
        if template.entity_type != resource.type:
            continue
        params = _params(template.id_template, resource.id)
        if params is not None:
            return resource, tuple(p.fill(params) for p in route.parents)
    if resource.type not in known:
        raise AccessRequestError(
            f"resource type `{resource.type}` is not one the routes use; "
            f"expected one of {sorted(known)}"
        )
    return resource, ()


def _params(template: str, value: str) -> dict[str, str] | None:
    match = _pattern(template).fullmatch(value)
    return match.groupdict() if match else None


@functools.lru_cache(maxsize=256)
def _pattern(template: str) -> re.Pattern[str]:
    """`{patient}` -> a pattern capturing `patient`: the inverse of filling a route's template."""
    parts = _PARAM.split(template)  # literal, name, literal, name, ...
    return re.compile(
        "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+?)" for i, p in enumerate(parts))
    )


def evaluate(
    bundle: PolicyBundle,
    request: AccessRequest,
    agents: tuple[Agent, ...],
    token_purpose: str,
    tiers: RiskTiers,
    now: int,
) -> Verdict:
    policies = bundle.approval
    if policies is None:
        return Verdict("refuse", (), reason=NO_POLICY, detail="no approval policies are loaded")
    resource, parents = resource_of(request.resource, bundle)
    cedar = _cedar_request(request, agents, token_purpose, tiers, now, resource)
    owner = agents[-1].owner if agents else ""
    entities = request_entities(resource, parents, agents, tiers)
    return decide(bundle, policies, cedar, entities, request.user, owner)


def decide(
    bundle: PolicyBundle,
    policies: ApprovalPolicies,
    cedar: dict[str, Any],
    delta: str,
    user: str,
    owner: str,
) -> Verdict:
    """The verdict on one Cedar request (its context as JSON), shadow policies included."""
    entities = policies.entities.get(delta)
    if entities is None:  # one parse per distinct (agents, resource): most requests repeat one
        try:
            entities = bundle.entities.with_added_json_str(delta)
        except ValueError as err:
            raise PolicyError(f"approval request entities rejected: {err}") from err
        policies.entities.put(delta, entities)
    verdict, _ = _decide(policies, policies.enforced, cedar, entities, user, owner)
    if policies.with_shadow is None:
        return verdict
    would, held = _decide(policies, policies.with_shadow, cedar, entities, user, owner)
    shadow = tuple(
        (policies.rules[c].id, "forbid" if policies.rules[c].outcome == "refuse" else "permit")
        for c in held
        if c in policies.shadow
    )
    differs = (would.outcome, would.approvers) != (verdict.outcome, verdict.approvers)
    return replace(verdict, shadow=shadow, shadow_outcome=would.outcome if differs else "")


def _decide(
    policies: ApprovalPolicies,
    policy_set: cedarpy.PolicySet,
    cedar: dict[str, Any],
    entities: cedarpy.Entities,
    user: str,
    owner: str,
) -> tuple[Verdict, list[str]]:
    """The verdict of one policy set, and the Cedar ids of the policies that held."""
    result = cedarpy.is_authorized(cedar, policy_set, entities)
    if result.diagnostics.errors:
        raise PolicyError("approval policy error: " + "; ".join(result.diagnostics.errors))
    held = sorted(result.diagnostics.reasons, key=lambda c: int(c.removeprefix("policy")))
    rules = [policies.rules[c] for c in held]
    return combine(rules, result.decision == cedarpy.Decision.Allow, user, owner), held


def combine(rules: list[Rule], allowed: bool, user: str, owner: str) -> Verdict:
    """The outcome of the rules that held (see the module docstring)."""
    ids = tuple(r.id for r in rules)
    refusals = [r for r in rules if r.outcome == "refuse"]
    if not allowed or refusals:
        if not refusals:
            return Verdict(
                "refuse", ids, reason=NO_POLICY, detail="no approval policy permits this request"
            )
        first = refusals[0]
        limit = str(first.limit) if first.limit else ""
        detail = f"refused by `{first.id}`" + (f": over the limit `{limit}`" if limit else "")
        return Verdict("refuse", ids, reason=first.reason, detail=detail, limit=limit)
    people = [r for r in rules if r.outcome == "person"]
    if not people:
        return Verdict("approve", ids, detail=f"approved by `{ids[0]}`")
    named = [set(resolve(r.approvers, user, owner)) for r in people]
    approvers = tuple(sorted(set.intersection(*named)))
    return Verdict("person", ids, approvers=approvers, detail="a person decides")


def resolve(names: tuple[str, ...], user: str, owner: str) -> tuple[str, ...]:
    """Policy approver names -> who they are: `user` and `owner` become `user:<id>`."""
    people = {"user": f"user:{user}", "owner": f"user:{owner}"}
    return tuple(people.get(n, n) for n in names)


def _cedar_request(
    request: AccessRequest,
    agents: tuple[Agent, ...],
    token_purpose: str,
    tiers: RiskTiers,
    now: int,
    resource: EntityRef,
) -> dict[str, Any]:
    top = max((a.risk for a in agents), default=0)
    context = {
        "action": request.action,
        "purpose": request.purpose,
        "token_purpose": token_purpose,
        "ttl_seconds": request.ttl_seconds,
        "max_uses": request.max_uses,
        "txn": request.txn,
        "break_glass": request.break_glass,
        "reason": request.reason,
        "user": {"__entity": {"type": "User", "id": request.user}},
        "chain_depth": len(request.chain),
        "agents": [{"__entity": {"type": "Agent", "id": a}} for a in request.chain],
        "delegator": request.chain[-2] if len(request.chain) > 1 else request.user,
        "chain_max_risk": top,
        "chain_risk_tier": tiers.of(top),
        "time": now,
    }
    return {
        "principal": {"type": "Agent", "id": request.agent},
        "action": {"type": "Action", "id": REQUEST_ACTION},
        "resource": resource.as_cedar(),
        "context": json.dumps(context),
    }
