"""The benchmark harness works end to end: a tiny run of benchmarks/run.py. It asserts no timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_harness_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["targets"]) == {"envoy", "floor", "floor-threads", "lasthop", "lasthop-50ms"}
    for name, target in results["targets"].items():
        assert set(target["statuses"]) == {"200"}, (name, target["statuses"])
        assert min(target["rps"]) > 0
    # the default configuration, measured as a user gets it, against the floor of the same run
    assert results["ratios"]["lasthop"]["floor"][0] > 0
    assert {g["goal"].split(":")[0] for g in results["goals"]} >= {
        "default (fsync always, receipts on)"
    }
    assert len(results["chain_depth"]["p50_us"][0]) == 4
    text = (out / "report.md").read_text()
    assert "| lasthop |" in text and "## Targets" in text
    assert (out / "latency.png").stat().st_size > 1000


def test_the_tracing_overhead_harness_runs_and_exports_every_span() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tracing_overhead.py"), "--checks", "20",
         "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "tracing off" in result.stdout and "40 spans exported" in result.stdout


def test_the_tool_call_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/mcp_check.py, tiny: both requests are allowed, every figure is there."""
    out = tmp_path / "mcp.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mcp_check.py"), "--checks", "20",
         "--rounds", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for regime in ("warm", "cold"):
        assert report[regime]["get_p50_us"] > 0 and report[regime]["mcp_p50_us"] > 0
    assert report["parse_p50_us"] > 0 and "ratio median" in result.stdout


def test_the_access_latency_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "access.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "access_latency.py"), "--rounds", "1",
         "--per-round", "4", "--fsync", "50ms", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["unusable_after_approval"] == 0
    assert set(results["kinds"]) == {
        "api/request", "api/issue", "inproc/request", "inproc/issue", "check/plain", "check/task",
    }  # fmt: skip
    assert "target p99 < 5.0 ms through the API" in result.stdout


def test_the_connection_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/connection_check.py, tiny: both checks allowed, every figure there; through
    Envoy, no connection outlives the revoke by more than the maximum duration and none is
    admitted after it (correctness, not speed)."""
    out = tmp_path / "connection.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "connection_check.py"), "--checks", "20",
         "--rounds", "1", "--revocation", "--connections", "2", "--max-seconds", "1",
         "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for regime in ("warm", "cold"):
        assert report["latency"][regime]["connection_p50_us"] > 0
    revocation = report["revocation"]
    assert revocation["refused_after_revoke"] is True
    assert len(revocation["reach_s"]) == 2 and revocation["reach_max_s"] <= 1


def _smoke(script: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / f"{script}.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(out.read_text())
    return parsed


def test_the_detection_overhead_harness_runs(tmp_path: Path) -> None:
    results = _smoke("detect_overhead", tmp_path)
    assert set(results["in_process"]) == {"decided", "cached"}
    envoy = results["envoy"]
    for name in ("on", "off"):  # every check allowed; a busy machine may time a few out (503)
        statuses = envoy["statuses"][name]
        assert set(statuses) <= {"200", "503"} and statuses["200"] > 0, envoy["statuses"]


def test_the_containment_harness_runs(tmp_path: Path) -> None:
    results = _smoke("containment", tmp_path)
    for kind in ("detection", "baseline"):
        rows = results[kind]
        assert rows["n"] == 2 and rows["lost"] == 0, rows
