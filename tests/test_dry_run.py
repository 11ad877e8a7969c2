"""Dry-run (`policies.mode = "dry-run"`): grant and Cedar denials are recorded, not enforced.

Everything else still is: a bad or missing token, a refused chain or agent, a
path that maps to no route, and anything that keeps Lasthop from deciding.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from authz import config
from authz.audit.records import AuditRecord, MemoryAudit, Record
from authz.config import IdentitySettings
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.errors import ConfigError, StoreUnavailable
from authz.model import Decision, Grant
from authz.policy import load as policy_load
from authz.policy.load import PolicyBundle
from authz.server import app as app_module
from authz.server.app import assemble
from authz.server.metrics import Metrics
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry
from authz.stores.protocols import GrantStore
from tests.conftest import POLICIES, PURPOSE, Clock, check_input, grant, keys_for

RECORDS = "/patients/p-1001/records"


# --- config -----------------------------------------------------------------------------------


def _config(tmp_path: Path, policies: str) -> Path:
    path = tmp_path / "lasthop.toml"
    path.write_text(f"[policies]\n{policies}\n", encoding="utf-8")
    return path


def test_dry_run_without_allow_dry_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(_config(tmp_path, 'mode = "dry-run"'), environ={})
    assert info.value.key == "policies.mode"
    assert "`policies.mode`" in str(info.value)
    assert "allow_dry_run" in str(info.value)


def test_dry_run_with_allow_dry_run_false_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(_config(tmp_path, 'mode = "dry-run"\nallow_dry_run = false'), environ={})
    assert info.value.key == "policies.mode"


def test_dry_run_from_the_environment_alone_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(None, environ={"LASTHOP_POLICIES_MODE": "dry-run"})
    assert info.value.key == "policies.mode"


def test_dry_run_with_allow_dry_run_loads(tmp_path: Path) -> None:
    settings = config.load(_config(tmp_path, 'mode = "dry-run"\nallow_dry_run = true'), environ={})
    assert settings.policies.mode == "dry-run"
    assert settings.policies.allow_dry_run is True


def test_dry_run_allowed_from_the_environment() -> None:
    settings = config.load(
        None, environ={"LASTHOP_POLICIES_MODE": "dry-run", "LASTHOP_POLICIES_ALLOW_DRY_RUN": "true"}
    )
    assert settings.policies.mode == "dry-run"


def test_default_mode_is_enforce(tmp_path: Path) -> None:
    settings = config.load(_config(tmp_path, ""), environ={})
    assert settings.policies.mode == "enforce"
    assert settings.policies.allow_dry_run is False


@pytest.mark.parametrize("mode", ["bogus", "dryrun", "Enforce", "dry_run", ""])
def test_unknown_mode_is_refused(tmp_path: Path, mode: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(_config(tmp_path, f'mode = "{mode}"\nallow_dry_run = true'), environ={})
    assert info.value.key == "policies.mode"
    assert f"`{mode}`" in str(info.value)


def test_mode_must_be_a_string(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(_config(tmp_path, "mode = true"), environ={})
    assert info.value.key == "policies.mode"


def test_app_build_in_dry_run_says_so_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = DemoIssuer("ES256", kid="dry").write_jwks(tmp_path / "keys" / "jwks.json")
    path = devstack.write_config(tmp_path, jwks)
    path.write_text(
        path.read_text().replace(
            "[policies]\n", '[policies]\nmode = "dry-run"\nallow_dry_run = true\n'
        )
    )
    with caplog.at_level(logging.WARNING, logger="authz.server.app"):
        app = app_module.build(config.load(path, environ={}), CollectorRegistry())
    assert app.pipeline.options.dry_run is True
    assert any(
        "DRY RUN" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    ), caplog.records


def test_app_build_in_enforce_mode_is_not_dry_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = DemoIssuer("ES256", kid="enf").write_jwks(tmp_path / "keys" / "jwks.json")
    path = devstack.write_config(tmp_path, jwks)
    with caplog.at_level(logging.WARNING, logger="authz.server.app"):
        app = app_module.build(config.load(path, environ={}), CollectorRegistry())
    assert app.pipeline.options.dry_run is False
    assert not any("DRY RUN" in r.getMessage() for r in caplog.records)


# --- the pipeline ------------------------------------------------------------------------------


class DownStore(EmbeddedGrantStore):
    """A grant store that cannot answer."""

    async def for_pair(self, agent: str, user: str) -> list[Grant]:
        raise StoreUnavailable("grant store timed out (test)")


class Env:
    def __init__(
        self,
        issuer: DemoIssuer,
        bundle: PolicyBundle,
        *,
        dry_run: bool,
        store: GrantStore | None = None,
    ) -> None:
        self.clock = Clock()
        self.issuer = issuer
        self.store = store if store is not None else EmbeddedGrantStore(self.clock)
        self.audit = MemoryAudit()
        self.registry = CollectorRegistry()
        keys = keys_for(issuer)
        self.pipeline = assemble(
            ident=IdentitySettings(),
            keys=keys,
            bundle=bundle,
            registry=SeededRegistry(bundle.agents),
            store=self.store,
            audit=self.audit,
            observer=Metrics(self.registry),
            clock=self.clock,
            dry_run=dry_run,
        )

    def put(self, g: Grant) -> None:
        asyncio.run(self.store.put(g))

    def check(self, token: str | None, *, method: str = "GET", path: str = RECORDS) -> Decision:
        return asyncio.run(self.pipeline.check(check_input(token, method=method, path=path)))

    def record(self, decision: Decision) -> AuditRecord:
        matching = [
            r
            for r in self.audit.records
            if isinstance(r, AuditRecord) and r.decision_id == decision.decision_id
        ]
        assert len(matching) == 1, self.audit.records
        return matching[0]


# user, agent, purpose, method, path, the grant held (or None), the reason when enforced
WOULD_DENY = [
    pytest.param("dr-alice", "scribe", PURPOSE, "GET", RECORDS, None, "no_grant", id="no_grant"),
    pytest.param(
        "bob",
        "billing-bot",
        "billing",
        "GET",
        RECORDS,
        {"agent": "billing-bot", "user": "bob", "purpose": "billing"},
        "billing_not_clinical",
        id="billing_not_clinical",
    ),
    pytest.param(
        "dr-alice",
        "scribe",
        PURPOSE,
        "GET",
        RECORDS,
        {"ttl": -60},
        "grant_expired",
        id="grant_expired",
    ),
    pytest.param(
        "dr-alice",
        "scribe",
        PURPOSE,
        "GET",
        RECORDS,
        {"purpose": "research"},
        "purpose_mismatch",
        id="purpose_mismatch",
    ),
    pytest.param(
        "dr-alice",
        "orchestrator",
        PURPOSE,
        "GET",
        RECORDS,
        {"agent": "orchestrator"},
        "policy_denied",
        id="policy_denied",
    ),
    pytest.param(
        "dr-alice",
        "dictation-vendor",
        PURPOSE,
        "POST",
        "/patients/p-1001/notes",
        {"agent": "dictation-vendor", "actions": ("write",)},
        "risk_too_high",
        id="risk_too_high",
    ),
]


@pytest.mark.parametrize(
    ("user", "agent", "purpose", "method", "path", "grant_spec", "reason"), WOULD_DENY
)
def test_grant_and_policy_denials_are_allowed_and_recorded(
    issuer: DemoIssuer,
    bundle: PolicyBundle,
    user: str,
    agent: str,
    purpose: str,
    method: str,
    path: str,
    grant_spec: dict[str, object] | None,
    reason: str,
) -> None:
    for dry_run in (False, True):
        env = Env(issuer, bundle, dry_run=dry_run)
        if grant_spec is not None:
            env.put(grant(now=env.clock.now, **grant_spec))  # type: ignore[arg-type]
        token = issuer.access_token(user, [agent], purpose=purpose)
        decision = env.check(token, method=method, path=path)
        record = env.record(decision)
        if not dry_run:
            # the control: enforced, this request is denied with `reason`
            assert (decision.allowed, decision.status, decision.reason) == (False, 403, reason)
            assert record.dry_run == ""
            continue
        assert (decision.allowed, decision.status, decision.reason) == (True, 200, "dry_run")
        assert reason in decision.detail
        assert record.decision == "allow"
        assert record.status == 200
        assert record.reason == "dry_run"
        assert record.dry_run == reason
        assert record.agent == agent and record.user == user
        assert (
            env.registry.get_sample_value(
                "lasthop_decisions_total",
                {"kind": "http", "decision": "allow", "reason": "dry_run"},
            )
            == 1.0
        )


def test_dry_run_keeps_the_denying_policy_in_the_record(
    issuer: DemoIssuer, bundle: PolicyBundle
) -> None:
    env = Env(issuer, bundle, dry_run=True)
    env.put(grant(agent="billing-bot", user="bob", purpose="billing", now=env.clock.now))
    decision = env.check(issuer.access_token("bob", ["billing-bot"], purpose="billing"))
    assert decision.allowed and decision.reason == "dry_run"
    assert decision.policies == ("billing-never-clinical",)
    assert env.record(decision).policies == ["billing-never-clinical"]


def test_dry_run_allow_that_would_be_allowed_anyway_is_plain(
    issuer: DemoIssuer, bundle: PolicyBundle
) -> None:
    env = Env(issuer, bundle, dry_run=True)
    env.put(grant(now=env.clock.now))
    decision = env.check(issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE))
    assert (decision.allowed, decision.reason) == (True, "allowed")
    assert env.record(decision).dry_run == ""


def test_missing_token_is_still_401(issuer: DemoIssuer, bundle: PolicyBundle) -> None:
    env = Env(issuer, bundle, dry_run=True)
    decision = env.check(None)
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, "missing_token")
    record = env.record(decision)
    assert record.decision == "deny" and record.dry_run == ""


def test_bad_signature_is_still_401(issuer: DemoIssuer, bundle: PolicyBundle) -> None:
    env = Env(issuer, bundle, dry_run=True)
    forger = DemoIssuer("ES256", kid=issuer.kid)
    decision = env.check(forger.access_token("dr-alice", ["scribe"], purpose=PURPOSE))
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, "bad_signature")


def test_unregistered_agent_is_still_403(issuer: DemoIssuer, bundle: PolicyBundle) -> None:
    env = Env(issuer, bundle, dry_run=True)
    decision = env.check(issuer.access_token("dr-alice", ["ghost-agent"], purpose=PURPOSE))
    assert (decision.allowed, decision.status, decision.reason) == (
        False,
        403,
        "agent_unregistered",
    )
    assert env.record(decision).dry_run == ""


def test_suspended_agent_is_still_403(issuer: DemoIssuer, bundle: PolicyBundle) -> None:
    env = Env(issuer, bundle, dry_run=True)
    decision = env.check(
        issuer.access_token("bob", ["chart-exporter"], purpose="billing"), path="/claims/c-77"
    )
    assert (decision.allowed, decision.status, decision.reason) == (False, 403, "agent_suspended")


def test_impersonation_is_still_403(issuer: DemoIssuer, bundle: PolicyBundle) -> None:
    env = Env(issuer, bundle, dry_run=True)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE, client_id="billing-bot")
    decision = env.check(token)
    assert (decision.allowed, decision.status, decision.reason) == (False, 403, "impersonation")


def test_invalid_path_is_still_denied(issuer: DemoIssuer, bundle: PolicyBundle) -> None:
    env = Env(issuer, bundle, dry_run=True)
    env.put(grant(resources=('Patient::"p-1001"', 'Patient::"p-1002"'), now=env.clock.now))
    decision = env.check(
        issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE),
        path="/patients/p-1001/../p-1002/records",
    )
    assert (decision.allowed, decision.status, decision.reason) == (False, 403, "invalid_path")
    assert env.record(decision).dry_run == ""


def test_no_route_is_still_denied(issuer: DemoIssuer, bundle: PolicyBundle) -> None:
    env = Env(issuer, bundle, dry_run=True)
    decision = env.check(
        issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE), method="DELETE"
    )
    assert (decision.allowed, decision.status, decision.reason) == (False, 403, "no_route")


def test_store_unavailable_is_still_503(issuer: DemoIssuer, bundle: PolicyBundle) -> None:
    env = Env(issuer, bundle, dry_run=True, store=DownStore(time.time))
    decision = env.check(issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE))
    assert (decision.allowed, decision.status, decision.reason) == (False, 503, "store_unavailable")
    record = env.record(decision)
    assert record.decision == "deny" and record.dry_run == ""


def test_policy_error_is_still_503(issuer: DemoIssuer, tmp_path: Path) -> None:
    """Cedar unable to decide is an availability failure: dry-run does not turn it into allow."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    (policies / "overflows.cedar").write_text(
        '@id("overflows")\nforbid (principal, action, resource)\n'
        "when { context.time * 9223372036854775807 > 0 };\n",
        encoding="utf-8",
    )
    env = Env(issuer, policy_load.load(policies), dry_run=True)
    env.put(grant(now=env.clock.now))
    decision = env.check(issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE))
    assert (decision.allowed, decision.status, decision.reason) == (False, 503, "policy_error")
    assert env.record(decision).dry_run == ""


def test_audit_refusal_is_still_503(issuer: DemoIssuer, bundle: PolicyBundle) -> None:
    class Refusing(MemoryAudit):
        def emit(self, record: Record) -> bool:
            super().emit(record)
            return False

    env = Env(issuer, bundle, dry_run=True)
    env.pipeline.audit = Refusing()
    decision = env.check(issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE))
    assert (decision.allowed, decision.status, decision.reason) == (False, 503, "audit_unavailable")
