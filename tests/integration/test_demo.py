"""`lasthop demo` end to end: Envoy + Lasthop on the embedded store + the demo EHR, and every
command it prints works as printed; then the detection scenario on a fleet of two replicas
sharing Redis."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import request, run_cli

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
    # just-in-time access (authz/dev/demo_access.py)
    ("403", "no_grant"),  # the reconciler, no grant: the denial names what it needs
    ("200", "allowed"),  # ... asked for exactly that, approved by policy
    ("403", "no_grant"),  # ... its task ended, and the grant with it
    ("403", "no_grant"),  # the scribe's note, no grant
    ("201", "allowed"),  # ... once dr-alice approved its request
]


@dataclass(frozen=True)
class Demo:
    result: subprocess.CompletedProcess[str]
    work: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """One run of `lasthop demo --dir`, for the tests that read what it printed and kept."""
    work = tmp_path_factory.mktemp("demo") / "demo"
    result = run_cli("demo", "--dir", str(work), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return Demo(result, work)


def printed_commands(stdout: str) -> list[list[str]]:
    """Every `$ lasthop ...` line the demo printed, as argv."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("$ lasthop ")]


def run_printed(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "lasthop"
    return run_cli(*argv[1:], env=env)


def test_demo_runs_the_scenario_and_its_printed_commands_work(demo: Demo) -> None:
    result, work = demo.result, demo.work
    outcomes = re.findall(r"^\s*-> (\d{3}) (\S+)\s*$", result.stdout, re.MULTILINE)
    assert outcomes == EXPECTED, result.stdout
    # The chained call shows the whole chain, and revocation happens before the last step.
    assert "upstream saw chain=dr-alice,orchestrator,scribe" in result.stdout
    revoked = result.stdout.index("revokes")
    assert result.stdout.index("-> 403 no_grant", revoked) > revoked
    assert "the MCP server saw chain=dr-alice,scribe" in result.stdout
    assert "(MCP tools/call get_patient_record)" in result.stdout
    assert "Traceback" not in result.stderr
    # The trail verifies, and dr-alice's disclosures by the scribe are the three allowed reads
    # (two HTTP, one tool call), the decisions whose receipts the upstream got, and the
    # note it filed on dr-alice's approval (authz/dev/demo_access.py).
    assert "ok: every hash, the sequence and every signature verify" in result.stdout
    receipts = re.findall(r"signed receipt for decision ([0-9a-f]{32}), verified", result.stdout)
    disclosed = re.findall(
        r"^\| \S+ \| scribe \(owner dr-alice\) \| (?!connect).* \| ([0-9a-f]{32}) \|$",
        result.stdout,
        re.MULTILINE,
    )
    assert len(receipts) == 3 and disclosed[:3] == receipts and len(disclosed) == 4
    # The database part: refused without a grant, allowed with one, ended by Envoy before
    # the grant expires, refused again; the allowed connection is a disclosure of the database.
    connections = re.findall(r"-> connection (allowed|refused)(?::| ) ?(\S*)", result.stdout)
    assert connections[:3] == [
        ("refused", "grant_not_named"),
        ("allowed", "decision"),
        ("refused", "billing_not_clinical"),
    ]
    # the grant ends before a new connection would; on a very slow run it has ended
    assert connections[3:] in ([("refused", "grant_ends_too_soon")], [("refused", "no_grant")])
    assert "Envoy ends the connection after" in result.stdout
    assert 'connect Database::"ehr" (database connection: the whole database)' in result.stdout
    assert "naming tool get_patient_record" in result.stdout
    # Just-in-time access: approved by policy in milliseconds, and by the clinician.
    assert re.search(
        r"approved by policy:med-reconciler-reads-medications in [\d.]+ ms", result.stdout
    )
    assert "the scribe's wait ends: approved by dr-alice" in result.stdout
    approvers = re.findall(
        r"^\| \S+ \| (\S+) \(owner dr-alice\) \| (\w+) .* \| (\S+) \| [0-9a-f]{32} \|$",
        result.stdout,
        re.MULTILINE,
    )
    assert [a for a in approvers if a[1] != "connect"][-2:] == [
        ("med-reconciler", "read", "policy:med-reconciler-reads-medications"),
        ("scribe", "write", "dr-alice"),
    ]
    # Issue 18: it printed `lasthop audit verify decisions.jsonl`, which failed as printed,
    # and deleted the trail on exit. Now the trail is kept, and each command works.
    assert f"kept in {work.resolve()}" in result.stdout
    commands = printed_commands(result.stdout)
    assert [c[:3] for c in commands] == [
        ["lasthop", "audit", "verify"],
        ["lasthop", "audit", "disclosures"],
    ]
    for argv in commands:
        ran = run_printed(argv)
        assert ran.returncode == 0, (argv, ran.stdout, ran.stderr)
    assert run_printed(commands[0]).stdout.startswith("ok: ")
    # the reads with receipts, the two just-in-time accesses (the reconciler's, the note) and
    # the database connection
    disclosed_ids = re.findall(r"\| ([0-9a-f]{32}) \|$", run_printed(commands[1]).stdout, re.M)
    assert set(receipts) <= set(disclosed_ids) and len(disclosed_ids) == len(receipts) + 3
    assert run_printed(commands[1]).stdout.count("database connection") == 1


def _read_until(proc: subprocess.Popen[str], marker: str) -> str:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(marker):
            return "".join(seen)
    raise AssertionError("".join(seen))


def test_keep_running_prints_an_admin_url_a_config_and_a_curl_line_that_work(
    tmp_path: Path,
) -> None:
    """Issue 18: no LASTHOP_ADMIN_URL line, no config path, and a curl line answering 403."""
    work = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTHOP_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "authz", "demo", "--keep-running", "--dir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        text = _read_until(proc, "  curl ")
        exports = dict(re.findall(r"^  export (LASTHOP_[A-Z_]+)=(\S+)$", text, re.M))
        assert set(exports) == {"LASTHOP_ADMIN_URL", "LASTHOP_ADMIN_TOKEN_FILE"}, text
        config = re.search(r"^Config: (\S+)$", text, re.M)
        assert config is not None and Path(config.group(1)).is_file()
        listed = run_cli("grants", "list", "--output", "json", env=exports)
        assert listed.returncode == 0, listed.stderr
        assert '"agent": "scribe"' in listed.stdout
        curl = shlex.split(text.splitlines()[-1].strip())
        assert curl[:3] == ["curl", "-i", "-H"]
        if shutil.which("curl"):
            ran = subprocess.run(curl, capture_output=True, text=True, timeout=30)
            assert ran.stdout.startswith("HTTP/1.1 200"), ran.stdout[:300]
        name, _, value = curl[3].partition(": ")
        assert request(curl[4].rsplit("/patients", 1)[0], "/patients/p-1001/records",
                       headers={name: value}).status == 200  # fmt: skip
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert (work / "audit" / "decisions.jsonl").is_file()
    verify = printed_commands(out)[0]
    assert run_printed(verify).returncode == 0


def test_demo_contains_the_sweep_on_both_replicas_within_a_second(demo: Demo) -> None:
    out = demo.result.stdout[demo.result.stdout.index("== Detection") :]
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
    # The event names the first check judged over the line that claimed the detection: the
    # sweep's 26th patient, or replica B's own check judged a moment later (26 or more).
    detected = re.search(
        r"threat_detected +scribe by lasthop: breadth/patients: \{\"count\": (\d+), "
        r"\"entity\": \"Patient\", \"threshold\": 25, \"window_seconds\": 600\}",
        out,
    )
    assert detected is not None and int(detected.group(1)) > 25, out
    assert re.search(r"agent_suspended +scribe by lasthop: breadth/patients", out), out
    assert re.search(r"agent_resumed +scribe by ops-admin", out), out
    # the fleet's files are kept with the rest, under detect/
    assert (demo.work / "detect" / "replica-A" / "audit" / "decisions.jsonl").is_file()
