"""Posture rules: each finding kind fires on the exposure it names and not on a clean fleet.

Inventories are built here by hand (the trail reading is tested on real trails in
tests/integration/test_posture.py); policies are the shipped ones unless a test
adds its own.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from authz.audit.records import AuditRecord, EventRecord
from authz.cli import main as cli
from authz.cli.conventions import Exit
from authz.codec import rfc3339
from authz.detect import inventory, policy_gaps
from authz.detect.findings import RULES, SEVERITIES, at_or_above
from authz.detect.inventory import GrantHistory, Inventory, Sighting
from authz.detect.posture import Limits, assess
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.model import DEFAULT_TIERS, Agent, Grant
from authz.policy import load as policy_load
from authz.policy.evaluate import PolicyEngine
from tests.conftest import POLICIES, PURPOSE

NOW = 1_800_000_000.0
HOUR = 3600


def grant(
    gid: str, agent: str = "scribe", ttl: int = 900, issued: float = NOW - 1800, **kw: object
) -> Grant:
    fields: dict[str, object] = dict(
        id=gid,
        agent=agent,
        user="dr-alice",
        actions=("read",),
        resources=('Patient::"p-1001"',),
        purpose=PURPOSE,
        issued_by="ops",
        issued_at=int(issued),
        expires_at=int(issued) + ttl,
    )
    fields.update(kw)
    return Grant(**fields)  # type: ignore[arg-type]


def clean(directory: Path = POLICIES) -> Inventory:
    """A fleet with nothing to report: every active agent seen, grants short and used."""
    bundle = policy_load.load(directory)
    inv = Inventory(
        now=NOW,
        since=NOW - 30 * 86400,
        bundle=bundle,
        policy_dir=directory,
        agents=dict(bundle.agents),
        live={},
        users={"dr-alice", "bob"},
    )
    for agent in bundle.agents:
        inv.seen[agent] = Sighting(1, NOW - 60, ["d-1"])
    used = GrantHistory(grant("g-used"), uses=3, last_use=NOW - 1000)
    inv.history["g-used"] = used
    return inv


def kinds(inv: Inventory) -> list[str]:
    return sorted({f.kind for f in assess(inv, DEFAULT_TIERS)})


def test_a_clean_fleet_has_no_findings() -> None:
    assert assess(clean(), DEFAULT_TIERS) == []


def test_a_grant_far_longer_than_its_use_is_standing_privilege() -> None:
    inv = clean()
    inv.history["g-8h"] = GrantHistory(
        grant("g-8h", ttl=8 * HOUR, issued=NOW - 9 * HOUR), uses=2, last_use=NOW - 9 * HOUR + 600
    )
    (finding,) = assess(inv, DEFAULT_TIERS)
    assert (finding.id, finding.rule.severity) == ("standing-grant:g-8h", "medium")
    assert finding.evidence["lifetime_seconds"] == 8 * HOUR
    assert finding.evidence["used_seconds"] == 600


def test_a_long_grant_used_through_its_life_is_not_standing() -> None:
    inv = clean()
    inv.history["g-8h"] = GrantHistory(
        grant("g-8h", ttl=8 * HOUR, issued=NOW - 9 * HOUR), uses=200, last_use=NOW - 2 * HOUR
    )
    assert kinds(inv) == []


def test_a_live_grant_early_in_its_life_is_not_judged_yet() -> None:
    inv = clean()
    inv.history["g-8h"] = GrantHistory(
        grant("g-8h", ttl=8 * HOUR, issued=NOW - HOUR), uses=1, last_use=NOW - HOUR + 60
    )
    assert kinds(inv) == []


def test_grants_renewed_back_to_back_are_standing_privilege() -> None:
    inv = clean()
    for i in range(3):
        issued = NOW - 4 * HOUR + i * (HOUR + 120)  # each issued 2 min after the last expired
        inv.history[f"g-r{i}"] = GrantHistory(
            grant(f"g-r{i}", ttl=HOUR, issued=issued), uses=5, last_use=issued + 3000
        )
    (finding,) = assess(inv, DEFAULT_TIERS)
    assert finding.kind == "renewed-grant"
    assert finding.id.startswith("renewed-grant:scribe:dr-alice:")
    assert finding.evidence["grants"] == ["g-r0", "g-r1", "g-r2"]


def test_grants_with_gaps_between_them_are_not_renewals() -> None:
    inv = clean()
    for i in range(3):
        issued = NOW - 10 * HOUR + i * 3 * HOUR
        inv.history[f"g-r{i}"] = GrantHistory(
            grant(f"g-r{i}", ttl=HOUR, issued=issued), uses=5, last_use=issued + 3000
        )
    assert kinds(inv) == []


def test_a_grant_never_used_is_reported_once_ended_or_old() -> None:
    inv = clean()
    inv.history["g-ended"] = GrantHistory(grant("g-ended", ttl=600, issued=NOW - HOUR))
    inv.history["g-fresh"] = GrantHistory(grant("g-fresh", ttl=900, issued=NOW - 60))
    findings = assess(inv, DEFAULT_TIERS)
    assert [f.id for f in findings] == ["unused-grant:g-ended"]
    assert findings[0].rule.owasp.startswith("NHI5:2025")


def test_a_live_grant_over_many_patients_is_broad() -> None:
    inv = clean()
    wide = grant("g-wide", resources=tuple(f'Patient::"p-{i}"' for i in range(11)))
    narrow = grant("g-narrow", resources=tuple(f'Patient::"p-{i}"' for i in range(10)))
    inv.live = {g.id: g for g in (wide, narrow)}
    assert [f.id for f in assess(inv, DEFAULT_TIERS)] == ["broad-grant:g-wide"]


def test_an_agent_whose_owner_nobody_knows_is_ownerless() -> None:
    inv = clean()
    inv.agents["night-bot"] = Agent("night-bot", "carol-left-2024", 10, "active")
    inv.seen["night-bot"] = Sighting(1, NOW)
    inv.agents["old-bot"] = Agent("old-bot", "carol-left-2024", 10, "suspended")
    (finding,) = assess(inv, DEFAULT_TIERS)
    assert (finding.id, finding.rule.severity) == ("ownerless-agent:night-bot", "high")
    assert finding.rule.owasp == "NHI1:2025 Improper Offboarding"


def test_a_high_risk_agent_with_a_write_grant() -> None:
    inv = clean()
    writes = grant("g-w", agent="dictation-vendor", actions=("read", "write"))
    reads = grant("g-r", agent="dictation-vendor")
    inv.live = {g.id: g for g in (writes, reads)}
    inv.history["g-w"] = GrantHistory(writes, uses=1, last_use=NOW - 100)
    inv.history["g-r"] = GrantHistory(reads, uses=1, last_use=NOW - 100)
    (finding,) = assess(inv, DEFAULT_TIERS)
    assert finding.id == "high-risk-write:g-w"
    assert finding.evidence["actions"] == ["write"]


def test_an_active_agent_never_seen_and_an_unregistered_one_seen() -> None:
    inv = clean()
    del inv.seen["med-reconciler"]
    inv.unregistered["shadow-bot"] = Sighting(4, NOW - 10, ["d-9"])
    inv.unregistered["scribe"] = Sighting(1, NOW - 10, ["d-8"])  # registered since: not reported
    assert [f.id for f in assess(inv, DEFAULT_TIERS)] == [
        "unregistered-agent:shadow-bot",
        "unseen-agent:med-reconciler",
    ]


def test_a_deregistered_agent_still_acting_is_unregistered() -> None:
    inv = clean()
    inv.agents["billing-bot"] = Agent("billing-bot", "bob", 40, "deregistered")
    inv.unregistered["billing-bot"] = Sighting(2, NOW - 10)
    assert kinds(inv) == ["unregistered-agent"]


def test_long_lived_tokens_in_traffic() -> None:
    inv = clean()
    inv.long_tokens["scribe"] = Sighting(2, NOW - 10, ["d-7"])
    inv.longest_token["scribe"] = 12 * HOUR
    (finding,) = assess(inv, DEFAULT_TIERS)
    assert finding.id == "long-lived-token:scribe"
    assert finding.rule.owasp == "NHI7:2025 Long-Lived Secrets"
    assert finding.evidence["longest_seconds"] == 12 * HOUR


def _with_policy(tmp_path: Path, name: str, text: str) -> Path:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory, ignore=shutil.ignore_patterns("tests"))
    (directory / name).write_text(text)
    return directory


def test_every_probe_is_a_request_cedar_can_decide() -> None:
    """The probes' context must be the pipeline's: a field the schema requires and the probe
    lacks makes Cedar error on every probe, and posture would see no permit at all."""
    inv = clean()
    engine = PolicyEngine(inv.bundle, DEFAULT_TIERS)
    found = list(policy_gaps.probes(inv, engine, DEFAULT_TIERS))
    assert len(found) > 10
    for probe in found:
        outcome = engine.evaluate(probe.request, probe.delta)  # raises PolicyError on errors
        assert not outcome.allowed, (probe.route, probe.request.principal)


def test_a_permit_that_needs_no_grant_for_phi_is_critical(tmp_path: Path) -> None:
    directory = _with_policy(
        tmp_path,
        "scribe-reads-medications.cedar",
        '@id("scribe-reads-medications")\n'
        'permit (principal == Agent::"scribe", action == Action::"read", '
        "resource is Medications);\n",
    )
    (finding,) = assess(clean(directory), DEFAULT_TIERS)
    assert (finding.id, finding.rule.severity) == (
        "phi-permit-without-grant:scribe-reads-medications",
        "critical",
    )
    assert finding.evidence == {
        "principal": 'Agent::"scribe"',
        "action": "read",
        "resource_type": "Medications",
        "route": "GET /patients/{patient}/medications",
        "purpose": PURPOSE,
    }


def test_a_policy_left_in_shadow_for_weeks(tmp_path: Path) -> None:
    directory = _with_policy(
        tmp_path,
        "no-night-writes.cedar",
        '@id("no-night-writes")\n@mode("shadow")\n'
        'forbid (principal, action == Action::"write", resource);\n',
    )
    inv = clean(directory)
    inv.now = time.time()
    assert kinds(inv) == []  # written just now
    inv.shadow_hits["no-night-writes"] = inv.now - 20 * 86400  # ... but in shadow since
    (finding,) = assess(inv, DEFAULT_TIERS)
    assert finding.id == "long-shadow-policy:no-night-writes"
    assert finding.evidence["days"] == 20
    old = inv.now - 40 * 86400
    os.utime(directory / "no-night-writes.cedar", (old, old))
    inv.shadow_hits.clear()
    assert assess(inv, DEFAULT_TIERS)[0].evidence["days"] == 40


def test_findings_are_ordered_by_severity_and_every_rule_is_complete() -> None:
    inv = clean()
    del inv.seen["orchestrator"]  # low
    inv.agents["night-bot"] = Agent("night-bot", "nobody", 10, "active")  # high (and unseen)
    order = [f.rule.severity for f in assess(inv, DEFAULT_TIERS)]
    assert order == sorted(order, key=lambda s: -SEVERITIES.index(s))
    assert at_or_above("high") == frozenset({"high", "critical"})
    for rule in RULES.values():
        assert rule.severity in SEVERITIES and rule.owasp.startswith("NHI") and rule.fix


def test_custom_limits() -> None:
    inv = clean()
    inv.live = {"g": grant("g", resources=tuple(f'Patient::"p-{i}"' for i in range(5)))}
    assert kinds(inv) == []
    assert [f.kind for f in assess(inv, DEFAULT_TIERS, Limits(broad_resources=4))] == [
        "broad-grant"
    ]


def _write_trail(path: Path, records: list[AuditRecord | EventRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))


def _decision(decision_id: str, agent: str, at: float, **kw: object) -> AuditRecord:
    fields: dict[str, object] = dict(
        decision_id=decision_id, time=rfc3339(at), decision="allow", status=200, reason="allowed",
        user="dr-alice", chain=[agent], agent=agent, client_id=agent, peer="", action="read",
        resource='Records::"p-1001"', method="GET", host="h", path="/patients/p-1001/records",
        purpose=PURPOSE, txn="t", grant_id="", policies=[], policy_version="v",
        token_sha256="0" * 64, latency_ms=1.0,
    )  # fmt: skip
    fields.update(kw)
    return AuditRecord(**fields)  # type: ignore[arg-type]


def test_the_embedded_store_is_rebuilt_from_the_seed_and_the_trail(tmp_path: Path) -> None:
    """No Redis: agents and grants come from entities.json and the trail's events."""
    now = time.time()
    g = grant("g-1", issued=now - 100, ttl=900)
    detail = {k: v for k, v in json.loads(g.to_json()).items() if k != "id"}
    registered = {"owner": "carol", "risk": 10, "allowed_purposes": [PURPOSE], "status": "active"}
    suspended = {"owner": "carol", "risk": 10, "status": "suspended", "detector": "breadth"}
    records: list[AuditRecord | EventRecord] = [
        EventRecord("agent_registered", "ops", "night-bot", rfc3339(now - 300), registered),
        EventRecord("agent_suspended", "lasthop", "night-bot", rfc3339(now - 200), suspended),
        EventRecord("agent_deregistered", "ops", "billing-bot", rfc3339(now - 200), {}),
        EventRecord("grant_issued", "ops", "g-1", rfc3339(now - 100), detail),
        _decision("d-1", "scribe", now - 50, grant_id="g-1"),
        _decision(
            "d-2", "ghost", now - 40, decision="deny", status=403, reason="agent_unregistered"
        ),
    ]
    trail = tmp_path / "audit" / "decisions.jsonl"
    _write_trail(trail, records)
    bundle = policy_load.load(POLICIES)
    inv = Inventory(now, now - 86400, bundle, POLICIES, agents={}, live={})
    inventory.read(inv, [trail], rebuild_store=True)
    assert inv.agents["night-bot"].status == "suspended"
    assert inv.agents["billing-bot"].status == "deregistered"
    assert inv.agents["scribe"] == bundle.agents["scribe"]
    assert set(inv.live) == {"g-1"} and inv.history["g-1"].uses == 1
    assert set(inv.unregistered) == {"ghost"}
    assert {"dr-alice", "bob", "ops"} <= inv.users
    assert inv.records == len(records)


def test_uses_and_revocations_join_their_grant_across_trails(tmp_path: Path) -> None:
    """Replica 1 checked the grant replica 0 issued and revoked: the files come in any order."""
    now = time.time()
    g = grant("g-1", issued=now - 100, ttl=900)
    detail = {k: v for k, v in json.loads(g.to_json()).items() if k != "id"}
    first, second = tmp_path / "r1.jsonl", tmp_path / "r0.jsonl"
    _write_trail(first, [_decision("d-1", "scribe", now - 50, grant_id="g-1")])
    _write_trail(
        second,
        [
            EventRecord("grant_issued", "ops", "g-1", rfc3339(now - 100), detail),
            EventRecord("grant_revoked", "ops", "g-1", rfc3339(now - 10), detail),
        ],
    )
    inv = Inventory(now, now - 86400, policy_load.load(POLICIES), POLICIES, {}, {})
    inventory.read(inv, [first, second], rebuild_store=False)
    history = inv.history["g-1"]
    assert (history.uses, history.revoked_at is not None) == (1, True)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_every_severity_names_itself_and_those_above(severity: str) -> None:
    above = at_or_above(severity)
    assert severity in above
    assert all(SEVERITIES.index(s) >= SEVERITIES.index(severity) for s in above)


# --- the command ------------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    jwks = DemoIssuer("ES256", kid="posture").write_jwks(tmp_path / "keys" / "jwks.json")
    return devstack.write_config(tmp_path, jwks)


def test_the_command_on_the_embedded_store_reads_the_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    now = time.time()
    records: list[AuditRecord | EventRecord] = [
        _decision(f"d-{agent}", agent, now - 60, user=user)
        for agent, user in (
            ("scribe", "dr-alice"), ("orchestrator", "dr-alice"), ("med-reconciler", "dr-alice"),
            ("billing-bot", "bob"), ("dictation-vendor", "dr-alice"),
        )
    ]  # fmt: skip
    records.append(
        _decision(
            "d-x", "ghost", now - 30, decision="deny", status=403, reason="agent_unregistered"
        )
    )
    _write_trail(tmp_path / "audit" / "decisions.jsonl", records)
    assert cli.main(["posture", "--config", str(config), "--output", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [f["id"] for f in report["findings"]] == ["unregistered-agent:ghost"]
    assert cli.main(["posture", "--config", str(config), "--fail-on", "high"]) == 1
    assert cli.main(["posture", "--config", str(config), "--fail-on", "critical"]) == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--since", "last tuesday"], "--since: `last tuesday` is not a date"),
        (["--at", "soon"], "--at: `soon` is not a date"),
    ],
)
def test_bad_input_is_a_clear_error_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    config = _config(tmp_path)
    _write_trail(tmp_path / "audit" / "decisions.jsonl", [])
    assert cli.main(["posture", "--config", str(config), *args]) == 2
    assert says in capsys.readouterr().err


def test_an_unknown_severity_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["posture", "--config", str(_config(tmp_path)), "--fail-on", "severe"])
    assert info.value.code == 2 and "invalid choice: 'severe'" in capsys.readouterr().err


def test_a_missing_trail_is_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_config(tmp_path))
    assert cli.main(["posture", "--config", config]) == Exit.NOT_FOUND
    assert "no audit trail at" in capsys.readouterr().err
    _write_trail(tmp_path / "audit" / "decisions.jsonl", [])
    assert cli.main(["posture", "--config", config, "--trail", "nothing.jsonl"]) == Exit.NOT_FOUND
    assert "no audit trail at `nothing.jsonl`" in capsys.readouterr().err


def test_an_unreachable_store_is_unavailable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jwks = DemoIssuer("ES256", kid="posture").write_jwks(tmp_path / "keys" / "jwks.json")
    config = devstack.write_config(tmp_path, jwks, redis_url="redis://127.0.0.1:1/0")
    _write_trail(tmp_path / "audit" / "decisions.jsonl", [])
    assert cli.main(["posture", "--config", str(config)]) == Exit.UNAVAILABLE
    assert "cannot read the store" in capsys.readouterr().err
