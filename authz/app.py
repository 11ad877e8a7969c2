"""Wiring: settings -> the objects a server (or an offline check) runs with.

Everything here happens once, at start-up; any error stops start-up with a
message that names the config key or the policy file and line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from authz import audit_setup, jwks, policy_load
from authz.audit_log import AuditLog
from authz.config import Settings
from authz.grants import EmbeddedGrantStore, GrantStore
from authz.identity import ACCESS_TOKEN_TYPES, TXN_TOKEN_TYPES, AccessTokenVerifier, IdentityRules
from authz.intent import IntentReader
from authz.metrics import Metrics
from authz.pipeline import Pipeline, PipelineOptions
from authz.redis_store import RedisGrantStore
from authz.registry import SeededRegistry


@dataclass
class App:
    settings: Settings
    pipeline: Pipeline
    keys: jwks.StaticKeys
    store: GrantStore
    registry: SeededRegistry
    audit: AuditLog
    metrics: Metrics
    admin_rules: IdentityRules
    receipts_jwks: dict[str, object]  # served at /.well-known/lasthop-receipts.json


def identity_rules(settings: Settings) -> tuple[IdentityRules, IdentityRules, IdentityRules]:
    """(access token, txn-token, admin token) verification rules."""
    ident = settings.identity
    base = dict(
        algorithms=frozenset(ident.algorithms),
        leeway=ident.leeway_seconds,
        max_lifetime=ident.max_token_lifetime,
    )
    access = IdentityRules(issuers=frozenset({ident.issuer}),
                           audiences=frozenset(ident.audiences),
                           types=ACCESS_TOKEN_TYPES, **base)  # type: ignore[arg-type]
    txn = IdentityRules(issuers=frozenset(ident.txn_token_issuers or (ident.issuer,)),
                        audiences=frozenset(ident.audiences),
                        types=TXN_TOKEN_TYPES, **base)  # type: ignore[arg-type]
    admin = IdentityRules(issuers=frozenset({ident.issuer}),
                          audiences=frozenset({settings.admin.audience}),
                          types=ACCESS_TOKEN_TYPES, **base)  # type: ignore[arg-type]
    return access, txn, admin


def build(settings: Settings, registry: CollectorRegistry | None = None) -> App:
    ident = settings.identity
    keys = jwks.load(ident.jwks, settings.base_dir, ident.algorithms, ident.jwks_refresh_seconds)
    bundle = policy_load.load(settings.path(settings.policies.dir))
    agents = SeededRegistry(bundle.agents)
    clock = time.time
    store: GrantStore
    if settings.store.redis_url:
        store = RedisGrantStore(settings.store.redis_url, settings.store.timeout_ms)
    else:
        store = EmbeddedGrantStore(clock)
    audit = audit_setup.build(settings, clock)
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    metrics.policy_version.labels(bundle.version).set(1)
    access, txn, admin = identity_rules(settings)
    pipeline = Pipeline(
        verifier=AccessTokenVerifier(keys, access, clock),
        intent=IntentReader(keys, txn, clock),
        registry=agents,
        bundle=bundle,
        store=store,
        audit=audit.log,
        metrics=metrics,
        options=PipelineOptions(max_chain_depth=ident.max_chain_depth,
                                bind_peer=ident.bind_peer),
        clock=clock,
        receipts=audit.receipts,
    )
    return App(settings=settings, pipeline=pipeline, keys=keys, store=store, registry=agents,
               audit=audit.log, metrics=metrics, admin_rules=admin, receipts_jwks=audit.jwks)
