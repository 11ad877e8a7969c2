"""What the posture report reads: the registry and grants, the policies, and the audit trail.

- Agents and live grants come from the store. Redis is read directly; the
  embedded store lives in the server's memory, so for it they are rebuilt
  from the seed (`entities.json`) and the trail's agent and grant events,
  which record every change.
- Grant histories (issued, used, revoked) and sightings (which agents acted,
  which were refused as unregistered, which tokens the hygiene detector
  flagged) come from the trail: the server's own files and any given with
  `--trail` (the other replicas' trails: each holds only its own checks).
- Only records from `since` on are read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from authz.audit.disclosures import read_records
from authz.model import Agent, Grant
from authz.policy.load import ENTITIES_FILE, PolicyBundle
from authz.stores.protocols import AgentStore, GrantStore


@dataclass
class GrantHistory:
    grant: Grant
    revoked_at: float | None = None
    uses: int = 0  # allowed checks that used it
    last_use: float | None = None

    def ended(self, now: float) -> float | None:
        """When it stopped covering anything, if it has."""
        if self.revoked_at is not None:
            return self.revoked_at
        return float(self.grant.expires_at) if self.grant.expires_at <= now else None


@dataclass
class Sighting:
    count: int = 0
    last: float = 0.0
    decisions: list[str] = field(default_factory=list)  # a few decision ids, as evidence


@dataclass
class Inventory:
    now: float
    since: float
    bundle: PolicyBundle
    policy_dir: Path
    agents: dict[str, Agent]  # the registry now, tombstones included
    live: dict[str, Grant]  # grants live in the store now
    history: dict[str, GrantHistory] = field(default_factory=dict)  # grants the trail saw issued
    seen: dict[str, Sighting] = field(default_factory=dict)  # agents in a decision's chain
    unregistered: dict[str, Sighting] = field(default_factory=dict)  # refused as unregistered
    long_tokens: dict[str, Sighting] = field(default_factory=dict)  # agent -> hygiene events
    longest_token: dict[str, int] = field(default_factory=dict)  # agent -> seconds
    users: set[str] = field(default_factory=set)  # people the policies or the trail know
    shadow_hits: dict[str, float] = field(default_factory=dict)  # shadow policy -> first hit
    records: int = 0
    # gathered from every file, then joined to `history` (a grant's events and its uses may
    # sit in different replicas' trails)
    _uses: dict[str, tuple[int, float]] = field(default_factory=dict)  # grant -> (uses, last)
    _revoked: dict[str, float] = field(default_factory=dict)


def when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def from_store(
    agents: AgentStore, grants: GrantStore
) -> tuple[dict[str, Agent], dict[str, Grant]]:
    """The registry and live grants of a shared store (Redis)."""
    return (
        {a.id: a for a in await agents.list_agents()},
        {g.id: g for g in await grants.list()},
    )


def read(inventory: Inventory, files: Iterable[Path], rebuild_store: bool) -> Inventory:
    """Fill `inventory` from the trail; with `rebuild_store`, also its agents and live grants."""
    inventory.users |= _policy_users(inventory.policy_dir)
    if rebuild_store:
        inventory.agents = {a.id: a for a in inventory.bundle.agents.values()}
    for record in read_records(files):
        at = when(record["time"]) if isinstance(record.get("time"), str) else 0.0
        kind = record.get("type")
        if kind == "event" and (rebuild_store or at >= inventory.since):
            _event(inventory, record, at, rebuild_store)
        elif kind == "decision" and at >= inventory.since:
            _decision(inventory, record, at)
        else:
            continue
        inventory.records += 1
    for grant_id, history in inventory.history.items():
        history.revoked_at = inventory._revoked.get(grant_id)
        history.uses, last = inventory._uses.get(grant_id, (0, 0.0))
        history.last_use = last if history.uses else None
    if rebuild_store:
        inventory.live = {
            gid: h.grant
            for gid, h in inventory.history.items()
            if h.revoked_at is None and h.grant.expires_at > inventory.now
        }
    return inventory


def _policy_users(directory: Path) -> set[str]:
    try:
        entities = json.loads((directory / ENTITIES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {
        e["uid"]["id"]
        for e in entities
        if isinstance(e, dict) and isinstance(e.get("uid"), dict) and e["uid"].get("type") == "User"
    }


def _decision(inv: Inventory, r: dict[str, Any], at: float) -> None:
    chain = [a for a in r.get("chain", []) if isinstance(a, str)]
    if isinstance(r.get("user"), str) and r["user"]:
        inv.users.add(r["user"])
    for agent in chain:
        _sight(inv.seen, agent, at, r)
    if r.get("reason") == "agent_unregistered":
        for agent in chain:
            _sight(inv.unregistered, agent, at, r)
    if r.get("grant_id") and r.get("decision") == "allow":
        uses, last = inv._uses.get(str(r["grant_id"]), (0, 0.0))
        inv._uses[str(r["grant_id"])] = (uses + 1, max(last, at))
    for hit in r.get("shadow", []):
        policy = hit.get("policy") if isinstance(hit, dict) else None
        if isinstance(policy, str) and policy not in inv.shadow_hits:
            inv.shadow_hits[policy] = at


def _sight(table: dict[str, Sighting], agent: str, at: float, r: dict[str, Any]) -> None:
    sighting = table.setdefault(agent, Sighting())
    sighting.count += 1
    sighting.last = max(sighting.last, at)
    if len(sighting.decisions) < 3:
        sighting.decisions.append(str(r.get("decision_id", "")))


def _event(inv: Inventory, r: dict[str, Any], at: float, rebuild: bool) -> None:
    event, target, detail = r.get("event"), str(r.get("target", "")), r.get("detail") or {}
    actor = r.get("actor")
    if isinstance(actor, str) and actor != "lasthop":
        inv.users.add(actor)
    if event == "grant_issued":
        grant = _grant(target, detail)
        if grant is not None:
            inv.history[target] = GrantHistory(grant)
    elif event == "grant_revoked":
        inv._revoked.setdefault(target, at)
    elif event == "threat_detected" and detail.get("kind") == "long_lived_token":
        agent = str(detail.get("agent", ""))
        _sight(inv.long_tokens, agent, at, {"decision_id": detail.get("decision_id", "")})
        lifetime = (detail.get("evidence") or {}).get("lifetime_seconds", 0)
        if isinstance(lifetime, int):
            inv.longest_token[agent] = max(inv.longest_token.get(agent, 0), lifetime)
    elif rebuild and isinstance(event, str) and event.startswith("agent_"):
        _agent_event(inv, event, target, detail)


def _agent_event(inv: Inventory, event: str, agent_id: str, d: dict[str, Any]) -> None:
    """Replay a registry change onto the rebuilt registry."""
    status = "deregistered" if event == "agent_deregistered" else d.get("status")
    current = inv.agents.get(agent_id)
    try:
        if current is None:
            inv.agents[agent_id] = Agent(
                id=agent_id,
                owner=str(d["owner"]),
                risk=int(d["risk"]),
                status=str(status),
                allowed_purposes=tuple(d.get("allowed_purposes", [])),
            )
        else:
            inv.agents[agent_id] = replace(
                current,
                owner=str(d.get("owner", current.owner)),
                risk=int(d.get("risk", current.risk)),
                status=str(status or current.status),
                allowed_purposes=tuple(d.get("allowed_purposes", current.allowed_purposes)),
            )
    except (KeyError, TypeError, ValueError):
        return  # an event without the agent's fields changes nothing here


def _grant(grant_id: str, d: dict[str, Any]) -> Grant | None:
    try:
        return Grant.from_json(json.dumps({"id": grant_id, **d}))
    except ValueError:
        return None
