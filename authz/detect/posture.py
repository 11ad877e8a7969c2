"""The identity posture report: where the fleet is exposed, from what `inventory` read.

Each finding has a stable id (`<kind>:<subject>`, the same on every run while
the cause stands), a severity, the evidence, a fix, and its OWASP
Non-Human Identities Top 10 (2025) category. The kinds:

    standing-grant            a grant that lived (or will) far longer than its use
    renewed-grant             grants renewed back to back for one agent, user and resources
    unused-grant              a grant never used
    broad-grant               a live grant over many resources
    ownerless-agent           an active agent whose owner is no person Lasthop knows
    high-risk-write           a high-risk agent holding a live grant that writes
    unseen-agent              an active registered agent that never acted
    unregistered-agent        an agent that acted with valid tokens but is not registered
    long-lived-token          tokens longer-lived than detect.hygiene_token_lifetime in traffic
    phi-permit-without-grant  a policy that permits a PHI action when no grant is held
    long-shadow-policy        a policy left in shadow mode for long

A grant's action "writes" when a route reaches it with a method other than
GET or HEAD. The two kinds about policies are judged in `policy_gaps`; what
a finding holds, in `findings`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from authz.detect.findings import SEVERITIES, Finding, span
from authz.detect.inventory import GrantHistory, Inventory
from authz.detect.policy_gaps import long_shadow, phi_permits
from authz.model import Agent, RiskTiers

READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Limits:
    standing_min_seconds: int = 3600  # grants shorter than this are never standing
    standing_factor: int = 4  # lifetime over this many times the span of its use
    renew_gap_seconds: int = 300  # a grant issued within this of the last one's end renews it
    renewals: int = 3  # this many grants in a row
    unused_after_seconds: int = 3600  # a live grant this old and never used
    broad_resources: int = 10
    shadow_days: int = 14


def assess(inv: Inventory, tiers: RiskTiers, limits: Limits = Limits()) -> list[Finding]:
    """Every finding, most severe first, then by id."""
    found = [
        *_standing(inv, limits),
        *_renewed(inv, limits),
        *_unused(inv, limits),
        *_broad(inv, limits),
        *_ownerless(inv),
        *_high_risk_write(inv, tiers),
        *_unseen(inv),
        *_unregistered(inv),
        *_long_tokens(inv),
        *phi_permits(inv, tiers),
        *long_shadow(inv, limits.shadow_days),
    ]
    return sorted(found, key=lambda f: (-SEVERITIES.index(f.rule.severity), f.id))


def _active(inv: Inventory) -> Iterator[Agent]:
    return (a for a in inv.agents.values() if a.active)


# --- grants -----------------------------------------------------------------------------------


def _standing(inv: Inventory, limits: Limits) -> Iterator[Finding]:
    for h in inv.history.values():
        g = h.grant
        lifetime = (h.ended(inv.now) or g.expires_at) - g.issued_at
        elapsed = min(inv.now, h.ended(inv.now) or inv.now) - g.issued_at
        if h.last_use is None or lifetime < limits.standing_min_seconds or elapsed < lifetime / 2:
            continue
        used = max(h.last_use - g.issued_at, 60.0)
        if lifetime >= limits.standing_factor * used:
            yield Finding(
                "standing-grant",
                g.id,
                f"grant `{g.id}` for {g.agent} ({g.user}) lives {span(lifetime)}, "
                f"used over {span(used)}",
                _grant_evidence(h, lifetime_seconds=int(lifetime), used_seconds=int(used)),
            )


def _renewed(inv: Inventory, limits: Limits) -> Iterator[Finding]:
    groups: dict[tuple[str, str, tuple[str, ...]], list[GrantHistory]] = {}
    for h in inv.history.values():
        key = (h.grant.agent, h.grant.user, tuple(sorted(h.grant.resources)))
        groups.setdefault(key, []).append(h)
    for (agent, user, resources), grants in sorted(groups.items()):
        run = _longest_run(sorted(grants, key=lambda h: h.grant.issued_at), inv.now, limits)
        if len(run) < limits.renewals:
            continue
        digest = hashlib.sha256("\n".join(resources).encode()).hexdigest()[:8]
        covered = (run[-1].ended(inv.now) or run[-1].grant.expires_at) - run[0].grant.issued_at
        yield Finding(
            "renewed-grant",
            f"{agent}:{user}:{digest}",
            f"{len(run)} grants in a row gave {agent} ({user}) the same access for {span(covered)}",
            {
                "agent": agent,
                "user": user,
                "resources": list(resources),
                "grants": [h.grant.id for h in run],
                "covered_seconds": int(covered),
            },
        )


def _longest_run(grants: list[GrantHistory], now: float, limits: Limits) -> list[GrantHistory]:
    best: list[GrantHistory] = []
    run: list[GrantHistory] = []
    for h in grants:
        previous = run[-1] if run else None
        end = (previous.ended(now) or previous.grant.expires_at) if previous else None
        if end is not None and h.grant.issued_at <= end + limits.renew_gap_seconds:
            run.append(h)
        else:
            run = [h]
        best = run if len(run) > len(best) else best
    return best


def _unused(inv: Inventory, limits: Limits) -> Iterator[Finding]:
    for h in inv.history.values():
        g = h.grant
        ended = h.ended(inv.now)
        old = inv.now - g.issued_at >= limits.unused_after_seconds
        if h.uses == 0 and (ended is not None or old):
            state = "ended" if ended is not None else "is live"
            yield Finding(
                "unused-grant",
                g.id,
                f"grant `{g.id}` for {g.agent} ({g.user}) {state} and was never used",
                _grant_evidence(h),
            )


def _broad(inv: Inventory, limits: Limits) -> Iterator[Finding]:
    for g in inv.live.values():
        if len(g.resources) > limits.broad_resources:
            yield Finding(
                "broad-grant",
                g.id,
                f"grant `{g.id}` gives {g.agent} ({g.user}) {len(g.resources)} resources",
                {
                    "agent": g.agent,
                    "user": g.user,
                    "resources": len(g.resources),
                    "threshold": limits.broad_resources,
                    "actions": list(g.actions),
                    "expires_at": g.expires_at,
                },
            )


def _grant_evidence(h: GrantHistory, **extra: object) -> dict[str, object]:
    g = h.grant
    return {
        "agent": g.agent,
        "user": g.user,
        "actions": list(g.actions),
        "resources": list(g.resources),
        "issued_at": g.issued_at,
        "expires_at": g.expires_at,
        "revoked": h.revoked_at is not None,
        "uses": h.uses,
        **extra,
    }


# --- agents -----------------------------------------------------------------------------------


def _ownerless(inv: Inventory) -> Iterator[Finding]:
    for agent in _active(inv):
        if agent.owner not in inv.users:
            yield Finding(
                "ownerless-agent",
                agent.id,
                f"{agent.id}'s owner `{agent.owner}` is neither a User in the policies nor "
                "anyone seen in the trail",
                {"owner": agent.owner, "risk": agent.risk},
            )


def _high_risk_write(inv: Inventory, tiers: RiskTiers) -> Iterator[Finding]:
    writes = {r.action for r in inv.bundle.routes.routes if r.method not in READ_METHODS}
    for g in inv.live.values():
        agent = inv.agents.get(g.agent)
        written = sorted(writes.intersection(g.actions))
        if agent is not None and tiers.of(agent.risk) == "high" and written:
            yield Finding(
                "high-risk-write",
                g.id,
                f"{agent.id} (risk {agent.risk}) holds grant `{g.id}` to {', '.join(written)}",
                {"agent": agent.id, "risk": agent.risk, "grant": g.id, "actions": written},
            )


def _unseen(inv: Inventory) -> Iterator[Finding]:
    for agent in _active(inv):
        if agent.id not in inv.seen:
            yield Finding(
                "unseen-agent",
                agent.id,
                f"{agent.id} is registered and active but made no request in the trail read",
                {"owner": agent.owner, "registered_by": agent.registered_by, "since": inv.since},
            )


def _unregistered(inv: Inventory) -> Iterator[Finding]:
    for agent_id, sighting in sorted(inv.unregistered.items()):
        agent = inv.agents.get(agent_id)
        if agent is None or not agent.registered:
            yield Finding(
                "unregistered-agent",
                agent_id,
                f"{agent_id} was refused {sighting.count} times as unregistered",
                {"refused": sighting.count, "last": sighting.last, "decisions": sighting.decisions},
            )


def _long_tokens(inv: Inventory) -> Iterator[Finding]:
    for agent_id, sighting in sorted(inv.long_tokens.items()):
        yield Finding(
            "long-lived-token",
            agent_id,
            f"{agent_id} presented tokens living up to {span(inv.longest_token.get(agent_id, 0))}",
            {
                "detections": sighting.count,
                "longest_seconds": inv.longest_token.get(agent_id, 0),
                "decisions": sighting.decisions,
            },
        )
