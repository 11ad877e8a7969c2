"""The server's pipeline, run in process without Envoy: for `lasthop check` and `policy test`.

Tokens are either verified against the configured JWKS (`--token`), or minted
from given claims with a throwaway key that only this process trusts
(`--claims`, scenarios): the decision path after the signature is the same
code the server runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from authz import jwks
from authz.audit import MemoryAudit
from authz.config import IdentitySettings
from authz.demo_tokens import DemoIssuer
from authz.grants import EmbeddedGrantStore
from authz.identity import ACCESS_TOKEN_TYPES, TXN_TOKEN_TYPES, AccessTokenVerifier, IdentityRules
from authz.intent import IntentReader
from authz.model import CheckInput, Decision, Grant, RiskTiers
from authz.pipeline import Pipeline, PipelineOptions
from authz.policy_load import PolicyBundle
from authz.registry import SeededRegistry

THROWAWAY_KID = "lasthop-offline"
DEFAULT_TIERS = RiskTiers()


def rules_for(ident: IdentitySettings) -> tuple[IdentityRules, IdentityRules]:
    common: dict[str, Any] = dict(
        algorithms=frozenset(ident.algorithms),
        leeway=ident.leeway_seconds,
        max_lifetime=ident.max_token_lifetime,
        audiences=frozenset(ident.audiences),
    )
    return (
        IdentityRules(issuers=frozenset({ident.issuer}), types=ACCESS_TOKEN_TYPES, **common),
        IdentityRules(
            issuers=frozenset(ident.txn_token_issuers or (ident.issuer,)),
            types=TXN_TOKEN_TYPES,
            **common,
        ),
    )


class ClaimsSigner:
    """Signs claims with a key generated for this process; fills iss/aud/iat/exp if absent."""

    def __init__(self, ident: IdentitySettings) -> None:
        self._ident = ident
        self.issuer = DemoIssuer("ES256", kid=THROWAWAY_KID)
        self.keys = jwks.StaticKeys(
            jwks.parse_jwks(json.dumps({"keys": [self.issuer.public_jwk]}), ("ES256",), "offline")
        )

    def token(self, claims: dict[str, Any], now: float) -> str:
        full = {
            "iss": self._ident.issuer,
            "aud": self._ident.audiences[0],
            "iat": int(now),
            "exp": int(now) + 300,
            **claims,
        }
        return self.issuer.sign(full)


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
) -> Offline:
    access, txn = rules_for(ident)
    store = EmbeddedGrantStore(clock)
    audit = MemoryAudit()
    pipeline = Pipeline(
        verifier=AccessTokenVerifier(keys, access, clock),
        intent=IntentReader(keys, txn, clock),
        registry=SeededRegistry(bundle.agents),
        bundle=bundle,
        store=store,
        audit=audit,
        metrics=None,
        options=PipelineOptions(
            max_chain_depth=ident.max_chain_depth,
            bind_peer=ident.bind_peer,
            trust_domain=ident.spiffe_trust_domain,
            dry_run=dry_run,
            tiers=tiers,
        ),
        clock=clock,
    )
    return Offline(pipeline=pipeline, store=store, audit=audit)


def run_check(offline: Offline, request: CheckInput, grants: list[Grant]) -> Decision:
    async def go() -> Decision:
        for grant in grants:
            await offline.store.put(grant)
        return await offline.pipeline.check(request)

    return asyncio.run(go())
