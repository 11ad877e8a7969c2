"""Approval scenarios (`policies/approval/tests/scenarios.toml`): a token, a request -> outcome.

Each scenario is an agent's delegated token (user, agents, purpose, txn, as
the access scenarios write them) and what it asks for (action, resource,
ttl, max_uses, request_purpose, txn, reason, break_glass); it must end
`approved`, `pending` or `refused`, with `reason` (refused) or `approvers`
(pending) when given. An approved one may name a `check` ("GET /path") that
the grant it got must then allow. `server.offline_access` runs each through
the server's own access requests and pipeline, with fresh embedded stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from authz.access.asks import Ask
from authz.config import parse_duration
from authz.errors import ScenarioError
from authz.model import AccessRequest
from authz.policy.scenarios import ScenarioResult, read

SCENARIO_FILE = "scenarios.toml"
EXPECTED = ("approved", "pending", "refused")
_KEYS = {
    "name", "user", "agents", "purpose", "txn", "claims", "action", "resource", "ttl",
    "max_uses", "request_purpose", "request_txn", "reason", "break_glass", "expect",
    "refusal", "approvers", "check",
}  # fmt: skip


def load(path: Path) -> list[dict[str, Any]]:
    scenarios = read(path, _KEYS, ("name", "action", "resource", "ttl", "expect"))
    for where, scenario in scenarios:
        if scenario["expect"] not in EXPECTED:
            raise ScenarioError(f"{where}: `expect` must be one of {list(EXPECTED)}")
        try:
            parse_duration(scenario["ttl"])
        except ValueError as err:
            raise ScenarioError(f"{where}: `ttl`: {err}") from None
    return [scenario for _, scenario in scenarios]


def claims_of(scenario: dict[str, Any]) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": scenario.get("user", "dr-alice"),
        "txn": scenario.get("txn", "txn-scenario"),
    }
    if scenario.get("purpose"):
        claims["purp"] = scenario["purpose"]
    agents = scenario.get("agents", [])
    if agents:
        claims["client_id"] = agents[-1]
    claims.update(scenario.get("claims", {}))
    return claims


def ask_of(scenario: dict[str, Any]) -> Ask:
    return Ask(
        action=scenario["action"],
        resource=scenario["resource"],
        purpose=scenario.get("request_purpose", scenario.get("purpose", "")),
        ttl_seconds=parse_duration(scenario["ttl"]),
        max_uses=int(scenario.get("max_uses", 0)),
        txn=scenario.get("request_txn", ""),
        reason=scenario.get("reason", ""),
        break_glass=bool(scenario.get("break_glass", False)),
    )


def describe(request: AccessRequest, pinned: dict[str, Any]) -> str:
    """`approved`, `pending user:dr-alice`, `refused ttl_over_limit`: as much as is pinned."""
    if request.status == "refused" and "refusal" in pinned:
        return f"refused {request.outcome}"
    if request.status == "pending" and "approvers" in pinned:
        return f"pending {','.join(sorted(request.approvers))}"
    return request.status


def result(scenario: dict[str, Any], got: str, detail: str) -> ScenarioResult:
    expected = scenario["expect"]
    if expected == "refused" and "refusal" in scenario:
        expected += f" {scenario['refusal']}"
    if expected == "pending" and "approvers" in scenario:
        expected += f" {','.join(sorted(scenario['approvers']))}"
    return ScenarioResult(scenario["name"], expected, got, detail)
