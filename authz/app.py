"""Wiring: settings -> the objects a server (or an offline check) runs with.

Everything here happens once, at start-up; any error stops start-up with a
message that names the config key or the policy file and line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from authz import audit_setup, jwks, policy_load
from authz.audit_log import AuditLog
from authz.cache import CachingGrantStore, CachingRegistry, Invalidation
from authz.config import Settings
from authz.decision_cache import DecisionCache, Generation
from authz.errors import StoreUnavailable
from authz.grants import EmbeddedGrantStore, GrantStore
from authz.identity import ACCESS_TOKEN_TYPES, TXN_TOKEN_TYPES, AccessTokenVerifier, IdentityRules
from authz.intent import IntentReader
from authz.metrics import Metrics
from authz.model import RiskTiers
from authz.pipeline import Pipeline, PipelineOptions
from authz.redis_store import RedisStore
from authz.registry import AgentRegistry, AgentStore, EmbeddedAgentStore, StoreRegistry, seed

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    pipeline: Pipeline
    keys: jwks.StaticKeys
    store: GrantStore  # what checks and the admin API use (cached when on Redis)
    agents: AgentStore  # the registry's store
    registry: AgentRegistry  # what checks use (cached when on Redis)
    audit: AuditLog
    metrics: Metrics
    admin_rules: IdentityRules
    receipts_jwks: dict[str, object]  # served at /.well-known/lasthop-receipts.json
    redis: RedisStore | None = None
    invalidation: Invalidation | None = None

    async def seed_registry(self, bundle: policy_load.PolicyBundle) -> None:
        added = await seed(self.agents, bundle.agents, int(time.time()))
        if added:
            log.info("registry: seeded %s from entities.json", ", ".join(added))

    async def install(self, bundle: policy_load.PolicyBundle) -> None:
        """Put a new policy bundle into force: new seed agents first, then the whole set."""
        try:
            await self.seed_registry(bundle)
        except StoreUnavailable as err:
            log.error("registry seed after reload failed: %s; policies still reloaded", err)
        self.pipeline.bundle = bundle


def identity_rules(settings: Settings) -> tuple[IdentityRules, IdentityRules, IdentityRules]:
    """(access token, txn-token, admin token) verification rules."""
    ident = settings.identity
    base = dict(
        algorithms=frozenset(ident.algorithms),
        leeway=ident.leeway_seconds,
        max_lifetime=ident.max_token_lifetime,
    )
    access = IdentityRules(
        issuers=frozenset({ident.issuer}),
        audiences=frozenset(ident.audiences),
        types=ACCESS_TOKEN_TYPES,
        **base,
    )  # type: ignore[arg-type]
    txn = IdentityRules(
        issuers=frozenset(ident.txn_token_issuers or (ident.issuer,)),
        audiences=frozenset(ident.audiences),
        types=TXN_TOKEN_TYPES,
        **base,
    )  # type: ignore[arg-type]
    admin = IdentityRules(
        issuers=frozenset({ident.issuer}),
        audiences=frozenset({settings.admin.audience}),
        types=ACCESS_TOKEN_TYPES,
        **base,
    )  # type: ignore[arg-type]
    return access, txn, admin


def build(settings: Settings, registry: CollectorRegistry | None = None) -> App:
    ident = settings.identity
    keys = jwks.load(ident.jwks, settings.base_dir, ident.algorithms, ident.jwks_refresh_seconds)
    bundle = policy_load.load(settings.path(settings.policies.dir))
    clock = time.time
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    st = settings.store
    store: GrantStore
    agent_store: AgentStore
    agents: AgentRegistry
    redis, inval = None, None
    freshness: Callable[[], int | None]
    if st.redis_url:
        redis = RedisStore(
            st.redis_url,
            st.timeout_ms,
            cluster=st.redis_cluster,
            revoke_replicas=st.revoke_replicas,
            revoke_wait_ms=st.revoke_wait_ms,
            metrics=metrics,
        )
        agent_store = redis
        if st.cache_ttl_ms > 0:
            inval = Invalidation(redis, st.cache_ttl_ms / 1000, metrics)
            store, agents = CachingGrantStore(redis, inval), CachingRegistry(redis, inval)
            live = inval

            def freshness() -> int | None:
                return live.generation if live.live else None
        else:
            store, agents = redis, StoreRegistry(redis)

            def freshness() -> int | None:
                return None
    else:
        generation = Generation()
        store = EmbeddedGrantStore(clock, generation)
        agent_store = EmbeddedAgentStore(generation)
        agents = StoreRegistry(agent_store)

        def freshness() -> int | None:
            return generation.value

    audit = audit_setup.build(settings, clock)
    audit_log = audit.log
    metrics.audit_queue.set_function(lambda: audit_log.depth)
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
        options=PipelineOptions(
            max_chain_depth=ident.max_chain_depth,
            bind_peer=ident.bind_peer,
            trust_domain=ident.spiffe_trust_domain,
            dry_run=settings.policies.mode == "dry-run",
            tiers=RiskTiers(settings.registry.medium_risk_from, settings.registry.high_risk_from),
        ),
        clock=clock,
        decisions=DecisionCache(freshness) if st.cache_ttl_ms > 0 else None,
        receipts=audit.receipts,
    )
    if settings.policies.mode == "dry-run":
        log.warning(
            "DRY RUN: policy and grant denials are logged and NOT enforced "
            "(policies.mode = dry-run)"
        )
    return App(
        settings=settings,
        pipeline=pipeline,
        keys=keys,
        store=store,
        agents=agent_store,
        registry=agents,
        audit=audit.log,
        metrics=metrics,
        admin_rules=admin,
        receipts_jwks=audit.jwks,
        redis=redis,
        invalidation=inval,
    )
