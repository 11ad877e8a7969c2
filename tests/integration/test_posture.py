"""`lasthop posture` on a real fleet: nothing on a clean one, every finding kind on a seeded one.

Two replicas share one Redis; the report reads Redis, the policy directory and both
replicas' trails (the second with `--trail`), as an operator's cron job would. The
seeded report runs as the command itself; the others call its entry point in process
(the same code, without a Python start-up each).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from authz._proto import agents_pb2 as apb
from authz._proto import grants_pb2 as pb
from authz.cli import main as cli
from authz.detect.findings import RULES
from authz.dev import stack as devstack
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import PURPOSE, RECORDS, run_cli, unique, wait_until
from tests.integration.fleet import SEED_AGENT, Fleet, Replica, running_fleet

pytestmark = pytest.mark.integration

LATER = 90 * 60  # `--at` this far ahead: two-hour grants are past half their life


@pytest.fixture(scope="module")
def fleet(upstream: DemoUpstream) -> Iterator[Fleet]:
    with devstack.workdir("lasthop-it-posture-redis-") as work:
        redis = devstack.RedisServer(Path(work))
        try:
            with running_fleet("lasthop-it-posture-", redis.url, upstream=upstream) as running:
                yield running
        finally:
            redis.close()


def _trail(replica: Replica) -> Path:
    return replica.config.parent / "audit" / "decisions.jsonl"


def _args(fleet: Fleet, at: float | None, args: tuple[str, ...]) -> list[str]:
    one, two = fleet.replicas
    when = [] if at is None else ["--at", datetime.fromtimestamp(at, UTC).isoformat()]
    return ["posture", "--config", str(one.config), "--trail", str(_trail(two)), *when, *args]


def posture(fleet: Fleet, *args: str, at: float | None = None) -> tuple[int, str]:
    """`lasthop posture ...` through its entry point, in this process: (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(_args(fleet, at, args))
    assert code in (0, 1), out.getvalue()
    return code, out.getvalue()


def command(fleet: Fleet, *args: str, at: float | None = None) -> tuple[int, str]:
    """The same as the `lasthop` command, in its own process."""
    result = run_cli(*_args(fleet, at, args))
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


def grant(
    replica: Replica,
    agent: str,
    user: str,
    *,
    patients: tuple[str, ...] = ("p-1001",),
    actions: tuple[str, ...] = ("read",),
    ttl: int = 900,
) -> pb.Grant:
    return replica.admin.issue(
        pb.IssueGrantRequest(
            agent=agent,
            user=user,
            actions=list(actions),
            resources=[f'Patient::"{p}"' for p in patients],
            purpose=PURPOSE,
            ttl_seconds=ttl,
        )
    )


def use(replica: Replica, fleet: Fleet, user: str, agents: list[str], **claims: Any) -> None:
    assert wait_until(
        lambda: replica.get(RECORDS, fleet.token(user, agents, **claims)).status == 200, 5.0
    )


def test_a_clean_fleet_then_a_seeded_one(fleet: Fleet, tmp_path: Path) -> None:
    one, two = fleet.replicas
    # clean: every active agent acts, grants are short and used
    for replica, agent, purpose in (
        (one, "scribe", PURPOSE),
        (two, SEED_AGENT, PURPOSE),
        (one, "med-reconciler", "medication-reconciliation"),
    ):
        user = unique("u-clean")
        replica.admin.issue(
            pb.IssueGrantRequest(
                agent=agent, user=user, actions=["read"], resources=['Patient::"p-1001"'],
                purpose=purpose, ttl_seconds=900,
            )
        )  # fmt: skip
        path = "/patients/p-1001/medications" if agent == "med-reconciler" else RECORDS
        token = fleet.token(user, [agent], purpose=purpose)
        assert wait_until(lambda r=replica, p=path, t=token: r.get(p, t).status == 200, 5.0)
    user = unique("u-clean")
    grant(two, "scribe", user)
    use(two, fleet, user, ["orchestrator", "scribe"])
    for agent, purpose in (("billing-bot", "billing"), ("dictation-vendor", PURPOSE)):
        fleet.replicas[1].get(RECORDS, fleet.token(unique("u-seen"), [agent], purpose=purpose))
    gauges = tmp_path / "posture.prom"
    code, out = posture(
        fleet, "--output", "json", "--fail-on", "info", "--metrics-file", str(gauges)
    )
    clean = json.loads(out)
    assert code == 0 and clean["findings"] == [], json.dumps(clean["findings"], indent=1)
    assert clean["agents"] >= 6 and clean["records"] > 0
    for kind, rule in RULES.items():  # the counts as Prometheus gauges, at 0 on a clean fleet
        assert f'lasthop_posture_findings{{kind="{kind}",severity="{rule.severity}"}} 0.0' in (
            gauges.read_text()
        )

    _seed(fleet)
    later = time.time() + LATER
    code, out = command(fleet, "--output", "json", at=later)
    assert code == 0
    seeded = json.loads(out)
    found = {f["kind"]: f for f in seeded["findings"]}
    assert set(found) == set(RULES), sorted(set(RULES) - set(found))
    for finding in seeded["findings"]:
        assert finding["id"].startswith(finding["kind"] + ":")
        assert finding["owasp"].startswith("NHI") and finding["fix"] and finding["evidence"]
    assert found["phi-permit-without-grant"]["severity"] == "critical"
    assert found["unregistered-agent"]["id"].startswith("unregistered-agent:ghost-")

    code, text = posture(fleet, "--fail-on", "high", at=later)
    assert code == 1 and "CRITICAL phi-permit-without-grant:" in text
    for f in seeded["findings"]:  # the same ids, run after run
        assert f"{f['id']}\n" in text, f["id"]
    code, markdown = posture(fleet, "--output", "md", "--metrics-file", str(gauges), at=later)
    assert code == 0 and "| critical | 1 |" in markdown
    assert 'lasthop_posture_findings{kind="phi-permit-without-grant",severity="critical"} 1.0' in (
        gauges.read_text()
    )


def _seed(fleet: Fleet) -> None:
    """One of every exposure the report knows."""
    one, two = fleet.replicas
    user = unique("u-seed")
    grant(one, "scribe", user, ttl=7200)  # standing: two hours, used once
    use(one, fleet, user, ["scribe"])
    renewed = unique("u-renew")
    for _ in range(3):  # renewed back to back (each used, each short)
        grant(two, "scribe", renewed, patients=("p-1002",))
        assert two.get("/patients/p-1002/records", fleet.token(renewed, ["scribe"])).status == 200
    grant(one, "scribe", unique("u-idle"))  # unused
    wide = unique("u-wide")
    grant(one, "scribe", wide, patients=tuple(f"p-{4000 + i}" for i in range(11)))  # broad
    grant(one, "dictation-vendor", unique("u-vendor"), actions=("read", "write"))  # high risk
    orphan = f"orphan-{uuid.uuid4().hex[:6]}"
    one.admin.register_agent(
        apb.RegisterAgentRequest(id=orphan, owner="carol-left", risk=10, allowed_purposes=[PURPOSE])
    )
    two.get(RECORDS, fleet.token(unique("u-orphan"), [orphan]))  # ownerless (and seen)
    fleet.register(prefix="idle")  # unseen
    two.get(
        RECORDS, fleet.token(unique("u-ghost"), [f"ghost-{uuid.uuid4().hex[:6]}"])
    )  # unregistered
    long_user = unique("u-long")
    grant(two, "scribe", long_user)
    use(two, fleet, long_user, ["scribe"], ttl=3000)  # a long-lived token (hygiene alert)
    policies = one.config.parent.parent / "policies"  # the fleet's (fleet.fleet_policies)
    (policies / "zz-med-reconciler-reads-freely.cedar").write_text(
        '@id("med-reconciler-reads-freely")\n'
        'permit (principal == Agent::"med-reconciler", action == Action::"read", '
        "resource is Medications);\n"
    )
    shadow = policies / "zz-no-night-writes.cedar"
    shadow.write_text(
        '@id("no-night-writes")\n@mode("shadow")\n'
        'forbid (principal, action == Action::"write", resource);\n'
    )
    weeks_ago = time.time() - 20 * 86400
    os.utime(shadow, (weeks_ago, weeks_ago))
