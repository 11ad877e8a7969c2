"""Prometheus metrics. Labels come only from closed sets (decision, reason, phase, op), never ids.

`Metrics` is what the pipeline, the stores and the policy watcher report to
(it implements their observer protocols); each takes a registry, so each
test can use a fresh one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from authz.check.pipeline import PHASES
from authz.config import RESPONSES
from authz.detect.detectors import KINDS
from authz.detect.respond import ACTIONS
from authz.model import Decision
from authz.reasons import Reason

# 100 us to 1 s: fine below 5 ms where the budget is, coarse above.
CHECK_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
# 1 ms to 30 s: from the check that crossed a threshold to the suspension in the store.
CONTAINMENT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.check_duration = Histogram(
            "lasthop_check_duration_seconds",
            "Time to decide one ext_authz Check.",
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "lasthop_decisions_total",
            "Decisions by outcome and reason.",
            ["decision", "reason"],
            registry=registry,
        )
        for reason in Reason:  # every series exists from the start, at 0
            self.decisions.labels("allow" if reason.status == 200 else "deny", reason)
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
        self.cache_requests = Counter(
            "lasthop_cache_requests_total",
            "Local cache lookups by cache and result.",
            ["cache", "result"],
            registry=registry,
        )
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
        self.audit_queue = Gauge(
            "lasthop_audit_queue_depth", "Records waiting for the audit writer.", registry=registry
        )
        self.policy_version = Gauge(
            "lasthop_policy_version_info",
            "The policy set in force.",
            ["version"],
            registry=registry,
        )
        self._detect_metrics(registry)

    def _detect_metrics(self, registry: CollectorRegistry) -> None:
        self.detections = Counter(
            "lasthop_detections_total",
            "Detections that fired (claimed fleet-wide), by detector, kind and response.",
            ["detector", "kind", "response"],
            registry=registry,
        )
        for detector, kinds in KINDS.items():
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

    def started(self) -> None:
        self.in_flight.inc()

    def phase(self, name: str, seconds: float) -> None:
        self.phases[name].observe(seconds)

    def decided(self, decision: Decision, seconds: float, cached: bool) -> None:
        self.check_duration.observe(seconds)
        self.decisions.labels("allow" if decision.allowed else "deny", decision.reason).inc()
        self.cache_requests.labels("decisions", "hit" if cached else "miss").inc()
        if decision.shadow_disagrees:
            self.shadow_disagreements.inc()

    def ended(self) -> None:
        self.in_flight.dec()

    # the stores (stores.protocols.StoreObserver)

    def store_call(self, op: str, seconds: float, failed: bool) -> None:
        self.store_duration.labels(op).observe(seconds)
        if failed:
            self.store_errors.labels(op).inc()

    def cache_lookup(self, cache: str, hit: bool) -> None:
        self.cache_requests.labels(cache, "hit" if hit else "miss").inc()

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
