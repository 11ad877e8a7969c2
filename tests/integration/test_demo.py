"""`lasthop demo` end to end: Envoy + Lasthop on the embedded store + the demo EHR, then the
detection scenario on a fleet of two replicas sharing Redis."""

from __future__ import annotations

import re
import subprocess

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


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    result = run_cli("demo", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_demo_runs_the_scenario(demo: subprocess.CompletedProcess[str]) -> None:
    result = demo
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


def test_demo_contains_the_sweep_on_both_replicas_within_a_second(
    demo: subprocess.CompletedProcess[str],
) -> None:
    out = demo.stdout[demo.stdout.index("== Detection") :]
    day = re.search(
        r"A clinic day through both replicas: (\d+) requests .*; detections: (\d+)", out
    )
    assert day is not None and int(day.group(1)) > 40 and day.group(2) == "0", out
    read = re.search(r"The thief read (\d+) of 40 charts", out)
    assert read is not None and 0 < int(read.group(1)) < 40, out
    timing = re.search(
        r"replica A ([\d.]+) ms; replica B, which saw none of the sweep, ([\d.]+) ms", out
    )
    assert timing is not None, out
    assert float(timing.group(1)) < 1000 and float(timing.group(2)) < 1000, timing.group(0)
    assert re.search(
        r"threat_detected +scribe by lasthop: breadth/patients: \{\"count\": 26, "
        r"\"entity\": \"Patient\", \"threshold\": 25, \"window_seconds\": 600\}",
        out,
    ), out
    assert re.search(r"agent_suspended +scribe by lasthop: breadth/patients", out), out
    assert re.search(r"agent_resumed +scribe by ops-admin", out), out
