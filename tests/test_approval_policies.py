"""Approval policies (policies/approval/): loaded, validated with file and line, versioned and
hot-reloaded with the access policies, shadowed, and combined most restrictive first."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from authz.access import approval
from authz.access.asks import Ask
from authz.errors import PolicyLoadError
from authz.model import DEFAULT_TIERS, AccessRequest
from authz.policy import load as policy_load
from authz.policy.approval import APPROVAL_DIR, Limit, Rule
from authz.policy.load import PolicyBundle
from authz.policy.reload import PolicyWatcher
from tests.conftest import POLICIES

NOW = 1_800_000_000


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / APPROVAL_DIR / name
    path.write_text(text, encoding="utf-8")
    return path


def asked(bundle: PolicyBundle, agents: tuple[str, ...], ask: Ask) -> approval.Verdict:
    request = AccessRequest(
        id="r-1",
        agent=agents[-1],
        user="dr-alice",
        chain=agents,
        action=ask.action,
        resource=ask.resource,
        purpose=ask.purpose,
        ttl_seconds=ask.ttl_seconds,
        max_uses=ask.max_uses,
        txn=ask.txn,
        reason=ask.reason,
        break_glass=ask.break_glass,
        created_at=NOW,
        expires_at=NOW + 300,
    )
    found = tuple(bundle.agents[a] for a in agents)
    return approval.evaluate(bundle, request, found, ask.purpose, DEFAULT_TIERS, NOW)


MEDS = Ask("read", 'Medications::"p-1001"', "medication-reconciliation", 900, 50)


# --- loading --------------------------------------------------------------------------------


def test_the_shipped_approval_policies_load_with_their_rules(bundle: PolicyBundle) -> None:
    assert bundle.approval is not None
    rules = {r.id: r for r in bundle.approval.rules.values()}
    assert rules["medication-reconciliation-at-most-15-minutes"] == Rule(
        "medication-reconciliation-at-most-15-minutes",
        "refuse",
        reason="ttl_over_limit",
        limit=Limit("ttl_seconds", 900),
    )
    assert rules["high-risk-chains-need-a-person"].approvers == ("user", "role:privacy-officer")
    assert rules["med-reconciler-reads-medications"].outcome == "approve"


def test_no_approval_directory_means_every_request_is_refused(copy: Path) -> None:
    shutil.rmtree(copy / APPROVAL_DIR)
    bundle = policy_load.load(copy)
    assert bundle.approval is None
    verdict = asked(bundle, ("med-reconciler",), MEDS)
    assert (verdict.outcome, verdict.reason) == ("refuse", "no_approval_policy")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            '@id("p")\npermit (principal, action == Action::"request", resource);\n',
            '`@decision("approve")` or `@decision("person")`',
        ),
        (
            '@id("p")\n@decision("person")\npermit (principal, action, resource);\n',
            '`@decision("person")` needs `@approvers',
        ),
        (
            '@id("p")\n@decision("person")\n@approvers("user, boss")\n'
            "permit (principal, action, resource);\n",
            "approver `boss` is not user, owner or role:<name>",
        ),
        (
            '@id("p")\n@limit("ttl < 5")\nforbid (principal, action, resource);\n',
            '`@limit("ttl < 5")` must read like',
        ),
        (
            '@id("p")\n@decision("approve")\nforbid (principal, action, resource);\n',
            "`@decision` is for permits",
        ),
        (
            '@id("p")\n@reason("Too Long")\nforbid (principal, action, resource);\n',
            "must be a code like",
        ),
        (
            '@id("p")\n@decision("approve")\npermit (principal, action, resource)\n'
            "when { context.ttl > 1 };\n",
            "ttl",
        ),
    ],
)
def test_a_bad_approval_policy_stops_loading_naming_file_and_line(
    copy: Path, text: str, says: str
) -> None:
    path = write(copy, "zz-bad.cedar", "// a comment line\n" + text)
    with pytest.raises(PolicyLoadError) as err:
        policy_load.load(copy)
    assert err.value.path.endswith(str(path.relative_to(copy.parent))) or err.value.path == str(
        path
    )
    assert says in str(err.value)
    assert err.value.line is not None and err.value.line >= 2


def test_a_broken_approval_schema_names_its_line(copy: Path) -> None:
    schema = copy / APPROVAL_DIR / "schema.cedarschema"
    schema.write_text(
        schema.read_text() + "\naction oops appliesTo { principal: [Nobody] };\n", encoding="utf-8"
    )
    with pytest.raises(PolicyLoadError) as err:
        policy_load.load(copy)
    assert err.value.path == str(schema)
    assert err.value.line is not None and err.value.line > 30


def test_approval_files_are_part_of_the_version(copy: Path) -> None:
    before = policy_load.load(copy)
    write(
        copy,
        "zz-extra.cedar",
        '@id("x")\n@reason("closed")\nforbid (principal, action, resource);\n',
    )
    after = policy_load.load(copy)
    assert after.version != before.version and after.signature != before.signature


# --- combining ------------------------------------------------------------------------------


def test_the_most_restrictive_outcome_wins(bundle: PolicyBundle) -> None:
    assert asked(bundle, ("med-reconciler",), MEDS).outcome == "approve"
    through_vendor = asked(bundle, ("dictation-vendor", "med-reconciler"), MEDS)
    assert through_vendor.outcome == "person"
    assert through_vendor.policies == (
        "high-risk-chains-need-a-person",
        "med-reconciler-reads-medications",
    )
    over = asked(bundle, ("dictation-vendor", "med-reconciler"), replace(MEDS, ttl_seconds=3600))
    assert (over.outcome, over.reason) == ("refuse", "ttl_over_limit")


def test_approvers_are_those_every_person_policy_names() -> None:
    user = Rule("a", "person", approvers=("user", "role:privacy-officer"))
    owner = Rule("b", "person", approvers=("owner",))
    both = approval.combine([user, owner], True, "dr-alice", "dr-alice")
    assert both.approvers == ("user:dr-alice",)  # the user is also the agent's owner
    apart = approval.combine([user, owner], True, "dr-alice", "bob")
    assert apart.approvers == ()


def test_no_permit_is_a_refusal() -> None:
    verdict = approval.combine([], False, "dr-alice", "dr-alice")
    assert (verdict.outcome, verdict.reason) == ("refuse", "no_approval_policy")


# --- shadow ---------------------------------------------------------------------------------


def test_a_shadow_approval_policy_never_decides_but_is_reported(copy: Path) -> None:
    write(
        copy,
        "zz-shadow-reconcile-needs-a-person.cedar",
        '@id("reconcile-needs-a-person")\n@mode("shadow")\n@decision("person")\n'
        '@approvers("user")\npermit (principal, action == Action::"request", resource);\n',
    )
    bundle = policy_load.load(copy)
    assert bundle.approval is not None and len(bundle.approval.shadow) == 1
    verdict = asked(bundle, ("med-reconciler",), MEDS)
    assert verdict.outcome == "approve"  # enforced: unchanged
    assert verdict.shadow == (("reconcile-needs-a-person", "permit"),)
    assert verdict.shadow_outcome == "person"


def test_a_shadow_policy_that_agrees_is_reported_without_a_flip(copy: Path) -> None:
    write(
        copy,
        "zz-shadow-same.cedar",
        '@id("also-approve")\n@mode("shadow")\n@decision("approve")\n'
        'permit (principal == Agent::"med-reconciler", action, resource);\n',
    )
    verdict = asked(policy_load.load(copy), ("med-reconciler",), MEDS)
    assert verdict.shadow == (("also-approve", "permit"),) and verdict.shadow_outcome == ""


# --- hot reload -----------------------------------------------------------------------------


def test_a_change_to_the_approval_policies_is_hot_reloaded(copy: Path) -> None:
    current = [policy_load.load(copy)]
    watcher = PolicyWatcher(copy, 0.05, lambda: current[-1], current.append, None)
    path = write(
        copy,
        "zz-closed.cedar",
        '@id("closed")\n@reason("approvals_closed")\nforbid (principal, action, resource);\n',
    )
    os.utime(path, ns=(1, 1))  # whatever the clock's resolution, the signature changes
    assert asyncio.run(watcher.poll())
    verdict = asked(current[-1], ("med-reconciler",), MEDS)
    assert (verdict.outcome, verdict.reason) == ("refuse", "approvals_closed")
    path.write_text("not cedar", encoding="utf-8")
    assert not asyncio.run(watcher.poll())  # refused: the last good set stays
    assert len(current) == 2


# --- lasthop policy test --------------------------------------------------------------------


def test_a_misfiled_approval_fixture_and_a_wrong_scenario_fail(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from authz.cli import main as cli

    tests = copy / APPROVAL_DIR / "tests"
    shutil.move(
        tests / "REFUSE" / "reconciler-asks-for-an-hour.json",
        tests / "APPROVE" / "reconciler-asks-for-an-hour.json",
    )
    scenarios = tests / "scenarios.toml"
    text = scenarios.read_text(encoding="utf-8")
    scenarios.write_text(text.replace('approvers = ["user:dr-alice"]', 'approvers = ["owner"]'))
    assert cli.main(["policy", "test", str(copy)]) == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert failed == [
        "FAIL  approval  APPROVE/reconciler-asks-for-an-hour",
        "FAIL  approval-scenarios the scribe's note waits for its clinician",
    ]
    assert "expected APPROVE, got REFUSE\n" in out
    assert "BREAK-GLASS" not in capsys.readouterr().err
    assert "expected pending owner, got pending user:dr-alice" in out


def test_the_shadow_report_counts_shadow_approval_policies(copy: Path, tmp_path: Path) -> None:
    from authz.access.events import Recorder
    from authz.audit import shadow_report
    from authz.audit.records import MemoryAudit

    write(
        copy,
        "zz-shadow-reconcile-needs-a-person.cedar",
        '@id("reconcile-needs-a-person")\n@mode("shadow")\n@decision("person")\n'
        '@approvers("user")\npermit (principal, action == Action::"request", resource);\n',
    )
    verdict = asked(policy_load.load(copy), ("med-reconciler",), MEDS)
    request = AccessRequest(
        "r-9", "med-reconciler", "dr-alice", ("med-reconciler",), "read", MEDS.resource,
        MEDS.purpose, 900, 50, "", "", False, NOW, NOW + 300,
    )  # fmt: skip
    event = Recorder(MemoryAudit(), lambda: NOW).request("access_approved", "p", request, verdict)
    trail = tmp_path / "trail.jsonl"
    trail.write_text(json.dumps(event.to_dict()) + "\n")
    total, flips, tallies = shadow_report.tally(shadow_report.read_records([trail]), None, None)
    assert (total, flips) == (1, 1)
    assert [(t.policy, t.held, t.disagreements, t.examples) for t in tallies] == [
        ("reconcile-needs-a-person", 1, 1, ["r-9"])
    ]
