"""`lasthop demo` end to end: Envoy + Lasthop on the embedded store + the demo EHR."""

from __future__ import annotations

import re

import pytest

from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration

EXPECTED = [
    ("403", "no_grant"),
    ("200", "allowed"),
    ("200", "allowed"),
    ("403", "billing_not_clinical"),
    ("401", "missing_token"),
    ("403", "no_grant"),
    # the MCP part: the SDK's client through Envoy to the SDK's server
    ("200", "allowed"),
    ("403", "no_grant"),
    ("403", "billing_not_clinical"),
    ("403", "history_too_long"),
]


def test_demo_runs_the_scenario() -> None:
    result = run_cli("demo", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = re.findall(r"^\s*-> (\d{3}) (\S+)\s*$", result.stdout, re.MULTILINE)
    assert outcomes == EXPECTED, result.stdout
    # The chained call shows the whole chain, and revocation happens before the last step.
    assert "upstream saw chain=dr-alice,orchestrator,scribe" in result.stdout
    revoked = result.stdout.index("revokes")
    assert result.stdout.index("-> 403 no_grant", revoked) > revoked
    assert "the MCP server saw chain=dr-alice,scribe" in result.stdout
    assert "(MCP tools/call get_patient_record)" in result.stdout
    assert "Traceback" not in result.stderr
    # The trail verifies, and dr-alice's disclosures are exactly the three allowed reads
    # (two HTTP, one tool call), the decisions whose receipts the upstream got.
    assert "ok: every hash, the sequence and every signature verify" in result.stdout
    receipts = re.findall(r"signed receipt for decision ([0-9a-f]{32}), verified", result.stdout)
    disclosed = re.findall(
        r"^\| \S+ \| scribe \(owner dr-alice\) \|.* \| ([0-9a-f]{32}) \|$",
        result.stdout,
        re.MULTILINE,
    )
    assert len(receipts) == 3 and disclosed == receipts
    assert "naming tool get_patient_record" in result.stdout
