"""The server's pipeline, run in process without Envoy: `lasthop check` and `policy test`.

Tokens are either verified against the configured JWKS (`--token`), or minted
from given claims with a throwaway key that only this process trusts
(`--claims`, scenarios): the decision path after the signature is the same
code the server runs, built by the same composition root (`app.assemble`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from authz.audit.records import MemoryAudit
from authz.check import keys as jwks
from authz.check import mcp
from authz.check.delegation import act_claim
from authz.check.pipeline import Pipeline
from authz.config import IdentitySettings
from authz.model import (
    DEFAULT_TIERS,
    Agent,
    Chain,
    CheckInput,
    Decision,
    Grant,
    Risk,
    RiskTiers,
    TokenClaims,
    split_target,
)
from authz.policy import scenarios
from authz.policy.load import PolicyBundle
from authz.server.app import assemble
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry

THROWAWAY_KID = "lasthop-offline"


class ClaimsSigner:
    """Signs claims with an ES256 key made for this process; fills iss/aud/iat/exp if absent."""

    def __init__(self, ident: IdentitySettings) -> None:
        self._ident = ident
        self._private = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._private.public_key()))
        public = {**jwk, "kid": THROWAWAY_KID, "alg": "ES256", "use": "sig"}
        self.keys = jwks.StaticKeys(
            jwks.parse_jwks(json.dumps({"keys": [public]}), ("ES256",), "offline")
        )

    def token(self, claims: dict[str, Any], now: float) -> str:
        full = {
            "iss": self._ident.issuer,
            "aud": self._ident.audiences[0],
            "iat": int(now),
            "exp": int(now) + 300,
            **claims,
        }
        headers = {"kid": THROWAWAY_KID, "typ": "at+jwt"}
        return jwt.encode(full, self._private, algorithm="ES256", headers=headers)


class FixedRisk:
    """The detectors' values a scenario sets (`risk = {...}`), with the token's own facts."""

    def __init__(self, risk: Risk) -> None:
        self.risk = risk

    def signals(
        self, chain: Chain, agents: tuple[Agent, ...], claims: TokenClaims | None, token: str
    ) -> Risk:
        if claims is None:
            return self.risk
        return replace(
            self.risk,
            token_lifetime=claims.expires_at - claims.issued_at,
            token_jti=bool(claims.jti),
        )

    def observe(self, decision: Decision) -> None:
        return None


@dataclass
class Offline:
    pipeline: Pipeline
    store: EmbeddedGrantStore
    audit: MemoryAudit


def build(
    bundle: PolicyBundle,
    ident: IdentitySettings,
    keys: jwks.KeySource,
    clock: Callable[[], float] = time.time,
    dry_run: bool = False,
    tiers: RiskTiers = DEFAULT_TIERS,
    risk: Risk | None = None,
) -> Offline:
    store = EmbeddedGrantStore(clock)
    audit = MemoryAudit()
    pipeline = assemble(
        ident=ident,
        keys=keys,
        bundle=bundle,
        registry=SeededRegistry(bundle.agents),
        store=store,
        audit=audit,
        clock=clock,
        dry_run=dry_run,
        tiers=tiers,
        detect=FixedRisk(risk) if risk is not None else None,
    )
    return Offline(pipeline=pipeline, store=store, audit=audit)


def request_of(
    method: str, path: str, host: str, headers: dict[str, list[str]], body: bytes | None
) -> CheckInput:
    """A request as Envoy describes it; `body`: the whole body, as `with_request_body` sends it."""
    if body is None:
        return CheckInput(method=method, path=path, host=host, headers=headers)
    return CheckInput.with_body(body, method=method, path=path, host=host, headers=headers)


def scenario_body(scenario: dict[str, Any]) -> bytes | None:
    if "tool" in scenario:
        return mcp.call_body(scenario["tool"], scenario.get("arguments", {}))
    body = scenario.get("body")
    return body.encode("utf-8") if isinstance(body, str) else None


def run_check(offline: Offline, request: CheckInput, grants: list[Grant]) -> Decision:
    async def go() -> Decision:
        for grant in grants:
            await offline.store.put(grant)
        return await offline.pipeline.check(request)

    return asyncio.run(go())


def run_scenarios(
    bundle: PolicyBundle,
    ident: IdentitySettings,
    path: Path,
    selected: Callable[[str], bool] = lambda _: True,
) -> list[scenarios.ScenarioResult]:
    """Every (selected) scenario in `path`, each through a fresh pipeline and embedded store."""
    if not path.exists():
        return []
    signer = ClaimsSigner(ident)
    return [
        _run_scenario(bundle, ident, signer, s) for s in scenarios.load(path) if selected(s["name"])
    ]


def _run_scenario(
    bundle: PolicyBundle, ident: IdentitySettings, signer: ClaimsSigner, scenario: dict[str, Any]
) -> scenarios.ScenarioResult:
    now = time.time()
    env = build(bundle, ident, signer.keys, clock=lambda: now, risk=scenarios.risk_of(scenario))
    headers: dict[str, list[str]] = {k.lower(): [v] for k, v in scenario.get("headers", {}).items()}
    authorization = scenario.get("authorization")
    if authorization is None:
        claims = scenarios.claims_of(scenario, act_claim(scenario.get("agents", [])))
        headers["authorization"] = [f"Bearer {signer.token(claims, now)}"]
    elif authorization:
        headers["authorization"] = [authorization]
    path, _ = split_target(scenario["path"])
    request = request_of(scenario["method"], path, "ehr.internal", headers, scenario_body(scenario))

    async def go() -> Decision:
        for grant, used in scenarios.grants_of(scenario, int(now)):
            await env.store.put(grant)
            for _ in range(used):
                await env.store.consume(grant)
        return await env.pipeline.check(request)

    return scenarios.result(scenario, asyncio.run(go()))
