"""Cedar evaluation of one request against pre-parsed handles.

Rule: allow only when Cedar says Allow *and* its diagnostics list no errors.
cedarpy skips a `forbid` whose condition errors, so an Allow with errors may
be an Allow that a forbid should have stopped: that is `policy_error`, as is
NoDecision. A Deny reports the `@reason` of the first forbid that matched,
else `policy_denied`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import cedarpy

from authz.errors import PolicyDenied, PolicyError
from authz.model import Agent, EntityRef
from authz.policy_load import AGENT_TYPE, PolicyBundle


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
class CedarOutcome:
    policies: tuple[str, ...]  # @id of every policy that determined the decision


def agent_entity(agent: Agent) -> dict[str, Any]:
    return {
        "uid": {"type": AGENT_TYPE, "id": agent.id},
        "attrs": {
            "owner": {"__entity": {"type": "User", "id": agent.owner}},
            "risk": agent.risk,
            "status": agent.status,
        },
        "parents": [],
    }


def request_entities(resource: EntityRef, parents: tuple[EntityRef, ...],
                     agents: list[Agent]) -> str:
    """The per-request delta: the chain's agents, and the resource under its parents."""
    delta: list[dict[str, Any]] = [agent_entity(a) for a in agents]
    delta.append({"uid": resource.as_cedar(), "attrs": {},
                  "parents": [p.as_cedar() for p in parents]})
    delta.extend({"uid": p.as_cedar(), "attrs": {}, "parents": []} for p in parents)
    return json.dumps(delta)


def decide(bundle: PolicyBundle, request: CedarRequest, delta_json: str) -> CedarOutcome:
    """Evaluate `request` against one bundle (the caller holds one snapshot for the whole check)."""
    try:
        entities = bundle.entities.with_added_json_str(delta_json)
    except ValueError as err:
        raise PolicyError(f"request entities rejected: {err}") from err
    result = cedarpy.is_authorized(request.as_cedar(), bundle.policy_set, entities)
    determining = tuple(_policy_id(bundle, p) for p in result.diagnostics.reasons)
    if result.diagnostics.errors:
        raise PolicyError("; ".join(_name_errors(bundle, result.diagnostics.errors)))
    if result.decision == cedarpy.Decision.Allow:
        return CedarOutcome(policies=determining)
    if result.decision != cedarpy.Decision.Deny:
        raise PolicyError(f"cedar returned {result.decision.value}")
    for cedar_id in result.diagnostics.reasons:
        info = bundle.policies.get(cedar_id)
        if info is not None and info.effect == "forbid":
            raise PolicyDenied(info.reason or "policy_denied", f"forbidden by `{info.id}`",
                               policies=determining)
    raise PolicyDenied("policy_denied", "no policy permits this request")


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
