"""Scenario tests (`policies/tests/scenarios.toml`): claims, request, grants -> decision, reason.

Each scenario runs through the same pipeline the server uses, minus Envoy,
with a fresh embedded grant store; see the file's header for its keys.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz import offline
from authz.config import IdentitySettings
from authz.demo_tokens import act_claim
from authz.model import CheckInput, Decision, Grant
from authz.policy_load import PolicyBundle

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
}


class ScenarioError(Exception):
    """The scenario file itself is wrong; the message names the scenario and key."""


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    expected: str  # "allow allowed", "deny no_grant", ...
    got: str
    detail: str

    @property
    def passed(self) -> bool:
        return self.expected == self.got


def load(path: Path) -> list[dict[str, Any]]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: invalid TOML: {err}") from err
    scenarios = doc.get("scenario", [])
    for index, scenario in enumerate(scenarios, 1):
        where = f"{path}: scenario {index} ({scenario.get('name', 'unnamed')})"
        unknown = set(scenario) - _KEYS
        if unknown:
            raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
        for key in ("name", "method", "path", "expect", "reason"):
            if not isinstance(scenario.get(key), str):
                raise ScenarioError(f"{where}: `{key}` is required")
        if scenario["expect"] not in ("allow", "deny"):
            raise ScenarioError(f"{where}: `expect` must be allow or deny")
        for grant in scenario.get("grants", []):
            unknown = set(grant) - _GRANT_KEYS
            if unknown:
                raise ScenarioError(f"{where}: unknown grant keys {sorted(unknown)}")
    return list(scenarios)


def _claims(scenario: dict[str, Any]) -> dict[str, Any]:
    agents = scenario.get("agents", [])
    claims: dict[str, Any] = {"sub": scenario.get("user", "dr-alice"), "txn": "txn-scenario"}
    if agents:
        claims["act"] = act_claim(agents)
    client = scenario.get("client_id", agents[-1] if agents else "")
    if client:
        claims["client_id"] = client
    if scenario.get("purpose"):
        claims["purp"] = scenario["purpose"]
    claims.update(scenario.get("claims", {}))
    return claims


def _grants(scenario: dict[str, Any], now: int) -> list[tuple[Grant, int]]:
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
        )
        result.append((grant, int(spec.get("used", 0))))
    return result


def run_one(
    bundle: PolicyBundle,
    ident: IdentitySettings,
    signer: offline.ClaimsSigner,
    scenario: dict[str, Any],
) -> ScenarioResult:
    now = time.time()
    env = offline.build(bundle, ident, signer.keys, clock=lambda: now)
    headers: dict[str, list[str]] = {k.lower(): [v] for k, v in scenario.get("headers", {}).items()}
    authorization = scenario.get("authorization")
    if authorization is None:
        headers["authorization"] = [f"Bearer {signer.token(_claims(scenario), now)}"]
    elif authorization:
        headers["authorization"] = [authorization]
    request = CheckInput(
        method=scenario["method"], path=scenario["path"], host="ehr.internal", headers=headers
    )

    async def go() -> Decision:
        for grant, used in _grants(scenario, int(now)):
            await env.store.put(grant)
            for _ in range(used):
                await env.store.consume(grant)
        return await env.pipeline.check(request)

    decision = asyncio.run(go())
    got = f"{'allow' if decision.allowed else 'deny'} {decision.reason}"
    return ScenarioResult(
        scenario["name"], f"{scenario['expect']} {scenario['reason']}", got, decision.detail
    )


def run_all(bundle: PolicyBundle, ident: IdentitySettings, path: Path) -> list[ScenarioResult]:
    if not path.exists():
        return []
    signer = offline.ClaimsSigner(ident)
    return [run_one(bundle, ident, signer, s) for s in load(path)]
