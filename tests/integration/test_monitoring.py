"""The shipped alert rules and dashboard parse, and name only metrics Lasthop exports.

Every metric comes from a running server's /metrics, except the posture gauges
(`lasthop_posture_*`), which `lasthop posture --metrics-file` writes.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import PURPOSE, Stack, run_cli, unique

pytestmark = pytest.mark.integration

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def _alert_exprs() -> list[str]:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] and rule["expr"] and rule["labels"]["severity"]
    return [rule["expr"] for rule in rules]


def _dashboard_exprs() -> list[str]:
    doc = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel["targets"]]


def _named(exprs: list[str], prefix: str = "lasthop|process") -> set[str]:
    names = set()
    for expr in exprs:
        for name in re.findall(rf"\b(?:{prefix})_[a-z_]+\b(?!\s*[=!])", expr):
            for suffix in SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
            names.add(name)
    return names


def test_the_alert_rules_cover_what_an_sre_pages_on() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert {
        "LasthopCheckLatencyOverBudget",
        "LasthopDenyRateSpike",
        "LasthopAuditUnavailable",
        "LasthopStoreUnavailable",
        "LasthopPolicyReloadFailing",
        "LasthopDown",
        "EnvoyExtAuthzErrors",
        "EnvoyExtAuthzTimeouts",
    } <= alerts


def test_the_rules_cover_detections_containment_and_posture() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert {
        "LasthopAgentContained",
        "LasthopThreatDetected",
        "LasthopContainmentFailing",
        "LasthopPostureCritical",
    } <= alerts
    dashboard = " ".join(_dashboard_exprs())
    for name in ("lasthop_detections_total", "lasthop_detect_containment_seconds_bucket",
                 "lasthop_posture_findings"):  # fmt: skip
        assert name in dashboard, name


def test_every_metric_the_rules_and_dashboard_name_exists(stack: Stack, tmp_path: Path) -> None:
    user = unique("u-monitoring")
    stack.grant(user)
    assert (
        stack.get("/patients/p-1001/records", stack.token(user, ["scribe"], purpose=PURPOSE)).status
        == 200
    )
    url = f"http://{stack.lasthop.ready['metrics_listen']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        exposition = resp.read().decode()
    exported = set(re.findall(r"^# TYPE ((?:lasthop|process)_[a-z_]+) ", exposition, flags=re.M))
    gauges = tmp_path / "posture.prom"
    posture = run_cli("posture", "--config", str(stack.config), "--metrics-file", str(gauges))
    assert posture.returncode == 0, posture.stderr
    exported |= set(re.findall(r"^# TYPE (lasthop_[a-z_]+) ", gauges.read_text(), flags=re.M))
    named = _named(_alert_exprs()) | _named(_dashboard_exprs())
    assert named, "the rules and the dashboard name no metric"
    assert named <= exported, f"named but not exported: {sorted(named - exported)}"


def test_every_envoy_metric_the_rules_name_exists_on_a_real_envoy(stack: Stack) -> None:
    stack.get("/patients/p-1001/records")
    url = f"http://127.0.0.1:{stack.envoy.admin_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as resp:
        exposition = resp.read().decode()
    exported = set(re.findall(r"^# TYPE (envoy_[a-z_0-9]+) ", exposition, flags=re.M))
    named = _named(_alert_exprs(), prefix="envoy")
    assert {"envoy_http_ext_authz_error", "envoy_cluster_upstream_rq_timeout"} <= named
    assert named <= exported, f"named but not exported: {sorted(named - exported)}"
    assert re.search(
        r'^envoy_cluster_upstream_rq_timeout\{envoy_cluster_name="lasthop"\}', exposition, re.M
    )
