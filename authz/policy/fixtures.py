"""Cedar request fixtures: `policies/tests/ALLOW/*.json` and `DENY/*.json`.

Each file is one Cedar request (principal, action, resource with its parents,
context) filed under the decision it must get; a DENY file may also pin the
`reason` (a forbid's `@reason`, else `policy_denied`). Agents come from the
bundle's seed, as on the server; the resource is added under its parents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from authz.errors import LasthopError
from authz.model import EntityRef
from authz.policy import evaluate as policy
from authz.policy.load import PolicyBundle

DECISIONS = ("ALLOW", "DENY")


@dataclass(frozen=True)
class FixtureResult:
    path: Path
    expected: str  # "ALLOW" or "DENY", with the reason for a pinned DENY
    got: str
    policies: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.expected == self.got or (
            self.expected == "DENY" and self.got.startswith("DENY ")
        )


def run_one(bundle: PolicyBundle, path: Path, expected: str) -> FixtureResult:
    doc = json.loads(path.read_text(encoding="utf-8"))
    principal = EntityRef.parse(doc["principal"])
    resource = EntityRef.parse(doc["resource"])
    parents = tuple(EntityRef.parse(p) for p in doc.get("parents", []))
    context = doc["context"]
    named = {e["__entity"]["id"] for e in context.get("agents", [])}
    if principal.type == "Agent":
        named.add(principal.id)
    agents = [bundle.agents[a] for a in sorted(named) if a in bundle.agents]
    request = policy.CedarRequest(principal, doc["action"], resource, context)
    want = expected if expected == "ALLOW" or "reason" not in doc else f"DENY {doc['reason']}"
    try:
        engine = policy.PolicyEngine(bundle)
        outcome = engine.decide(request, engine.delta(resource, parents, tuple(agents)))
    except LasthopError as err:
        return FixtureResult(path, want, f"DENY {err.reason}", err.policies)
    return FixtureResult(path, want, "ALLOW", outcome.policies)


def run_all(bundle: PolicyBundle, directory: Path) -> list[FixtureResult]:
    results = []
    for decision in DECISIONS:
        for path in sorted((directory / decision).glob("*.json")):
            results.append(run_one(bundle, path, decision))
    return results
