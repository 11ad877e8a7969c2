"""Cedar request fixtures: `policies/tests/ALLOW/*.json` and `DENY/*.json`.

Each file is one Cedar request (principal, action, resource with its parents,
context) filed under the decision it must get; a DENY file may also pin the
`reason` (a forbid's `@reason`, else `policy_denied`). Agents come from the
bundle's seed, as on the server; the resource is added under its parents.
A fixture without `context.chain` gets it computed from the seed, as the
server computes it from the registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from authz.errors import FixtureError, LasthopError
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


@dataclass(frozen=True)
class Fixture:
    request: policy.CedarRequest
    parents: tuple[EntityRef, ...]
    agents: tuple[str, ...]  # every agent the request names
    reason: str  # a DENY's pinned reason, or ""


def read(path: Path) -> Fixture:
    """Parse one fixture file; anything malformed raises FixtureError naming the file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        principal = EntityRef.parse(doc["principal"])
        resource = EntityRef.parse(doc["resource"])
        parents = tuple(EntityRef.parse(p) for p in doc.get("parents", []))
        context = doc["context"]
        if not isinstance(context, dict) or not isinstance(doc["action"], str):
            raise TypeError("`context` must be an object and `action` a string")
        named = {e["__entity"]["id"] for e in context.get("agents", [])}
        if principal.type == "Agent":
            named.add(principal.id)
        reason = doc.get("reason", "")
    except json.JSONDecodeError as err:
        raise FixtureError(f"{path}: not JSON: {err}") from None
    except KeyError as err:
        raise FixtureError(f"{path}: missing key {err}") from None
    except (ValueError, TypeError, AttributeError, OSError) as err:
        raise FixtureError(f"{path}: {err}") from None
    request = policy.CedarRequest(principal, doc["action"], resource, context)
    return Fixture(request, parents, tuple(sorted(named)), str(reason))


def run_one(bundle: PolicyBundle, path: Path, expected: str) -> FixtureResult:
    fixture = read(path)
    agents = tuple(bundle.agents[a] for a in fixture.agents if a in bundle.agents)
    want = expected if expected == "ALLOW" or not fixture.reason else f"DENY {fixture.reason}"
    request = fixture.request
    if "chain" not in request.context:  # as the server computes it, from the seed
        chain = _chain(bundle, request.context)
        request = replace(request, context={**request.context, "chain": chain})
    try:
        engine = policy.PolicyEngine(bundle)
        outcome = engine.decide(request, engine.delta(request.resource, fixture.parents, agents))
    except LasthopError as err:
        return FixtureResult(path, want, f"DENY {err.reason}", err.policies)
    held = tuple(h.policy for h in outcome.shadow)
    return FixtureResult(path, want, "ALLOW", outcome.policies + held)


def _chain(bundle: PolicyBundle, context: dict[str, Any]) -> dict[str, Any]:
    """`context.chain` from the chain's agents as the registry seed has them."""
    names = [e["__entity"]["id"] for e in context.get("agents", [])]
    hops = [bundle.agents[n] for n in names if n in bundle.agents]
    return policy.chain_context(hops, str(context.get("purpose", "")))


def name(path: Path) -> str:
    """`ALLOW/scribe-reads-records`: how `policy test` names (and `-k` selects) a fixture."""
    return f"{path.parent.name}/{path.stem}"


def run_all(
    bundle: PolicyBundle, directory: Path, selected: Callable[[str], bool] = lambda _: True
) -> list[FixtureResult]:
    results = []
    for decision in DECISIONS:
        for path in sorted((directory / decision).glob("*.json")):
            if selected(name(path)):
                results.append(run_one(bundle, path, decision))
    return results
