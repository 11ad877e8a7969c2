"""The alert rules fire when they should (promtool), and the dashboard scopes every panel.

`promtool test rules` runs where promtool is installed (Debian and Ubuntu:
`apt-get install prometheus`); without it that test is skipped and says so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
PROMTOOL = shutil.which("promtool")


def _alerts() -> set[str]:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return {rule["alert"] for group in doc["groups"] for rule in group["rules"]}


def _rule_tests() -> list[Path]:
    return sorted((MONITORING / "tests").glob("*.yaml"))


def test_every_alert_has_a_rule_unit_test() -> None:
    tested = set()
    for path in _rule_tests():
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", [])}
    assert _alerts() - tested == set()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    assert PROMTOOL is not None
    for command in (
        [PROMTOOL, "check", "rules", "alerts.yaml"],
        [PROMTOOL, "test", "rules", *(str(p.relative_to(MONITORING)) for p in _rule_tests())],
    ):
        result = subprocess.run(command, cwd=MONITORING, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_has_namespace_and_instance_variables_every_panel_uses() -> None:
    """Issue 18: without them, in a mesh every panel summed every sidecar."""
    doc = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"namespace", "instance"} <= variables
    selectors = [
        (name, selector)
        for panel in doc["panels"]
        for target in panel["targets"]
        for name, selector in re.findall(
            r"\b((?:lasthop|process)_[a-z_]+)(\{[^}]*\})?", target["expr"]
        )
    ]
    assert selectors
    for name, selector in selectors:
        assert 'namespace=~"$namespace"' in selector, name
        # the posture gauges are the fleet's (one `lasthop posture` run), no sidecar's
        if not name.startswith("lasthop_posture_"):
            assert 'instance=~"$instance"' in selector, name
