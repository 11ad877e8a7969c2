"""The policy author's commands, run in process through `authz.cli.main`.

`lasthop policy validate [--format]`, `lasthop policy test [--junit]`,
`lasthop check` and `lasthop audit shadow-report`. Exit codes: 0 success (or
allow), 1 a failed test, a formatting difference or a deny, 2 bad input.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from authz.audit import chain as audit_chain
from authz.cli import main as cli
from authz.config import IdentitySettings
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.model import CheckInput, Grant
from authz.policy import load as policy_load
from authz.server import offline
from tests.conftest import POLICIES, PURPOSE

RECORDS = "/patients/p-1001/records"
SCRIBE_CLAIMS = {
    "sub": "dr-alice",
    "act": {"sub": "scribe"},
    "client_id": "scribe",
    "purp": PURPOSE,
}
READ_GRANT = {"actions": ["read"], "resources": ['Patient::"p-1001"'], "purpose": PURPOSE}

SHADOW_FORBID = """\
@id("shadow-scribe-never-reads")
@mode("shadow")
forbid (
  principal == Agent::"scribe",
  action == Action::"read",
  resource
);
"""


@pytest.fixture(autouse=True)
def _no_lasthop_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LASTHOP_"):
            monkeypatch.delenv(name)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, (old, path)
    path.write_text(text.replace(old, new), encoding="utf-8")


def fixture_count(directory: Path) -> int:
    return sum(len(list((directory / "tests" / d).glob("*.json"))) for d in ("ALLOW", "DENY"))


def scenarios(directory: Path) -> list[dict[str, Any]]:
    doc = tomllib.loads((directory / "tests" / "scenarios.toml").read_text(encoding="utf-8"))
    result: list[dict[str, Any]] = doc["scenario"]
    return result


def approval_count(directory: Path) -> int:
    """The approval policies' fixtures and scenarios."""
    tests = directory / "approval" / "tests"
    found = sum(len(list((tests / d).glob("*.json"))) for d in ("APPROVE", "PERSON", "REFUSE"))
    doc = tomllib.loads((tests / "scenarios.toml").read_text(encoding="utf-8"))
    return found + len(doc["scenario"])


def total_count(directory: Path) -> int:
    return fixture_count(directory) + len(scenarios(directory)) + approval_count(directory)


def last_line(text: str) -> str:
    """The `N passed, M failed` line (the coverage line follows it)."""
    return next(line for line in text.splitlines() if re.fullmatch(r"\d+ passed, \d+ failed", line))


# --- policy validate --------------------------------------------------------------------------


def test_validate_shipped(capsys: pytest.CaptureFixture[str]) -> None:
    bundle = policy_load.load(POLICIES)
    code, out, err = run(capsys, "policy", "validate", str(POLICIES))
    assert code == 0, err
    assert bundle.approval is not None
    assert out.strip() == (
        f"ok: {len(bundle.policies)} policies (0 shadow), "
        f"{bundle.approval.count} approval policies (0 shadow), "
        f"{len(bundle.agents)} agents, {len(bundle.routes.routes)} routes, "
        f"4 MCP tools, version {bundle.version}"
    )
    assert err == ""


def test_validate_counts_shadow_policies(capsys: pytest.CaptureFixture[str], copy: Path) -> None:
    (copy / "shadow.cedar").write_text(SHADOW_FORBID, encoding="utf-8")
    code, out, _ = run(capsys, "policy", "validate", str(copy))
    assert code == 0
    total = len(policy_load.load(POLICIES).policies) + 1
    assert out.startswith(f"ok: {total} policies (1 shadow), ")


def test_fmt_check_passes_the_shipped_policies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "policy", "fmt", "--check", str(POLICIES))
    assert (code, out, err) == (0, "", "")


UNFORMATTED = (
    '@id("scribe-read-records")   permit (principal   ==  Agent::"scribe", '
    'action == Action::"read",  resource is Records)  when { context has grant };\n'
)


def test_fmt_check_names_a_file_and_changes_nothing_then_fmt_rewrites_it(
    capsys: pytest.CaptureFixture[str], copy: Path
) -> None:
    path = copy / "scribe-read-records.cedar"
    path.write_text(UNFORMATTED, encoding="utf-8")
    code, out, _ = run(capsys, "policy", "fmt", "--check", str(copy))
    assert code == 1
    assert out.splitlines() == [f"{path}: would reformat"]
    assert path.read_text(encoding="utf-8") == UNFORMATTED
    code, out, _ = run(capsys, "policy", "fmt", str(copy), "--output", "json")
    assert code == 0 and json.loads(out) == {"changed": [str(path)], "check": False}
    assert path.read_text(encoding="utf-8") == cedarpy.format_policies(UNFORMATTED)
    assert run(capsys, "policy", "fmt", "--check", str(copy))[0] == 0
    assert run(capsys, "policy", "validate", str(copy))[0] == 0


def test_fmt_refuses_a_policy_it_cannot_parse(
    capsys: pytest.CaptureFixture[str], copy: Path
) -> None:
    path = copy / "scribe-read-records.cedar"
    path.write_text("permit (", encoding="utf-8")
    code, _, err = run(capsys, "policy", "fmt", str(copy))
    assert code == 2 and f"{path}: cannot format" in err
    assert path.read_text(encoding="utf-8") == "permit ("


def test_validate_broken_copy_names_file_and_line(
    capsys: pytest.CaptureFixture[str], copy: Path
) -> None:
    path = copy / "scribe-read-records.cedar"
    edit(path, "action ==", "action ===")
    line = next(n for n, text in enumerate(path.read_text().split("\n"), 1) if "===" in text)
    code, out, err = run(capsys, "policy", "validate", str(copy))
    assert code == 2
    assert out == ""
    assert err.startswith("lasthop: ")
    assert f"scribe-read-records.cedar:{line}:" in err
    assert "Traceback" not in err


def test_validate_missing_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "policy", "validate", str(tmp_path / "nope"))
    assert code == 2
    assert "nope" in err and "not found" in err


# --- policy test ------------------------------------------------------------------------------


def test_policy_test_shipped(capsys: pytest.CaptureFixture[str]) -> None:
    total = total_count(POLICIES)
    assert total > 20 and approval_count(POLICIES) > 10  # the shipped example has every kind
    code, out, err = run(capsys, "policy", "test", str(POLICIES))
    assert code == 0, out
    assert last_line(out) == f"{total} passed, 0 failed"
    assert "FAIL" not in out
    assert sum(line.startswith("PASS  fixtures ") for line in out.splitlines()) == fixture_count(
        POLICIES
    )
    assert sum(line.startswith("PASS  scenarios ") for line in out.splitlines()) == len(
        scenarios(POLICIES)
    )


def test_deny_fixture_filed_under_allow_fails(
    capsys: pytest.CaptureFixture[str], copy: Path
) -> None:
    total = total_count(copy)
    shutil.move(
        copy / "tests" / "DENY" / "orchestrator-reads-records.json",
        copy / "tests" / "ALLOW" / "orchestrator-reads-records.json",
    )
    code, out, _ = run(capsys, "policy", "test", str(copy))
    assert code == 1
    lines = out.splitlines()
    failed = [i for i, line in enumerate(lines) if line.startswith("FAIL")]
    assert len(failed) == 1, out
    assert "ALLOW/orchestrator-reads-records" in lines[failed[0]]
    assert "expected ALLOW, got DENY" in lines[failed[0] + 1]
    assert last_line(out) == f"{total - 1} passed, 1 failed"


def test_deny_fixture_with_the_wrong_pinned_reason_fails(
    capsys: pytest.CaptureFixture[str], copy: Path
) -> None:
    path = copy / "tests" / "DENY" / "billing-bot-reads-records.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["reason"] = "risk_too_high"
    path.write_text(json.dumps(doc), encoding="utf-8")
    code, out, _ = run(capsys, "policy", "test", str(copy))
    assert code == 1
    assert "FAIL  fixtures  DENY/billing-bot-reads-records" in out
    assert "expected DENY risk_too_high, got DENY billing_not_clinical" in out


def test_scenario_with_the_wrong_reason_fails(
    capsys: pytest.CaptureFixture[str], copy: Path
) -> None:
    total = total_count(copy)
    name = "the same read without a grant"
    edit(
        copy / "tests" / "scenarios.toml",
        f'name = "{name}"\nuser = "dr-alice"\nagents = ["scribe"]\n'
        f'purpose = "clinical-documentation"\nmethod = "GET"\npath = "{RECORDS}"\n'
        'expect = "deny"\nreason = "no_grant"',
        f'name = "{name}"\nuser = "dr-alice"\nagents = ["scribe"]\n'
        f'purpose = "clinical-documentation"\nmethod = "GET"\npath = "{RECORDS}"\n'
        'expect = "deny"\nreason = "grant_expired"',
    )
    code, out, _ = run(capsys, "policy", "test", str(copy))
    assert code == 1
    assert f"FAIL  scenarios {name}" in out
    assert "expected deny grant_expired, got deny no_grant" in out
    assert last_line(out) == f"{total - 1} passed, 1 failed"


def _two_failures(copy: Path) -> tuple[str, str]:
    shutil.move(
        copy / "tests" / "DENY" / "orchestrator-reads-records.json",
        copy / "tests" / "ALLOW" / "orchestrator-reads-records.json",
    )
    name = "billing-bot reads a claim"
    edit(
        copy / "tests" / "scenarios.toml",
        f'name = "{name}"\nuser = "bob"\nagents = ["billing-bot"]\npurpose = "billing"\n'
        'method = "GET"\npath = "/claims/c-77"\n'
        'grants = [{ actions = ["read"], resources = [\'Claim::"c-77"\'] }]\n'
        'expect = "allow"',
        f'name = "{name}"\nuser = "bob"\nagents = ["billing-bot"]\npurpose = "billing"\n'
        'method = "GET"\npath = "/claims/c-77"\n'
        'grants = [{ actions = ["read"], resources = [\'Claim::"c-77"\'] }]\n'
        'expect = "deny"',
    )
    return "ALLOW/orchestrator-reads-records", name


def test_junit_report(capsys: pytest.CaptureFixture[str], copy: Path, tmp_path: Path) -> None:
    fixtures, cases = fixture_count(copy), len(scenarios(copy))
    bad_fixture, bad_scenario = _two_failures(copy)
    report = tmp_path / "out" / "report.xml"
    report.parent.mkdir()
    code, _, _ = run(capsys, "policy", "test", str(copy), "--junit", str(report))
    assert code == 1
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {
        "lasthop.fixtures",
        "lasthop.scenarios",
        "lasthop.approval",
        "lasthop.approval-scenarios",
    }
    for suite_name, count, bad in (
        ("lasthop.fixtures", fixtures, bad_fixture),
        ("lasthop.scenarios", cases, bad_scenario),
    ):
        suite = suites[suite_name]
        testcases = suite.findall("testcase")
        assert suite.get("tests") == str(count) == str(len(testcases))
        assert suite.get("failures") == "1"
        failing = [c for c in testcases if c.find("failure") is not None]
        assert [c.get("name") for c in failing] == [bad]
        failure = failing[0].find("failure")
        assert failure is not None and "expected" in (failure.get("message") or "")
        assert all(c.get("classname") == suite_name for c in testcases)


def test_junit_report_all_passing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    code, _, _ = run(capsys, "policy", "test", str(POLICIES), "--junit", str(report))
    assert code == 0
    root = ET.parse(report).getroot()
    total = sum(int(s.get("tests", "-1")) for s in root.findall("testsuite"))
    assert total == total_count(POLICIES)
    assert all(s.get("failures") == "0" for s in root.findall("testsuite"))
    assert root.find(".//failure") is None


def test_unknown_scenario_key_is_bad_input(capsys: pytest.CaptureFixture[str], copy: Path) -> None:
    path = copy / "tests" / "scenarios.toml"
    edit(
        path,
        'name = "scribe files a note"\n',
        'name = "scribe files a note"\nexpected_reason = "allowed"\n',
    )
    code, out, err = run(capsys, "policy", "test", str(copy))
    assert code == 2
    assert "expected_reason" in err and "scribe files a note" in err
    assert "passed" not in out


def test_invalid_scenario_toml_is_bad_input(capsys: pytest.CaptureFixture[str], copy: Path) -> None:
    (copy / "tests" / "scenarios.toml").write_text("[[scenario]\nname = 1\n", encoding="utf-8")
    code, _, err = run(capsys, "policy", "test", str(copy))
    assert code == 2
    assert "scenarios.toml" in err and "TOML" in err


def test_policy_test_with_nothing_to_run_is_bad_input(
    capsys: pytest.CaptureFixture[str], copy: Path
) -> None:
    shutil.rmtree(copy / "tests")
    shutil.rmtree(copy / "approval" / "tests")
    code, out, err = run(capsys, "policy", "test", str(copy))
    assert code == 2
    assert "no fixtures" in err
    assert "passed" not in out


def test_policy_test_on_a_broken_set_is_bad_input(
    capsys: pytest.CaptureFixture[str], copy: Path
) -> None:
    edit(copy / "scribe-read-records.cedar", "action ==", "action ===")
    code, _, err = run(capsys, "policy", "test", str(copy))
    assert code == 2
    assert "scribe-read-records.cedar:" in err


# --- check ------------------------------------------------------------------------------------


class Site:
    def __init__(self, tmp_path: Path, policies: Path = POLICIES, extra: str = "") -> None:
        self.issuer = DemoIssuer("ES256", kid="check-key")
        jwks = self.issuer.write_jwks(tmp_path / "keys" / "jwks.json")
        self.config = devstack.write_config(tmp_path, jwks, policies=policies)
        if extra:
            text = self.config.read_text()
            self.config.write_text(text.replace("[policies]\n", f"[policies]\n{extra}\n"))

    def check(
        self, capsys: pytest.CaptureFixture[str], *args: str, path: str = RECORDS
    ) -> tuple[int, dict[str, Any], str]:
        code, out, err = run(
            capsys,
            "check",
            "--config",
            str(self.config),
            "--method",
            "GET",
            "--path",
            path,
            "--output",
            "json",
            *args,
        )
        return code, (json.loads(out) if out.strip() else {}), err


def test_check_allow_explains_everything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = Site(tmp_path)
    other = {**READ_GRANT, "resources": ['Patient::"p-2002"']}
    code, report, err = site.check(
        capsys,
        "--claims",
        json.dumps(SCRIBE_CLAIMS),
        "--grant",
        json.dumps(other),
        "--grant",
        json.dumps(READ_GRANT),
    )
    assert code == 0, err
    assert report["decision"] == "allow" and report["status"] == 200
    assert report["reason"] == "allowed"
    assert report["chain"] == {
        "user": "dr-alice",
        "agents": ["scribe"],
        "actor": "scribe",
        "rendered": "dr-alice -> scribe",
    }
    assert report["intent"]["purpose"] == PURPOSE
    assert report["route"] == {
        "template": "/patients/{patient}/records",
        "action": "read",
        "resource": 'Records::"p-1001"',
        "parents": ['Patient::"p-1001"'],
        "phi": True,
        "tool": "",
    }
    grants = report["grants"]
    assert [g["id"] for g in grants] == ["g-check-0", "g-check-1"]
    assert [g["covers"] for g in grants] == [False, True]
    assert [g["selected"] for g in grants] == [False, True]
    assert all(g["agent"] == "scribe" and g["user"] == "dr-alice" for g in grants)
    assert grants[1]["live"] is True and grants[1]["purpose_matches"] is True
    cedar = report["cedar_request"]
    assert cedar["principal"] == {"type": "Agent", "id": "scribe"}
    assert cedar["action"] == {"type": "Action", "id": "read"}
    assert cedar["resource"] == {"type": "Records", "id": "p-1001"}
    assert cedar["context"]["purpose"] == PURPOSE
    assert cedar["context"]["grant"]["id"] == "g-check-1"
    assert report["policies"] == [{"id": "scribe-read-records", "effect": "permit"}]
    assert report["shadow"] == []
    assert report["policy_version"] == policy_load.load(POLICIES).version
    assert "signature not checked" in report["token"]


def test_check_without_grant_denies(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    site = Site(tmp_path)
    code, report, _ = site.check(capsys, "--claims", json.dumps(SCRIBE_CLAIMS))
    assert code == 1
    assert (report["decision"], report["status"], report["reason"]) == ("deny", 403, "no_grant")
    assert report["grants"] == []
    assert report["cedar_request"] is None  # it never got to Cedar
    assert report["route"]["action"] == "read"


def test_check_forbid_names_the_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    site = Site(tmp_path)
    claims = {
        "sub": "bob",
        "act": {"sub": "billing-bot"},
        "client_id": "billing-bot",
        "purp": "billing",
    }
    code, report, _ = site.check(
        capsys,
        "--claims",
        json.dumps(claims),
        "--grant",
        json.dumps({**READ_GRANT, "purpose": "billing"}),
    )
    assert code == 1
    assert report["reason"] == "billing_not_clinical"
    assert report["policies"] == [{"id": "billing-never-clinical", "effect": "forbid"}]
    assert report["grants"][0]["selected"] is True


def test_check_reports_shadow_hits(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, copy: Path
) -> None:
    (copy / "shadow.cedar").write_text(SHADOW_FORBID, encoding="utf-8")
    site = Site(tmp_path, policies=copy)
    code, report, _ = site.check(
        capsys, "--claims", json.dumps(SCRIBE_CLAIMS), "--grant", json.dumps(READ_GRANT)
    )
    assert code == 0
    assert report["decision"] == "allow"
    assert report["shadow"] == [{"policy": "shadow-scribe-never-reads", "effect": "forbid"}]


def test_check_text_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    site = Site(tmp_path)
    code, out, _ = run(
        capsys,
        "check",
        "--config",
        str(site.config),
        "--claims",
        json.dumps(SCRIBE_CLAIMS),
        "--method",
        "get",
        "--path",
        RECORDS,
        "--grant",
        json.dumps(READ_GRANT),
    )
    assert code == 0
    assert "chain      dr-alice -> scribe (current actor: scribe)" in out
    assert "policies   scribe-read-records (permit)" in out
    assert out.rstrip("\n").rsplit("\n", 1)[-1] == "decision   ALLOW allowed: allowed"


def test_check_verifies_a_real_token(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    site = Site(tmp_path)
    token = site.issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE, txn="txn-check-1")
    code, report, err = site.check(capsys, "--token", token, "--grant", json.dumps(READ_GRANT))
    assert code == 0, err
    assert report["token"] == "verified against identity.jwks"
    assert report["decision"] == "allow"
    assert report["intent"]["txn"] == "txn-check-1"
    assert report["grants"][0]["agent"] == "scribe"  # defaulted from the verified chain
    # `Bearer ` in front is accepted too
    code, report, _ = site.check(
        capsys, "--token", f"Bearer {token}", "--grant", json.dumps(READ_GRANT)
    )
    assert code == 0 and report["decision"] == "allow"


@pytest.mark.parametrize(
    ("kid", "reasons"),
    [
        pytest.param("check-key", {"bad_signature"}, id="same-kid-other-key"),
        pytest.param("someone-else", {"unknown_key"}, id="other-kid"),
    ],
)
def test_check_refuses_a_token_signed_by_another_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kid: str, reasons: set[str]
) -> None:
    site = Site(tmp_path)
    forged = DemoIssuer("ES256", kid=kid).access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    code, report, _ = site.check(capsys, "--token", forged, "--grant", json.dumps(READ_GRANT))
    assert code == 1
    assert report["decision"] == "deny" and report["status"] == 401
    assert report["reason"] in reasons
    assert report["chain"] is None


@pytest.mark.parametrize(
    "grant",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param(
            json.dumps({"actions": ["read"], "resources": ['Patient::"p-1001"']}), id="no-purpose"
        ),
        pytest.param(json.dumps(["read"]), id="not-an-object"),
        pytest.param(json.dumps({**READ_GRANT, "ttl": "soon"}), id="bad-ttl"),
    ],
)
def test_check_bad_grant_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, grant: str
) -> None:
    site = Site(tmp_path)
    code, report, err = site.check(capsys, "--claims", json.dumps(SCRIBE_CLAIMS), "--grant", grant)
    assert code == 2
    assert report == {}
    assert "--grant" in err and "Traceback" not in err


@pytest.mark.parametrize("claims", ["{not json", "[1, 2]", '"dr-alice"'])
def test_check_bad_claims_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, claims: str
) -> None:
    site = Site(tmp_path)
    code, report, err = site.check(capsys, "--claims", claims)
    assert code == 2
    assert report == {}
    assert "--claims" in err


def test_check_bad_header_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    site = Site(tmp_path)
    code, _, err = site.check(
        capsys, "--claims", json.dumps(SCRIBE_CLAIMS), "--header", "no-colon-here"
    )
    assert code == 2
    assert "--header" in err


def test_check_missing_config_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys,
        "check",
        "--config",
        str(tmp_path / "none.toml"),
        "--claims",
        json.dumps(SCRIBE_CLAIMS),
        "--method",
        "GET",
        "--path",
        RECORDS,
    )
    assert code == 2
    assert "none.toml" in err


def test_check_in_dry_run_allows_and_says_why(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = Site(tmp_path, extra='mode = "dry-run"\nallow_dry_run = true')
    code, report, _ = site.check(capsys, "--claims", json.dumps(SCRIBE_CLAIMS))
    assert code == 0
    assert report["reason"] == "dry_run"
    assert "no_grant" in report["detail"]


# --- audit shadow-report ------------------------------------------------------------------------


def _record(
    decision_id: str, when: str, shadow: list[tuple[str, str]], disagrees: bool
) -> dict[str, Any]:
    return {
        "decision_id": decision_id,
        "time": when,
        "decision": "allow",
        "reason": "allowed",
        "shadow": [{"policy": p, "effect": e} for p, e in shadow],
        "shadow_disagrees": disagrees,
    }


TRAIL = [
    _record("d1", "2026-01-01T10:00:00.000+00:00", [("trial-forbid", "forbid")], True),
    _record(
        "d2",
        "2026-01-02T09:00:00.000+00:00",
        [("trial-forbid", "forbid"), ("trial-permit", "permit")],
        False,
    ),
    _record("d3", "2026-01-02T23:59:59.999+00:00", [("trial-permit", "permit")], True),
    _record("d4", "2026-01-03T00:00:00.000+00:00", [], False),
    _record("d5", "2026-01-03T12:00:00.000+00:00", [("trial-forbid", "forbid")], True),
]


def _write_trail(path: Path, records: list[dict[str, Any]]) -> Path:
    lines = [json.dumps(r) for r in records]
    lines.insert(2, json.dumps({"kind": "not a decision"}))  # skipped: no decision_id
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _report(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(capsys, "audit", "shadow-report", "--output", "json", *args)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_shadow_report_whole_trail(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trail = _write_trail(tmp_path / "decisions.jsonl", TRAIL)
    report = _report(capsys, "--trail", str(trail))
    assert report["records"] == 5
    assert report["would_flip"] == 3
    by_policy = {p["policy"]: p for p in report["policies"]}
    assert by_policy["trial-forbid"] == {
        "policy": "trial-forbid",
        "effect": "forbid",
        "held": 3,
        "disagreements": 2,
        "examples": ["d1", "d5"],
    }
    assert by_policy["trial-permit"] == {
        "policy": "trial-permit",
        "effect": "permit",
        "held": 2,
        "disagreements": 1,
        "examples": ["d3"],
    }
    # most disagreements first
    assert [p["policy"] for p in report["policies"]] == ["trial-forbid", "trial-permit"]


def test_shadow_report_window(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trail = _write_trail(tmp_path / "decisions.jsonl", TRAIL)
    report = _report(
        capsys, "--trail", str(trail), "--since", "2026-01-02", "--until", "2026-01-03"
    )
    assert (report["records"], report["would_flip"]) == (2, 1)  # d2, d3; d4 at the bound is out
    by_policy = {p["policy"]: p for p in report["policies"]}
    assert (by_policy["trial-forbid"]["held"], by_policy["trial-forbid"]["disagreements"]) == (1, 0)
    assert (by_policy["trial-permit"]["held"], by_policy["trial-permit"]["disagreements"]) == (2, 1)
    assert [p["policy"] for p in report["policies"]] == ["trial-permit", "trial-forbid"]


def test_shadow_report_since_is_inclusive_until_exclusive(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trail = _write_trail(tmp_path / "decisions.jsonl", TRAIL)
    report = _report(capsys, "--trail", str(trail), "--since", "2026-01-03T00:00:00")
    assert report["records"] == 2  # d4 (exactly at --since) and d5
    report = _report(capsys, "--trail", str(trail), "--until", "2026-01-01T10:00:00+00:00")
    assert report["records"] == 0  # d1 is exactly at --until
    report = _report(
        capsys,
        "--trail",
        str(trail),
        "--since",
        "2026-01-01T11:00:00+01:00",
        "--until",
        "2026-01-01T11:00:00.001+01:00",
    )
    assert report["records"] == 1  # 10:00 UTC is 11:00 at +01:00


def test_shadow_report_several_trails_and_few_examples(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    many = [
        _record(f"x{i}", f"2026-02-01T00:00:0{i}+00:00", [("trial-forbid", "forbid")], True)
        for i in range(6)
    ]
    first = _write_trail(tmp_path / "a.jsonl", TRAIL)
    second = _write_trail(tmp_path / "b.jsonl", many)
    report = _report(capsys, "--trail", str(first), str(second))
    assert report["records"] == 11 and report["would_flip"] == 9
    forbid = next(p for p in report["policies"] if p["policy"] == "trial-forbid")
    assert forbid["held"] == 9 and forbid["disagreements"] == 8
    assert forbid["examples"] == ["d1", "d5", "x0"]  # a few, in trail order


def test_shadow_report_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trail = _write_trail(tmp_path / "decisions.jsonl", TRAIL)
    code, out, _ = run(capsys, "audit", "shadow-report", "--trail", str(trail))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        "5 decisions in the window; 3 would have changed with the shadow policies enforced"
    )
    rows = [line.split() for line in lines if line.startswith("trial-")]
    assert rows == [
        ["trial-forbid", "forbid", "3", "2", "d1", "d5"],
        ["trial-permit", "permit", "2", "1", "d3"],
    ]


def test_shadow_report_reads_the_configured_trail(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = Site(tmp_path)
    trail = tmp_path / "audit" / "decisions.jsonl"
    trail.parent.mkdir(parents=True, exist_ok=True)
    _write_trail(trail, TRAIL)
    report = _report(capsys, "--config", str(site.config))
    assert report["records"] == 5


def test_shadow_report_bad_line_names_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trail = _write_trail(tmp_path / "decisions.jsonl", TRAIL)
    with trail.open("a", encoding="utf-8") as out:
        out.write("{truncated\n")
    code, _, err = run(capsys, "audit", "shadow-report", "--trail", str(trail))
    assert code == 2
    assert f"{trail}:7" in err


def test_shadow_report_record_without_a_time_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A decision record with no `time` cannot be placed in the window: bad input, exit 2."""
    trail = tmp_path / "decisions.jsonl"
    trail.write_text(
        json.dumps({"decision_id": "d-no-time", "shadow": [], "shadow_disagrees": False}) + "\n",
        encoding="utf-8",
    )
    code, out, err = run(capsys, "audit", "shadow-report", "--trail", str(trail))
    assert code == 2
    assert out == ""
    assert err.startswith("lasthop: ") and "time" in err


def test_shadow_report_bad_since_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trail = _write_trail(tmp_path / "decisions.jsonl", TRAIL)
    code, _, err = run(
        capsys, "audit", "shadow-report", "--trail", str(trail), "--since", "last tuesday"
    )
    assert code == 2
    assert "last tuesday" in err


def test_shadow_report_missing_trail_is_not_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "audit", "shadow-report", "--trail", str(tmp_path / "nope.jsonl"))
    assert code == 3
    assert "nope.jsonl" in err


def test_shadow_report_over_records_the_pipeline_wrote(
    capsys: pytest.CaptureFixture[str], copy: Path, tmp_path: Path
) -> None:
    """End to end: the audit records a pipeline with a shadow policy writes, then the report."""
    (copy / "shadow.cedar").write_text(SHADOW_FORBID, encoding="utf-8")
    bundle = policy_load.load(copy)
    ident = IdentitySettings()
    signer = offline.ClaimsSigner(ident)
    now = time.time()
    env = offline.build(bundle, ident, signer.keys, clock=lambda: now)
    grants = [
        Grant(
            "g-s",
            "scribe",
            "dr-alice",
            ("read",),
            ('Patient::"p-1001"',),
            PURPOSE,
            "t",
            int(now),
            int(now) + 600,
        ),
        Grant(
            "g-m",
            "med-reconciler",
            "dr-alice",
            ("read",),
            ('Patient::"p-1001"',),
            "medication-reconciliation",
            "t",
            int(now),
            int(now) + 600,
        ),
    ]
    requests = [
        ("scribe", PURPOSE, RECORDS),
        ("scribe", PURPOSE, RECORDS),
        ("med-reconciler", "medication-reconciliation", "/patients/p-1001/medications"),
    ]
    decisions = []
    for agent, purpose, path in requests:
        token = signer.token(
            {"sub": "dr-alice", "act": {"sub": agent}, "client_id": agent, "purp": purpose}, now
        )
        decisions.append(
            offline.run_check(
                env,
                CheckInput("GET", path, "ehr.local", {"authorization": [f"Bearer {token}"]}),
                grants,
            )
        )
    assert all(d.allowed for d in decisions)
    trail = tmp_path / "trail.jsonl"
    trail.write_bytes(b"".join(audit_chain.line(r.to_dict()) for r in env.audit.records))
    report = _report(capsys, "--trail", str(trail))
    assert (report["records"], report["would_flip"]) == (3, 2)
    assert report["policies"] == [
        {
            "policy": "shadow-scribe-never-reads",
            "effect": "forbid",
            "held": 2,
            "disagreements": 2,
            "examples": [decisions[0].decision_id, decisions[1].decision_id],
        }
    ]


def check_tool(
    capsys: pytest.CaptureFixture[str], site: Site, *args: str
) -> tuple[int, dict[str, Any], str]:
    code, out, err = run(
        capsys, "check", "--config", str(site.config), "--path", "/mcp", "--output", "json", *args
    )
    return code, (json.loads(out) if out.strip() else {}), err


def test_check_describes_a_tool_call(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    site = Site(tmp_path)
    claims = ("--claims", json.dumps(SCRIBE_CLAIMS), "--grant", json.dumps(READ_GRANT))
    tool = ("--tool", "get_patient_record", "--arguments", '{"patient_id": "p-1001"}')
    code, report, err = check_tool(capsys, site, *claims, *tool)
    assert code == 0, err
    assert report["request"] == {"method": "POST", "path": "/mcp"}
    assert report["route"]["tool"] == "get_patient_record"
    assert report["route"]["resource"] == 'Records::"p-1001"'
    assert report["cedar_request"]["context"]["tool"] == {
        "name": "get_patient_record",
        "arguments": {"patient_id": "p-1001"},
    }
    other = ("--tool", "get_patient_record", "--arguments", '{"patient_id": "p-2002"}')
    code, report, _ = check_tool(capsys, site, *claims, *other)
    assert (code, report["reason"]) == (1, "no_grant")
    body = tmp_path / "body.json"
    body.write_text('{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}')
    code, report, _ = check_tool(capsys, site, *claims, "--body", f"@{body}")
    assert (code, report["reason"]) == (1, "mcp_method_not_allowed")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tool", "get_patient_record", "--arguments", "[1]"), "--arguments must be a JSON"),
        (("--tool", "get_patient_record", "--arguments", "{"), "--arguments is not JSON"),
        (("--arguments", '{"patient_id": "p-1"}'), "--arguments needs --tool"),
        (("--body", "@/nonexistent/body.json"), "--body `@/nonexistent/body.json`"),
    ],
)
def test_check_bad_tool_input_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    site = Site(tmp_path)
    code, report, err = check_tool(capsys, site, "--claims", json.dumps(SCRIBE_CLAIMS), *args)
    assert (code, report) == (2, {})
    assert message in err
    if "--arguments needs" in message:
        code, _, err = run(capsys, "check", "--config", str(site.config), "--path", "/mcp",
                           "--claims", json.dumps(SCRIBE_CLAIMS))  # fmt: skip
        assert code == 2 and "--method is required" in err
