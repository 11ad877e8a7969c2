"""Shadow policies (`@mode("shadow")`): evaluated on every Cedar check, recorded, never enforced.

Each test copies the shipped policies to a temporary directory, adds shadow
policies there, loads the copy and runs the whole pipeline in process with the
shipped hospital example. Shadow files are named `00-...` so they sort first and
take the lowest Cedar ids: the enforced set then has gaps in its ids, which
must not confuse the mapping back to `@id` and `@reason`.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from authz.audit import chain as audit_chain
from authz.audit.records import AuditRecord, MemoryAudit
from authz.config import IdentitySettings
from authz.dev.tokens import DemoIssuer
from authz.errors import PolicyLoadError
from authz.model import Decision
from authz.policy import load as policy_load
from authz.server.app import assemble
from authz.server.metrics import Metrics
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry
from tests.conftest import POLICIES, PURPOSE, Clock, check_input, grant, keys_for

RECORDS = "/patients/p-1001/records"
DISAGREEMENTS = "lasthop_shadow_disagreements_total"

SHADOW_FORBID_SCRIBE_READS = """\
// Trial: would the scribe still work if it could not read?
@id("shadow-scribe-never-reads")
@mode("shadow")
@reason("scribe_reads_paused")
forbid (
  principal == Agent::"scribe",
  action == Action::"read",
  resource
);
"""

SHADOW_FORBID_MED_RECONCILER = """\
@id("shadow-med-reconciler-never-writes")
@mode("shadow")
forbid (
  principal == Agent::"med-reconciler",
  action == Action::"write",
  resource
);
"""

SHADOW_FORBID_ORCHESTRATOR = """\
@id("shadow-orchestrator-never-reads")
@mode("shadow")
forbid (
  principal == Agent::"orchestrator",
  action == Action::"read",
  resource
);
"""

SHADOW_PERMIT_ORCHESTRATOR = """\
@id("shadow-orchestrator-reads-records")
@mode("shadow")
permit (
  principal == Agent::"orchestrator",
  action == Action::"read",
  resource is Records
)
when { context has grant };
"""

SHADOW_PERMIT_BILLING_RECORDS = """\
@id("shadow-billing-reads-records")
@mode("shadow")
permit (
  principal == Agent::"billing-bot",
  action == Action::"read",
  resource is Records
)
when { context has grant };
"""

# Passes strict schema validation (Long * Long is a Long) but overflows at run
# time for any realistic `context.time`: an evaluation error, not a parse error.
OVERFLOW_CONDITION = "when { context.time * 9223372036854775807 > 0 }"
SHADOW_ERRORING = f"""\
@id("shadow-overflows")
@mode("shadow")
forbid (principal, action, resource)
{OVERFLOW_CONDITION};
"""


class Env:
    """The shipped example plus the given extra policy files, as a pipeline with metrics."""

    def __init__(self, tmp_path: Path, issuer: DemoIssuer, extra: dict[str, str]) -> None:
        self.dir = tmp_path / "policies"
        shutil.copytree(POLICIES, self.dir)
        for name, text in extra.items():
            (self.dir / name).write_text(text, encoding="utf-8")
        self.bundle = policy_load.load(self.dir)
        self.clock = Clock()
        self.store = EmbeddedGrantStore(self.clock)
        self.audit = MemoryAudit()
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.issuer = issuer
        keys = keys_for(issuer)
        self.pipeline = assemble(
            ident=IdentitySettings(),
            keys=keys,
            bundle=self.bundle,
            registry=SeededRegistry(self.bundle.agents),
            store=self.store,
            audit=self.audit,
            observer=self.metrics,
            clock=self.clock,
        )

    def check(
        self,
        user: str,
        agent: str,
        *,
        method: str = "GET",
        path: str = RECORDS,
        purpose: str = PURPOSE,
        grant_actions: tuple[str, ...] | None = ("read",),
    ) -> Decision:
        async def go() -> Decision:
            if grant_actions is not None:
                await self.store.put(
                    grant(
                        agent=agent,
                        user=user,
                        actions=grant_actions,
                        purpose=purpose,
                        now=self.clock.now,
                    )
                )
            token = self.issuer.access_token(user, [agent], purpose=purpose)
            return await self.pipeline.check(check_input(token, method=method, path=path))

        return asyncio.run(go())

    def record(self, decision: Decision) -> AuditRecord:
        matching = [
            r
            for r in self.audit.records
            if isinstance(r, AuditRecord) and r.decision_id == decision.decision_id
        ]
        assert len(matching) == 1, self.audit.records
        return matching[0]

    def disagreements(self) -> float | None:
        return self.registry.get_sample_value(DISAGREEMENTS)


def test_shadow_policies_are_loaded_apart_from_the_enforced_set(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    env = Env(
        tmp_path,
        issuer,
        {
            "00-shadow-forbid.cedar": SHADOW_FORBID_SCRIBE_READS,
            "00-shadow-permit.cedar": SHADOW_PERMIT_ORCHESTRATOR,
        },
    )
    modes = {info.id: info.mode for info in env.bundle.policies.values()}
    assert modes["shadow-scribe-never-reads"] == "shadow"
    assert modes["shadow-orchestrator-reads-records"] == "shadow"
    assert modes["scribe-read-records"] == "enforce"
    assert len(env.bundle.policy_set) == len(policy_load.load(POLICIES).policy_set)
    assert env.bundle.shadow_probe is not None and len(env.bundle.shadow_probe) == 2


def test_no_shadow_policies_means_no_probe(tmp_path: Path, issuer: DemoIssuer) -> None:
    env = Env(tmp_path, issuer, {})
    assert env.bundle.shadow_probe is None
    decision = env.check("dr-alice", "scribe")
    assert decision.allowed and decision.shadow == () and not decision.shadow_disagrees
    assert env.record(decision).shadow == []


def test_matching_shadow_forbid_is_recorded_but_not_enforced(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    env = Env(tmp_path, issuer, {"00-shadow-forbid.cedar": SHADOW_FORBID_SCRIBE_READS})
    decision = env.check("dr-alice", "scribe")
    assert (decision.allowed, decision.status, decision.reason) == (True, 200, "allowed")
    assert decision.policies == ("scribe-read-records",)
    assert decision.shadow == (("shadow-scribe-never-reads", "forbid"),)
    assert decision.shadow_disagrees is True
    record = env.record(decision)
    assert record.decision == "allow" and record.reason == "allowed"
    assert record.policies == ["scribe-read-records"]
    assert record.shadow == [{"policy": "shadow-scribe-never-reads", "effect": "forbid"}]
    assert record.shadow_disagrees is True
    assert b'"shadow_disagrees":true' in audit_chain.canonical(record.to_dict())
    assert env.disagreements() == 1.0


def test_shadow_forbid_that_does_not_match(tmp_path: Path, issuer: DemoIssuer) -> None:
    env = Env(tmp_path, issuer, {"00-shadow-forbid.cedar": SHADOW_FORBID_MED_RECONCILER})
    decision = env.check("dr-alice", "scribe")
    assert decision.allowed and decision.reason == "allowed"
    assert decision.shadow == ()
    assert decision.shadow_disagrees is False
    record = env.record(decision)
    assert record.shadow == [] and record.shadow_disagrees is False
    assert env.disagreements() == 0.0


def test_shadow_forbid_on_an_already_denied_request_does_not_disagree(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    env = Env(tmp_path, issuer, {"00-shadow-forbid.cedar": SHADOW_FORBID_ORCHESTRATOR})
    decision = env.check("dr-alice", "orchestrator")
    assert (decision.allowed, decision.status, decision.reason) == (False, 403, "policy_denied")
    assert decision.shadow == (("shadow-orchestrator-never-reads", "forbid"),)
    assert decision.shadow_disagrees is False
    assert env.disagreements() == 0.0


def test_shadow_permit_that_would_allow_a_policy_denied_request(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    env = Env(tmp_path, issuer, {"00-shadow-permit.cedar": SHADOW_PERMIT_ORCHESTRATOR})
    decision = env.check("dr-alice", "orchestrator")
    assert (decision.allowed, decision.status, decision.reason) == (False, 403, "policy_denied")
    assert decision.shadow == (("shadow-orchestrator-reads-records", "permit"),)
    assert decision.shadow_disagrees is True
    record = env.record(decision)
    assert record.decision == "deny" and record.reason == "policy_denied"
    assert record.shadow == [{"policy": "shadow-orchestrator-reads-records", "effect": "permit"}]
    assert record.shadow_disagrees is True
    assert env.disagreements() == 1.0


def test_shadow_permit_never_overrides_an_enforced_forbid(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    env = Env(tmp_path, issuer, {"00-shadow-permit.cedar": SHADOW_PERMIT_BILLING_RECORDS})
    decision = env.check("bob", "billing-bot", purpose="billing")
    assert (decision.allowed, decision.status, decision.reason) == (
        False,
        403,
        "billing_not_clinical",
    )
    assert decision.policies == ("billing-never-clinical",)
    assert decision.shadow == (("shadow-billing-reads-records", "permit"),)
    assert decision.shadow_disagrees is False
    record = env.record(decision)
    assert record.shadow == [{"policy": "shadow-billing-reads-records", "effect": "permit"}]
    assert record.shadow_disagrees is False
    assert env.disagreements() == 0.0


def test_shadow_forbid_and_permit_together(tmp_path: Path, issuer: DemoIssuer) -> None:
    """A shadow forbid wins over a shadow permit, as a forbid would when enforced."""
    env = Env(
        tmp_path,
        issuer,
        {
            "00-shadow-permit.cedar": SHADOW_PERMIT_ORCHESTRATOR,
            "00-shadow-forbid.cedar": SHADOW_FORBID_ORCHESTRATOR,
        },
    )
    decision = env.check("dr-alice", "orchestrator")
    assert decision.reason == "policy_denied"
    assert set(decision.shadow) == {
        ("shadow-orchestrator-reads-records", "permit"),
        ("shadow-orchestrator-never-reads", "forbid"),
    }
    assert decision.shadow_disagrees is False


def test_shadow_policies_are_not_evaluated_before_cedar(tmp_path: Path, issuer: DemoIssuer) -> None:
    env = Env(tmp_path, issuer, {"00-shadow-forbid.cedar": SHADOW_FORBID_SCRIBE_READS})
    decision = env.check("dr-alice", "scribe", grant_actions=None)
    assert (decision.allowed, decision.reason) == (False, "no_grant")
    assert decision.shadow == () and not decision.shadow_disagrees
    assert env.record(decision).shadow == []


def test_erroring_shadow_policy_is_recorded_as_error_and_changes_nothing(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    env = Env(tmp_path, issuer, {"00-shadow-overflows.cedar": SHADOW_ERRORING})
    allowed = env.check("dr-alice", "scribe")
    assert (allowed.allowed, allowed.status, allowed.reason) == (True, 200, "allowed")
    assert allowed.policies == ("scribe-read-records",)
    assert allowed.shadow == (("shadow-overflows", "error"),)
    assert env.record(allowed).shadow == [{"policy": "shadow-overflows", "effect": "error"}]
    denied = env.check("dr-alice", "orchestrator")
    assert (denied.allowed, denied.status, denied.reason) == (False, 403, "policy_denied")
    assert denied.shadow == (("shadow-overflows", "error"),)
    forbidden = env.check("bob", "billing-bot", purpose="billing")
    assert (forbidden.status, forbidden.reason) == (403, "billing_not_clinical")
    assert forbidden.shadow == (("shadow-overflows", "error"),)
    assert forbidden.shadow_disagrees is False


def test_the_erroring_condition_fails_closed_when_enforced(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    """Control for the test above: the same policy, enforced, makes Cedar undecidable (503)."""
    enforced = SHADOW_ERRORING.replace('@mode("shadow")\n', "")
    env = Env(tmp_path, issuer, {"00-overflows.cedar": enforced})
    decision = env.check("dr-alice", "scribe")
    assert (decision.allowed, decision.status, decision.reason) == (False, 503, "policy_error")
    assert "shadow-overflows" in decision.detail


def test_erroring_shadow_policy_on_an_allowed_request_counts_as_a_disagreement(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    """`shadow_disagrees`: "enforcing the shadow policies would flip the decision".

    Enforced, this policy turns the allow into a 503 policy_error (see the control
    test above), so the shadow evaluation of the same request must report that the
    decision would change, and count it, or a policy author promotes a policy that
    fails every request closed without ever having been told.
    """
    env = Env(tmp_path, issuer, {"00-shadow-overflows.cedar": SHADOW_ERRORING})
    decision = env.check("dr-alice", "scribe")
    assert decision.allowed and decision.shadow == (("shadow-overflows", "error"),)
    assert decision.shadow_disagrees is True
    assert env.record(decision).shadow_disagrees is True
    assert env.disagreements() == 1.0


@pytest.mark.parametrize("mode", ["bogus", "Shadow", "enforced", ""])
def test_unknown_mode_is_refused_at_load_with_file_and_line(tmp_path: Path, mode: str) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    path = directory / "zz-trial.cedar"
    path.write_text(
        "// A trial policy with a typo in its mode.\n"
        "\n"
        '@id("trial")\n'
        f'@mode("{mode}")\n'
        "forbid (principal, action, resource);\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyLoadError) as info:
        policy_load.load(directory)
    err = info.value
    assert err.path == str(path)
    assert err.line == 3
    assert "zz-trial.cedar:3" in str(err)
    assert f'@mode("{mode}")' in str(err)


def test_explicit_enforce_mode_is_enforced(tmp_path: Path, issuer: DemoIssuer) -> None:
    enforced = SHADOW_FORBID_SCRIBE_READS.replace('@mode("shadow")', '@mode("enforce")')
    env = Env(tmp_path, issuer, {"00-forbid.cedar": enforced})
    assert env.bundle.shadow_probe is None
    decision = env.check("dr-alice", "scribe")
    assert (decision.allowed, decision.status, decision.reason) == (
        False,
        403,
        "scribe_reads_paused",
    )
    assert decision.policies == ("shadow-scribe-never-reads",)


def test_disagreement_counter_counts_each_disagreeing_check(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    env = Env(
        tmp_path,
        issuer,
        {
            "00-shadow-forbid.cedar": SHADOW_FORBID_SCRIBE_READS,
            "00-shadow-permit.cedar": SHADOW_PERMIT_ORCHESTRATOR,
        },
    )
    assert env.disagreements() == 0.0
    assert env.check("dr-alice", "scribe").shadow_disagrees  # would deny
    assert env.disagreements() == 1.0
    assert env.check("dr-alice", "orchestrator").shadow_disagrees  # would allow
    assert env.disagreements() == 2.0
    agrees = env.check(
        "dr-alice",
        "med-reconciler",
        path="/patients/p-1001/medications",
        purpose="medication-reconciliation",
    )
    assert agrees.allowed and not agrees.shadow_disagrees
    assert env.disagreements() == 2.0
    denied_early = env.check("dr-carol", "scribe", grant_actions=None)
    assert denied_early.reason == "no_grant"
    assert env.disagreements() == 2.0
    assert (
        env.registry.get_sample_value(
            "lasthop_decisions_total", {"kind": "http", "decision": "allow", "reason": "allowed"}
        )
        == 2.0
    )
