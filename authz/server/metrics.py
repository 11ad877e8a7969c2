"""Prometheus metrics. Labels come only from closed sets (kind, decision, reason, phase, op), never
ids.

`Metrics` is what the pipeline, the stores and the policy watcher report to
(it implements their observer protocols); each takes a registry, so each
test can use a fresh one.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from authz import version
from authz.access.hooks import OUTCOMES
from authz.access.webhook import RESULTS
from authz.check.keys import RESULTS as KEY_RESULTS
from authz.check.pipeline import PHASES
from authz.config import RESPONSES
from authz.detect.detectors import KINDS as DETECTOR_KINDS
from authz.detect.respond import ACTIONS
from authz.model import KINDS, CheckInput, Decision
from authz.reasons import Reason

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# 100 us to 1 s: fine below 5 ms where the budget is, coarse above.
CHECK_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
# 1 ms to 30 s: from the check that crossed a threshold to the suspension in the store.
CONTAINMENT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


# Every label value each labelled counter can take: its series start at 0, so a rate or an
# `increase()` sees the first event after a restart (a series born at 1 shows no increase).
RELOAD_RESULTS = ("success", "failure")
CACHES = ("decisions", "grants", "agents")  # lasthop_cache_requests_total{cache}
# lasthop_store_*{op}: the check path's own reads and counted uses apart, the rest by kind
STORE_OPS = ("grants", "consume", "agent", "agents", "read", "write", "ping", "detect")


class CacheSizes(Collector):
    """`lasthop_cache_entries{cache}`: each bounded cache's size, read at scrape time."""

    def __init__(self, sizes: Mapping[str, Callable[[], int]]) -> None:
        self._sizes = dict(sizes)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "lasthop_cache_entries", "Entries held by each bounded cache.", labels=["cache"]
        )
        for name, size in self._sizes.items():
            family.add_metric([name], size())
        yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        _standard_collectors(registry)
        self.build_info = Gauge(
            "lasthop_build_info",
            "The running build: always 1.",
            ["version", "python"],
            registry=registry,
        )
        self.build_info.labels(version(), platform.python_version()).set(1)
        self.latency_budget = Gauge(
            "lasthop_check_latency_budget_seconds",
            "The p99 check latency budget (server.latency_budget_ms) the alerts compare with.",
            registry=registry,
        )
        self.check_duration = Histogram(
            "lasthop_check_duration_seconds",
            "Time to decide one ext_authz Check, by what it decided.",
            ["kind"],
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "lasthop_decisions_total",
            "Decisions by what they decided, outcome and reason.",
            ["kind", "decision", "reason"],
            registry=registry,
        )
        # (kind, allowed, reason) -> its series, looked up once: labels() costs more than inc()
        self._decided: dict[tuple[str, bool, str], Counter] = {}
        self._durations = {kind: self.check_duration.labels(kind) for kind in KINDS}
        for kind in KINDS:  # every series exists from the start, at 0
            for reason in Reason:
                self._decision_series(kind, reason.status == 200, reason)
        self.in_flight = Gauge(
            "lasthop_checks_in_flight", "Checks being decided now.", registry=registry
        )
        self.shadow_disagreements = Counter(
            "lasthop_shadow_disagreements_total",
            "Checks whose decision would change if the shadow policies were enforced.",
            registry=registry,
        )
        self.policy_reloads = Counter(
            "lasthop_policy_reload_total",
            "Policy reloads by result.",
            ["result"],
            registry=registry,
        )
        for result in RELOAD_RESULTS:
            self.policy_reloads.labels(result)
        self.cache_requests = Counter(
            "lasthop_cache_requests_total",
            "Local cache lookups by cache and result.",
            ["cache", "result"],
            registry=registry,
        )
        for cache in CACHES:
            for result in ("hit", "miss"):
                self.cache_requests.labels(cache, result)
        self._decision_cache = {
            cached: self.cache_requests.labels("decisions", "hit" if cached else "miss")
            for cached in (True, False)
        }
        self.phase_duration = Histogram(
            "lasthop_phase_duration_seconds",
            "Time spent in one phase of a decided check.",
            ["phase"],
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.phases = {name: self.phase_duration.labels(name) for name in PHASES}
        self.store_duration = Histogram(
            "lasthop_store_duration_seconds",
            "Redis round trips by operation.",
            ["op"],
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            "lasthop_store_errors_total",
            "Redis operations that failed, by operation.",
            ["op"],
            registry=registry,
        )
        for op in STORE_OPS:
            self.store_duration.labels(op)
            self.store_errors.labels(op)
        self.audit_queue = Gauge(
            "lasthop_audit_queue_depth", "Records waiting for the audit writer.", registry=registry
        )
        self.audit_batch_records = Histogram(
            "lasthop_audit_batch_records",
            "Records per audit write (group commit): one fsync, one receipt signature each.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.audit_commit_duration = Histogram(
            "lasthop_audit_commit_seconds",
            "Time to seal, write and (with audit.fsync = always) fsync one batch.",
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.jwks_reloads = Counter(
            "lasthop_jwks_reload_total",
            "Reloads of the issuer's JWKS (scheduled, or for an unknown kid), by result.",
            ["result"],
            registry=registry,
        )
        for result in KEY_RESULTS:
            self.jwks_reloads.labels(result)
        self.jwks_age = Gauge(
            "lasthop_jwks_age_seconds",
            "Seconds since the issuer's JWKS was last loaded or confirmed unchanged.",
            registry=registry,
        )
        self.policy_version = Gauge(
            "lasthop_policy_version_info",
            "The policy set in force.",
            ["version"],
            registry=registry,
        )
        self.access_requests = Counter(
            "lasthop_access_requests_total",
            "Access requests by what became of them: approved_by_policy, pending or refused "
            "when made; approved, denied, expired or cancelled later.",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.access_requests.labels(outcome)
        self.break_glass_requests = Counter(
            "lasthop_break_glass_requests_total",
            "Break-glass (emergency) access requests, whatever their outcome.",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "lasthop_webhook_deliveries_total",
            "Access webhook tries: delivered, retried (a try failed, another follows), failed.",
            ["result"],
            registry=registry,
        )
        for result in RESULTS:
            self.webhook_deliveries.labels(result)
        self._detect_metrics(registry)

    def _detect_metrics(self, registry: CollectorRegistry) -> None:
        self.detections = Counter(
            "lasthop_detections_total",
            "Detections that fired (claimed fleet-wide), by detector, kind and response.",
            ["detector", "kind", "response"],
            registry=registry,
        )
        for detector, kinds in DETECTOR_KINDS.items():
            for kind in kinds:
                for response in RESPONSES:
                    self.detections.labels(detector, kind, response)
        self.detect_actions = Counter(
            "lasthop_detect_actions_total",
            "Automatic responses carried out (ok) or refused by the store, trail or webhook "
            "(failed; containment is retried until it succeeds).",
            ["action", "result"],
            registry=registry,
        )
        for action in ACTIONS:
            for result in ("ok", "failed"):
                self.detect_actions.labels(action, result)
        self.containment = Histogram(
            "lasthop_detect_containment_seconds",
            "From the check that crossed a threshold to the agent's suspension in the store.",
            buckets=CONTAINMENT_BUCKETS,
            registry=registry,
        )
        self.window_failures = Counter(
            "lasthop_detect_window_failures_total",
            "Batches of checks the detection windows could not count (store down or queue full).",
            registry=registry,
        )

    # the pipeline (check.pipeline.CheckObserver)

    def started(self, req: CheckInput) -> str:
        self.in_flight.inc()
        return ""

    def phase(self, name: str, seconds: float) -> None:
        self.phases[name].observe(seconds)

    def decided(self, decision: Decision, seconds: float, cached: bool) -> None:
        kind = decision.kind
        self._durations[kind].observe(seconds)
        self._decision_series(kind, decision.allowed, decision.reason).inc()
        self._decision_cache[cached].inc()
        if decision.shadow_disagrees:
            self.shadow_disagreements.inc()

    def ended(self) -> None:
        self.in_flight.dec()

    def _decision_series(self, kind: str, allowed: bool, reason: str) -> Counter:
        series = self._decided.get((kind, allowed, reason))
        if series is None:
            label = "allow" if allowed else "deny"
            series = self.decisions.labels(kind, label, reason)
            self._decided[(kind, allowed, reason)] = series
        return series

    # the stores (stores.protocols.StoreObserver)

    def store_call(self, op: str, seconds: float, failed: bool) -> None:
        self.store_duration.labels(op).observe(seconds)
        if failed:
            self.store_errors.labels(op).inc()

    def cache_lookup(self, cache: str, hit: bool) -> None:
        self.cache_requests.labels(cache, "hit" if hit else "miss").inc()

    # the issuer's keys (check.keys.KeysObserver)

    def keys_reloaded(self, result: str) -> None:
        self.jwks_reloads.labels(result).inc()

    # the audit writer (audit.writer.WriterObserver), from its own thread

    def audit_batch(self, records: int, commit_seconds: float) -> None:
        self.audit_batch_records.observe(records)
        self.audit_commit_duration.observe(commit_seconds)

    # the policy watcher (policy.reload.ReloadObserver)

    def reloaded(self, result: str, old_version: str, new_version: str) -> None:
        self.policy_reloads.labels(result).inc()
        if result == "success":
            self.policy_version.labels(old_version).set(0)
            self.policy_version.labels(new_version).set(1)

    # detection (detect.detectors.DetectObserver)

    def detected(self, detector: str, kind: str, response: str) -> None:
        self.detections.labels(detector, kind, response).inc()

    def acted(self, action: str, ok: bool) -> None:
        self.detect_actions.labels(action, "ok" if ok else "failed").inc()

    def contained(self, seconds: float) -> None:
        self.containment.observe(seconds)

    def windows_failed(self) -> None:
        self.window_failures.inc()

    # access requests (access.requests.AccessObserver, access.webhook.WebhookObserver)

    def access_outcome(self, outcome: str) -> None:
        self.access_requests.labels(outcome).inc()

    def break_glass(self) -> None:
        self.break_glass_requests.inc()

    def webhook(self, result: str) -> None:
        self.webhook_deliveries.labels(result).inc()


def _standard_collectors(registry: CollectorRegistry) -> None:
    """process_* (CPU, memory, open files), python_info and python_gc_*, as the default
    registry has them; Lasthop's own registry needs them added."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
