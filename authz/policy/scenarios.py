"""Scenario tests (`policies/tests/scenarios.toml`): claims, request, grants -> decision, reason.

This module reads and checks the file and compares outcomes; `server.offline`
runs each scenario through the same pipeline the server uses, minus Envoy,
with a fresh embedded grant store. See the file's header for its keys.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz.errors import ScenarioError
from authz.model import Decision, Grant

SCENARIO_FILE = "scenarios.toml"
_KEYS = {
    "name",
    "user",
    "agents",
    "purpose",
    "client_id",
    "claims",
    "authorization",
    "headers",
    "method",
    "path",
    "tool",
    "arguments",
    "body",
    "grants",
    "expect",
    "reason",
}
_GRANT_KEYS = {
    "agent",
    "user",
    "actions",
    "resources",
    "purpose",
    "ttl",
    "expired",
    "max_uses",
    "used",
    "txn",
}


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    expected: str  # "allow allowed", "deny no_grant", ...
    got: str
    detail: str
    policies: tuple[str, ...] = ()  # the policies that decided (and shadow ones that held)
    route: str = ""  # `METHOD template` of the route it reached, if any

    @property
    def passed(self) -> bool:
        return self.expected == self.got


def read(
    path: Path,
    known: set[str],
    required: tuple[str, ...],
    prepare: Callable[[dict[str, Any], str], None] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(where, scenario) for each `[[scenario]]` of `path`, with no unknown key and every
    required one a string (after `prepare` checked it and filled its defaults);
    ScenarioError names the scenario and the key otherwise."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: invalid TOML: {err}") from err
    found = []
    for index, scenario in enumerate(doc.get("scenario", []), 1):
        where = f"{path}: scenario {index} ({scenario.get('name', 'unnamed')})"
        unknown = set(scenario) - known
        if unknown:
            raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
        if prepare is not None:
            prepare(scenario, where)
        for key in required:
            if not isinstance(scenario.get(key), str):
                raise ScenarioError(f"{where}: `{key}` is required")
        found.append((where, scenario))
    return found


def load(path: Path) -> list[dict[str, Any]]:
    scenarios = read(path, _KEYS, ("name", "method", "path", "expect", "reason"), _check_mcp)
    for where, scenario in scenarios:
        if scenario["expect"] not in ("allow", "deny"):
            raise ScenarioError(f"{where}: `expect` must be allow or deny")
        for grant in scenario.get("grants", []):
            unknown = set(grant) - _GRANT_KEYS
            if unknown:
                raise ScenarioError(f"{where}: unknown grant keys {sorted(unknown)}")
    return [scenario for _, scenario in scenarios]


def _check_mcp(scenario: dict[str, Any], where: str) -> None:
    """`tool` (with `arguments`) or `body`: a POST to an MCP endpoint; `method` defaults to it."""
    if "tool" in scenario and "body" in scenario:
        raise ScenarioError(f"{where}: give `tool` or `body`, not both")
    if "arguments" in scenario and not isinstance(scenario.get("tool"), str):
        raise ScenarioError(f"{where}: `arguments` needs `tool`")
    if not isinstance(scenario.get("arguments", {}), dict):
        raise ScenarioError(f"{where}: `arguments` must be a table")
    if not isinstance(scenario.get("body", ""), str):
        raise ScenarioError(f"{where}: `body` must be a string")
    if "tool" in scenario or "body" in scenario:
        scenario.setdefault("method", "POST")


def claims_of(scenario: dict[str, Any], act: dict[str, Any] | None) -> dict[str, Any]:
    """The access token's claims; `act` is the scenario's agents as a nested `act` claim."""
    agents = scenario.get("agents", [])
    claims: dict[str, Any] = {"sub": scenario.get("user", "dr-alice"), "txn": "txn-scenario"}
    if act:
        claims["act"] = act
    client = scenario.get("client_id", agents[-1] if agents else "")
    if client:
        claims["client_id"] = client
    if scenario.get("purpose"):
        claims["purp"] = scenario["purpose"]
    claims.update(scenario.get("claims", {}))
    return claims


def grants_of(scenario: dict[str, Any], now: int) -> list[tuple[Grant, int]]:
    """(grant, uses already spent) for each grant the scenario declares."""
    agents = scenario.get("agents", [])
    result = []
    for index, spec in enumerate(scenario.get("grants", [])):
        expires = now - 60 if spec.get("expired") else now + int(spec.get("ttl", 900))
        grant = Grant(
            id=f"g-scenario-{index}",
            agent=spec.get("agent", agents[-1] if agents else scenario.get("user", "")),
            user=spec.get("user", scenario.get("user", "dr-alice")),
            actions=tuple(spec["actions"]),
            resources=tuple(spec["resources"]),
            purpose=spec.get("purpose", scenario.get("purpose", "")),
            issued_by="scenario",
            issued_at=now - 60,
            expires_at=expires,
            max_uses=int(spec.get("max_uses", 0)),
            txn=spec.get("txn", ""),
        )
        result.append((grant, int(spec.get("used", 0))))
    return result


def result(scenario: dict[str, Any], decision: Decision) -> ScenarioResult:
    got = f"{'allow' if decision.allowed else 'deny'} {decision.reason}"
    expected = f"{scenario['expect']} {scenario['reason']}"
    policies = decision.policies + tuple(policy for policy, _ in decision.shadow)
    route = decision.route
    reached = f"{scenario['method'].upper()} {route.template}" if route else ""
    return ScenarioResult(scenario["name"], expected, got, decision.detail, policies, reached)
