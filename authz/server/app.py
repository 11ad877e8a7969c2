"""The composition root: settings -> everything a server, an offline check or a test runs with.

`build` wires a server: keys, policies, stores, audit, metrics, the pipeline,
the admin services and the background tasks. `assemble` is the one place a
`Pipeline` is constructed; `build`, the offline check (`server.offline`),
the tests and the benchmarks all go through it, so they run the same
decision path. Everything here happens once, at start-up; any error stops
start-up with a message that names the config key or the policy file and line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from authz.access.requests import AccessRequests
from authz.access.webhook import Webhook, read_secret
from authz.audit import setup as audit_setup
from authz.audit.receipts import ReceiptSigner
from authz.audit.records import AuditSink
from authz.audit.writer import AuditLog
from authz.check import keys as jwks
from authz.check.decisions import DecisionCache
from authz.check.identity import (
    ACCESS_TOKEN_TYPES,
    TXN_TOKEN_TYPES,
    AccessTokenVerifier,
    IdentityRules,
)
from authz.check.intent import IntentReader
from authz.check.pipeline import CheckObserver, Detector, Pipeline, PipelineOptions
from authz.config import (
    DEFAULT_METHOD_OVERRIDES,
    ConnectionsSettings,
    IdentitySettings,
    Settings,
    spiffe_binding,
)
from authz.detect.monitor import Monitor
from authz.detect.respond import WEBHOOK_ATTEMPTS, Responder, WebhookReport
from authz.errors import ConfigError, StoreUnavailable
from authz.model import DEFAULT_TIERS, RiskTiers
from authz.policy import load as policy_load
from authz.policy.reload import PolicyWatcher
from authz.server import tls
from authz.server.admin_access import AccessService
from authz.server.admin_agents import AgentsService
from authz.server.admin_grants import AdminAuth, GrantsService
from authz.server.metrics import CacheSizes, Metrics
from authz.server.reseed import RegistryKeeper
from authz.stores.caching import CachingGrantStore, CachingRegistry
from authz.stores.embedded import EmbeddedAgentStore, EmbeddedGrantStore, Generation
from authz.stores.invalidation import Invalidation
from authz.stores.protocols import AccessStore, AgentRegistry, AgentStore, GrantStore
from authz.stores.redis_store import RedisStore, redis_topology
from authz.stores.redis_windows import RedisWindows
from authz.stores.registry import StoreRegistry, seed
from authz.stores.requests import EmbeddedAccessStore, RedisAccessStore
from authz.stores.windows import EmbeddedWindows, Windows

log = logging.getLogger(__name__)

Task = Callable[[], Coroutine[Any, Any, None]]
EMBEDDED_STORE = "embedded (single process only: grants and agents live in this process)"


@dataclass
class Stores:
    grants: GrantStore  # what checks use (cached when on Redis)
    admin_grants: GrantStore  # what the admin and access APIs use (a longer timeout on Redis)
    agents: AgentStore  # the registry's store, for the admin API and seeding
    registry: AgentRegistry  # what checks read agents through (cached when on Redis)
    freshness: Callable[[], int | None]  # the decision cache's store generation
    access: AccessStore  # access requests and task bindings
    redis: RedisStore | None = None  # the check path's client
    admin_redis: RedisStore | None = None  # the admin and access APIs' client
    invalidation: Invalidation | None = None


@dataclass
class App:
    settings: Settings
    pipeline: Pipeline
    keys: jwks.ReloadingKeys
    stores: Stores
    audit: AuditLog
    metrics: Metrics
    grants_service: GrantsService
    agents_service: AgentsService
    access: AccessRequests
    access_service: AccessService
    receipts_jwks: dict[str, object]  # served at /.well-known/lasthop-receipts.json
    background: list[Task] = field(default_factory=list)  # run by `serve` until shutdown
    on_shutdown: list[Callable[[], None]] = field(default_factory=list)  # after the trail
    authz_tls: grpc.ServerCredentials | None = None  # server.tls_*: None is plaintext
    admin_tls: grpc.ServerCredentials | None = None  # server.admin_tls_*
    monitor: Monitor | None = None  # the detectors (`detect.enabled`)

    def summary(self) -> dict[str, str]:
        """What this server runs with, for the ready line and the first log lines."""
        audit = self.settings.audit
        return {
            "store": store_topology(self.settings),
            "policy_version": self.pipeline.bundle.version,
            "audit_path": str(audit_setup.trail_path(self.settings)),
            "audit_fsync": audit.fsync,
            "tracing": tracing_summary(self.settings),
        }

    @property
    def store(self) -> GrantStore:
        return self.stores.grants

    @property
    def agents(self) -> AgentStore:
        return self.stores.agents

    @property
    def registry(self) -> AgentRegistry:
        return self.stores.registry

    @property
    def redis(self) -> RedisStore | None:
        return self.stores.redis

    async def seed_registry(self, bundle: policy_load.PolicyBundle) -> None:
        added = await seed(self.agents, bundle.agents, int(time.time()))
        if added:
            log.info(
                "registry: seeded %s from entities.json",
                ", ".join(added),
                extra={"event": "registry.seeded"},
            )

    async def install(self, bundle: policy_load.PolicyBundle) -> None:
        """Put a new policy bundle into force: new seed agents first, then the whole set."""
        try:
            await self.seed_registry(bundle)
        except StoreUnavailable as err:
            log.error(
                "registry seed after reload failed: %s; policies still reloaded",
                err,
                extra={"event": "registry.seed_failed"},
            )
        self.pipeline.bundle = bundle


def identity_rules(
    ident: IdentitySettings, admin_audience: str = ""
) -> tuple[IdentityRules, IdentityRules, IdentityRules]:
    """(access token, txn-token, admin token) verification rules."""
    algorithms = frozenset(ident.algorithms)
    audiences = frozenset(ident.audiences)

    def rules(
        issuers: tuple[str, ...], auds: frozenset[str], types: frozenset[str]
    ) -> IdentityRules:
        return IdentityRules(
            issuers=frozenset(issuers),
            audiences=auds,
            algorithms=algorithms,
            types=types,
            leeway=ident.leeway_seconds,
            max_lifetime=ident.max_token_lifetime,
        )

    return (
        rules((ident.issuer,), audiences, ACCESS_TOKEN_TYPES),
        rules(ident.txn_token_issuers or (ident.issuer,), audiences, TXN_TOKEN_TYPES),
        rules((ident.issuer,), frozenset({admin_audience}), ACCESS_TOKEN_TYPES),
    )


def assemble(
    *,
    ident: IdentitySettings,
    keys: jwks.KeySource,
    bundle: policy_load.PolicyBundle,
    registry: AgentRegistry,
    store: GrantStore,
    audit: AuditSink,
    observer: CheckObserver | None = None,
    clock: Callable[[], float] = time.time,
    dry_run: bool = False,
    tiers: RiskTiers = DEFAULT_TIERS,
    decisions: DecisionCache | None = None,
    receipts: ReceiptSigner | None = None,
    detect: Detector | None = None,
    method_overrides: tuple[str, ...] = DEFAULT_METHOD_OVERRIDES,
    deadline: float | None = None,
    connection_max_seconds: int = ConnectionsSettings.max_duration_seconds,
) -> Pipeline:
    """The decision pipeline from its parts: the only place one is constructed."""
    access, txn, _ = identity_rules(ident)
    return Pipeline(
        verifier=AccessTokenVerifier(keys, access, clock),
        intent=IntentReader(keys, txn, clock),
        registry=registry,
        bundle=bundle,
        store=store,
        audit=audit,
        observer=observer,
        options=PipelineOptions(
            max_chain_depth=ident.max_chain_depth,
            bind_peer=ident.bind_peer,
            binding=spiffe_binding(ident),
            method_overrides=method_overrides,
            dry_run=dry_run,
            tiers=tiers,
            deadline=deadline,
            connection_max_seconds=connection_max_seconds,
        ),
        clock=clock,
        decisions=decisions,
        receipts=receipts,
        detect=detect,
    )


def tiers_of(settings: Settings) -> RiskTiers:
    return RiskTiers(settings.registry.medium_risk_from, settings.registry.high_risk_from)


def store_topology(settings: Settings) -> str:
    """The store in words, never with a password: what the ready line names."""
    st = settings.store
    if not st.redis_url:
        return EMBEDDED_STORE
    return redis_topology(st.redis_url, st.redis_cluster)


def tracing_summary(settings: Settings) -> str:
    t = settings.tracing
    if not t.enabled:
        return "off"
    return f"otlp {t.endpoint or 'from OTEL_EXPORTER_OTLP_ENDPOINT'}, sample ratio {t.sample_ratio}"


def observer(
    settings: Settings, metrics: Metrics
) -> tuple[CheckObserver, list[Callable[[], None]]]:
    """The metrics, with tracing in front when `tracing.enabled`; and what to flush at exit."""
    if not settings.tracing.enabled:
        return metrics, []
    try:
        from authz.server import tracing
    except ImportError as err:
        raise ConfigError(
            "tracing.enabled", f"needs OpenTelemetry: pip install 'lasthop[otel]' ({err})"
        ) from err
    provider = tracing.provider(settings.tracing)
    return tracing.TracingObserver(metrics, provider.get_tracer("lasthop")), [provider.shutdown]


def stores(settings: Settings, metrics: Metrics, clock: Callable[[], float]) -> Stores:
    """The embedded store (one process), or Redis with local caches kept by invalidation."""
    st = settings.store
    if not st.redis_url:
        generation = Generation()
        agents = EmbeddedAgentStore(generation)
        grants = EmbeddedGrantStore(clock, generation)
        return Stores(
            grants=grants,
            admin_grants=grants,
            agents=agents,
            registry=StoreRegistry(agents),
            freshness=lambda: generation.value,
            access=EmbeddedAccessStore(clock),
        )
    # Two clients: the check path's, with `store.timeout_ms` (tight, inside Envoy's budget),
    # and the admin and access APIs', with `store.admin_timeout_ms` (a grant issued or
    # revoked on a busy Redis should not fail for taking 60 ms).
    redis, admin = (
        _redis(settings, timeout, metrics) for timeout in (st.timeout_ms, st.admin_timeout_ms)
    )
    access = RedisAccessStore(admin, clock)
    if st.cache_ttl_ms <= 0:
        return Stores(redis, admin, admin, StoreRegistry(redis), lambda: None, access, redis, admin)
    inval = Invalidation(redis, st.cache_ttl_ms / 1000, metrics)
    return Stores(
        grants=CachingGrantStore(redis, inval),
        admin_grants=CachingGrantStore(admin, inval),
        agents=admin,
        registry=CachingRegistry(redis, inval),
        freshness=lambda: inval.generation if inval.live else None,
        access=access,
        redis=redis,
        admin_redis=admin,
        invalidation=inval,
    )


def _redis(settings: Settings, timeout_ms: int, metrics: Metrics) -> RedisStore:
    st = settings.store
    return RedisStore(
        st.redis_url,
        timeout_ms,
        cluster=st.redis_cluster,
        revoke_replicas=st.revoke_replicas,
        revoke_wait_ms=st.revoke_wait_ms,
        observer=metrics,
        use_replicas=st.use_replicas,
        sentinel_password=st.sentinel_password,
    )


def build(settings: Settings, registry: CollectorRegistry | None = None) -> App:
    ident = settings.identity
    clock = time.time
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    keys = jwks.load(ident, settings.base_dir, metrics)
    metrics.jwks_age.set_function(lambda: time.time() - keys.loaded_at)
    bundle = policy_load.load(settings.path(settings.policies.dir))
    store = stores(settings, metrics, clock)
    audit = audit_setup.build(settings, clock, metrics)
    audit_log = audit.log
    metrics.audit_queue.set_function(lambda: audit_log.depth)
    metrics.policy_version.labels(bundle.version).set(1)
    metrics.latency_budget.set(settings.server.latency_budget_ms / 1000)
    check_observer, flush = observer(settings, metrics)
    tiers = tiers_of(settings)
    monitor = detection(settings, store, audit.log, metrics, clock)
    pipeline = assemble(
        ident=ident,
        keys=keys,
        bundle=bundle,
        registry=store.registry,
        store=store.grants,
        audit=audit.log,
        observer=check_observer,
        clock=clock,
        dry_run=settings.policies.mode == "dry-run",
        tiers=tiers,
        decisions=(
            DecisionCache(
                _freshness(store, monitor), overrides=settings.server.method_override_headers
            )
            if settings.store.cache_ttl_ms > 0
            else None
        ),
        receipts=audit.receipts,
        method_overrides=settings.server.method_override_headers,
        detect=monitor,
        deadline=settings.server.check_deadline_ms / 1000,
        connection_max_seconds=settings.connections.max_duration_seconds,
    )
    if settings.policies.mode == "dry-run":
        log.warning(
            "DRY RUN: policy and grant denials are logged and NOT enforced "
            "(policies.mode = dry-run)",
            extra={"event": "policy.dry_run"},
        )
    grants_service, agents_service = _admin_services(settings, keys, store, pipeline, audit.log)
    access, access_service = _access(settings, keys, store, pipeline, audit.log, metrics, monitor)
    app = App(
        settings=settings,
        pipeline=pipeline,
        keys=keys,
        stores=store,
        audit=audit.log,
        metrics=metrics,
        grants_service=grants_service,
        agents_service=agents_service,
        access=access,
        access_service=access_service,
        receipts_jwks=audit.jwks,
        on_shutdown=flush,
        authz_tls=_tls(settings, admin=False),
        admin_tls=_tls(settings, admin=True),
        monitor=monitor,
    )
    app.background.extend(_background(app))
    metrics.registry.register(CacheSizes(cache_sizes(app)))
    return app


def detection(
    settings: Settings,
    store: Stores,
    audit: AuditSink,
    metrics: Metrics,
    clock: Callable[[], float],
) -> Monitor | None:
    """The detectors over the store's windows (`[detect]`); None when they are off."""
    d = settings.detect
    if not d.enabled:
        return None
    windows: Windows = RedisWindows(store.redis, clock) if store.redis else EmbeddedWindows(clock)
    webhook = None
    if d.webhook_url:  # access requests' webhook, signed the same way
        webhook = Webhook(
            d.webhook_url,
            read_secret(settings.path(d.webhook_secret_file), "detect.webhook_secret_file"),
            attempts=WEBHOOK_ATTEMPTS,
            timeout=d.webhook_timeout_ms / 1000,
            observer=WebhookReport(metrics),
            clock=clock,
        )
    inval = store.invalidation
    responder = Responder(
        settings=d,
        windows=windows,
        agents=store.agents,
        grants=store.grants,
        audit=audit,
        webhook=webhook,
        observer=metrics,
        clock=clock,
        refresh=(lambda agent: inval.handle(f"agent\x00{agent}")) if inval else lambda agent: None,
    )
    return Monitor(d, windows, responder, store.registry, metrics, clock)


def _freshness(store: Stores, monitor: Monitor | None) -> Callable[[], int | None]:
    """The decision cache's generation: the store's, moved on by every local containment."""
    if monitor is None:
        return store.freshness
    base = store.freshness

    def freshness() -> int | None:
        generation = base()
        return None if generation is None else generation + monitor.generation

    return freshness


def _admin_services(
    settings: Settings, keys: jwks.KeySource, store: Stores, pipeline: Pipeline, audit: AuditLog
) -> tuple[GrantsService, AgentsService]:
    """The admin API: grants (admins and approvers) and the agent registry (admins)."""
    _, _, admin_rules = identity_rules(settings.identity, settings.admin.audience)
    clock = time.time
    grants = GrantsService(
        auth=AdminAuth(keys, admin_rules, clock),
        store=store.admin_grants,
        registry=store.registry,
        actions=lambda: pipeline.bundle.actions,
        max_ttl=settings.grants.max_ttl,
        clock=clock,
        audit=audit,
    )
    agents = AgentsService(
        auth=AdminAuth(keys, admin_rules, clock),
        agents=store.agents,
        grant_store=store.admin_grants,
        tiers=tiers_of(settings),
        clock=clock,
        audit=audit,
    )
    return grants, agents


def cache_sizes(app: App) -> dict[str, Callable[[], int]]:
    """Each bounded cache's size, for `lasthop_cache_entries{cache}`."""
    pipeline = app.pipeline
    decisions = pipeline.decisions
    sizes: dict[str, Callable[[], int]] = {
        "decisions": (lambda: len(decisions)) if decisions is not None else (lambda: 0),
        "tokens": lambda: len(pipeline.verifier),
        "cedar_outcomes": lambda: len(pipeline.policy.outcomes),
    }
    inval = app.stores.invalidation
    sizes["grants"] = (lambda: len(inval.pairs)) if inval is not None else (lambda: 0)
    sizes["agents"] = (lambda: len(inval.agents)) if inval is not None else (lambda: 0)
    return sizes


def _tls(settings: Settings, admin: bool) -> grpc.ServerCredentials | None:
    """The listener's TLS credentials, files checked now; None for plaintext."""
    files = tls.files_for(settings, admin)
    return tls.credentials(files) if files else None


def _access(
    settings: Settings,
    keys: jwks.KeySource,
    store: Stores,
    pipeline: Pipeline,
    audit: AuditLog,
    metrics: Metrics,
    monitor: Monitor | None,
) -> tuple[AccessRequests, AccessService]:
    """Access requests (agents ask, approval policies and people decide) and their API; an
    agent a detector flagged has its new access decided by a person."""
    _, _, admin_rules = identity_rules(settings.identity, settings.admin.audience)
    clock = time.time
    access = AccessRequests(
        store=store.access,
        grants=store.admin_grants,
        registry=store.registry,
        bundle=lambda: pipeline.bundle,
        audit=audit,
        settings=settings.access,
        max_ttl=settings.grants.max_ttl,
        tiers=tiers_of(settings),
        clock=clock,
        notifier=_webhook(settings, metrics),
        observer=metrics,
        containment=monitor.responder if monitor is not None else None,
    )
    auth = AdminAuth(keys, admin_rules, clock)
    return access, AccessService(auth=auth, pipeline=pipeline, requests=access)


def _webhook(settings: Settings, metrics: Metrics) -> Webhook | None:
    access = settings.access
    if not access.webhook_url:
        return None
    return Webhook(
        access.webhook_url,
        read_secret(settings.path(access.webhook_secret_file)),
        attempts=access.webhook_attempts,
        timeout=access.webhook_timeout_ms / 1000,
        observer=metrics,
    )


def _background(app: App) -> list[Task]:
    """What runs beside the listeners: invalidation, failover following, the registry's
    upkeep, key reload, policy reload, expiry of undecided access requests."""
    tasks: list[Task] = [app.access.run]
    if app.stores.invalidation is not None:
        tasks.append(app.stores.invalidation.run)
    for client in (app.stores.redis, app.stores.admin_redis):
        if client is not None and client.watch is not None:
            tasks.append(client.watch.run)  # each client follows Sentinel failovers
    if app.stores.admin_redis is not None:
        keeper = RegistryKeeper(app.stores.admin_redis, lambda: app.pipeline.bundle, app.audit)
        tasks.append(keeper.run)
    tasks.append(app.keys.refresh_forever)
    policies = app.settings.policies
    if policies.reload_interval_seconds > 0:
        watcher = PolicyWatcher(
            app.settings.path(policies.dir),
            policies.reload_interval_seconds,
            lambda: app.pipeline.bundle,
            app.install,
            app.metrics,
        )
        tasks.append(watcher.run)
    return tasks
