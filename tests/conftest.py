"""Shared fixtures: a demo issuer, and the pipeline built in process from the shipped example."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from authz.audit.records import MemoryAudit
from authz.check import keys as jwks
from authz.check.identity import (
    ACCESS_TOKEN_TYPES,
    IdentityRules,
)
from authz.check.pipeline import Pipeline
from authz.config import IdentitySettings
from authz.dev.tokens import ADMIN_AUDIENCE, AUDIENCE, ISSUER, DemoIssuer
from authz.model import CheckInput, Grant, split_target
from authz.policy import load as policy_load
from authz.server.app import assemble
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry
from authz.stores.protocols import AgentRegistry, GrantStore

POLICIES = Path(__file__).resolve().parent.parent / "policies"
SCHEMA = cedarpy.Schema.from_str((POLICIES / "schema.cedarschema").read_text(encoding="utf-8"))
PURPOSE = "clinical-documentation"


@pytest.fixture(scope="session")
def issuer() -> DemoIssuer:
    return DemoIssuer("ES256", kid="test-es256")


@pytest.fixture(scope="session")
def rs_issuer() -> DemoIssuer:
    return DemoIssuer("RS256", kid="test-rs256")


@pytest.fixture(scope="session")
def bundle() -> policy_load.PolicyBundle:
    return policy_load.load(POLICIES)


def rules(
    types: frozenset[str] = ACCESS_TOKEN_TYPES,
    audiences: tuple[str, ...] = (AUDIENCE,),
    max_lifetime: int = 3600,
) -> IdentityRules:
    return IdentityRules(
        issuers=frozenset({ISSUER}),
        audiences=frozenset(audiences),
        algorithms=frozenset({"RS256", "ES256", "EdDSA"}),
        types=types,
        leeway=30,
        max_lifetime=max_lifetime,
    )


def keys_for(*issuers: DemoIssuer) -> jwks.StaticKeys:
    doc = {"keys": [i.public_jwk for i in issuers]}
    import json

    return jwks.StaticKeys(jwks.parse_jwks(json.dumps(doc), ("RS256", "ES256", "EdDSA"), "test"))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


PipelineFactory = Callable[..., Pipeline]


@pytest.fixture
def make_pipeline(
    issuer: DemoIssuer, rs_issuer: DemoIssuer, bundle: policy_load.PolicyBundle, clock: Clock
) -> PipelineFactory:
    def factory(
        store: GrantStore | None = None,
        bind_peer: bool = False,
        max_chain_depth: int = 4,
        audit: Any = None,
        observer: Any = None,
        spiffe_id_template: str = "",
        registry: AgentRegistry | None = None,
        deadline: float | None = None,
    ) -> Pipeline:
        return assemble(
            ident=IdentitySettings(
                max_chain_depth=max_chain_depth,
                bind_peer=bind_peer,
                spiffe_id_template=spiffe_id_template,
            ),
            keys=keys_for(issuer, rs_issuer),
            bundle=bundle,
            registry=registry if registry is not None else SeededRegistry(bundle.agents),
            store=store if store is not None else EmbeddedGrantStore(clock),
            audit=audit if audit is not None else MemoryAudit(),
            observer=observer,
            clock=clock,
            deadline=deadline,
        )

    return factory


def check_input(
    token: str | None,
    method: str = "GET",
    path: str = "/patients/p-1001/records",
    headers: dict[str, list[str]] | None = None,
    peer: str = "",
) -> CheckInput:
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["authorization"] = [f"Bearer {token}"]
    path, _ = split_target(path)  # as the Envoy adapter does
    return CheckInput(
        method=method, path=path, host="ehr.local", headers=all_headers, peer_principal=peer
    )


def grant(
    agent: str = "scribe",
    user: str = "dr-alice",
    actions: tuple[str, ...] = ("read",),
    resources: tuple[str, ...] = ('Patient::"p-1001"',),
    purpose: str = PURPOSE,
    ttl: int = 900,
    max_uses: int = 0,
    now: float | None = None,
) -> Grant:
    issued = int(now if now is not None else time.time())
    return Grant(
        id=f"g-test-{agent}-{issued}-{ttl}-{max_uses}",
        agent=agent,
        user=user,
        actions=actions,
        resources=resources,
        purpose=purpose,
        issued_by="test",
        issued_at=issued,
        expires_at=issued + ttl,
        max_uses=max_uses,
    )


__all__ = ["ADMIN_AUDIENCE", "PURPOSE", "check_input", "grant", "keys_for", "rules"]
