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
]


def test_demo_runs_the_scenario() -> None:
    result = run_cli("demo", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = re.findall(r"^\s*-> (\d{3}) (\S+)\s*$", result.stdout, re.MULTILINE)
    assert outcomes == EXPECTED, result.stdout
    # The chained call shows the whole chain, and revocation happens before the last step.
    assert "upstream saw chain=dr-alice,orchestrator,scribe" in result.stdout
    revoked = result.stdout.index("revokes")
    assert result.stdout.rindex("-> 403 no_grant") > revoked
    assert "Traceback" not in result.stderr
    # The trail verifies, and dr-alice's disclosures are exactly the two allowed reads,
    # the decisions whose receipts the upstream got.
    assert "ok: every hash, the sequence and every signature verify" in result.stdout
    receipts = re.findall(r"signed receipt for decision ([0-9a-f]{32}), verified", result.stdout)
    disclosed = re.findall(
        r"^\| \S+ \| scribe \(owner dr-alice\) \|.* \| ([0-9a-f]{32}) \|$",
        result.stdout,
        re.MULTILINE,
    )
    assert len(receipts) == 2 and disclosed == receipts
