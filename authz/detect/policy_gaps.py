"""Posture findings about the policies: what Cedar permits with no grant, what stays in shadow.

`phi_permits` asks Cedar itself, through the same engine a check uses: every
PHI route, for every registered agent (for each purpose it may act for) and
for a person acting directly, with no grant in the context. Any permit that
allows one of those is a finding.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from authz.detect.findings import Finding
from authz.detect.inventory import Inventory
from authz.errors import LasthopError
from authz.model import Agent, EntityRef, Risk, RiskTiers
from authz.policy.evaluate import CedarRequest, PolicyEngine, chain_context

PROBE = "posture-probe"


@dataclass(frozen=True)
class Probe:
    request: CedarRequest
    delta: str  # the request's entities, as the pipeline adds them
    route: str  # `METHOD template`
    purpose: str


def phi_permits(inv: Inventory, tiers: RiskTiers) -> Iterator[Finding]:
    engine = PolicyEngine(inv.bundle, tiers)
    holes: dict[str, dict[str, object]] = {}
    for probe in probes(inv, engine, tiers):
        try:
            outcome = engine.evaluate(probe.request, probe.delta)
        except LasthopError:
            continue  # an erroring policy is never an allow
        for policy in outcome.policies if outcome.allowed else ():
            holes.setdefault(
                policy,
                {
                    "principal": str(probe.request.principal),
                    "action": probe.request.action,
                    "resource_type": probe.request.resource.type,
                    "route": probe.route,
                    "purpose": probe.purpose,
                },
            )
    for policy, evidence in sorted(holes.items()):
        yield Finding(
            "phi-permit-without-grant",
            policy,
            f"`{policy}` permits {evidence['principal']} to {evidence['action']} "
            f"{evidence['resource_type']} with no grant",
            evidence,
        )


def probes(inv: Inventory, engine: PolicyEngine, tiers: RiskTiers) -> Iterator[Probe]:
    """Every PHI route, for every principal and purpose, as Cedar would see it with no grant.
    The context is the pipeline's (tests hold it to the shipped schema: a probe Cedar
    cannot evaluate would hide every permit)."""
    for method, path, template in _phi_probes(inv):
        route = inv.bundle.routes.resolve(method, path)
        for principal, agents, purpose in _principals(inv):
            context = _context(inv, agents, purpose, method, tiers)
            yield Probe(
                CedarRequest(principal, route.action, route.resource, context),
                engine.delta(route.resource, route.parents, agents),
                f"{method} {template}",
                purpose,
            )


def _phi_probes(inv: Inventory) -> Iterator[tuple[str, str, str]]:
    for route in inv.bundle.routes.routes:
        if route.phi:
            yield route.method, re.sub(r"\{[^}]+\}", PROBE, route.template), route.template


def _principals(inv: Inventory) -> Iterator[tuple[EntityRef, tuple[Agent, ...], str]]:
    registered = [a for a in inv.agents.values() if a.registered]
    purposes = sorted({p for a in registered for p in a.allowed_purposes}) or [""]
    for agent in sorted(registered, key=lambda a: a.id):
        for purpose in agent.allowed_purposes or ("",):
            yield EntityRef("Agent", agent.id), (agent,), purpose
    for purpose in purposes:
        yield EntityRef("User", PROBE), (), purpose


def _context(
    inv: Inventory, agents: tuple[Agent, ...], purpose: str, method: str, tiers: RiskTiers
) -> dict[str, object]:
    """What the pipeline would give Cedar for this principal, with no grant."""
    return {
        "user": {"__entity": {"type": "User", "id": PROBE}},
        "chain_depth": len(agents),
        "agents": [{"__entity": {"type": "Agent", "id": a.id}} for a in agents],
        "chain": chain_context(agents, purpose, tiers),
        "delegator": PROBE,
        "purpose": purpose,
        "txn": PROBE,
        "request": {"method": method, "path": "/", "host": PROBE},
        "time": int(inv.now),
        "risk": Risk().as_context(),
    }


def long_shadow(inv: Inventory, threshold_days: int) -> Iterator[Finding]:
    """Shadow policies in shadow longer than `threshold_days`: since the earlier of their
    file's time and their first shadow hit in the trail."""
    for info in inv.bundle.policies.values():
        if info.mode != "shadow":
            continue
        mtime = (inv.policy_dir / info.file).stat().st_mtime
        since = min(mtime, inv.shadow_hits.get(info.id, mtime))
        days = (inv.now - since) / 86400
        if days > threshold_days:
            yield Finding(
                "long-shadow-policy",
                info.id,
                f"`{info.id}` has been in shadow mode for {days:.0f} days",
                {"file": info.file, "days": int(days), "threshold_days": threshold_days},
            )
