"""Hot reload: PolicyWatcher.poll() on a copy of the shipped policies, and App.install.

A valid change goes into force whole; an invalid one changes nothing, is
counted, and is logged with its file and line; the last good set stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from authz import config
from authz.audit.records import MemoryAudit
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.errors import StoreUnavailable
from authz.model import Agent, Decision
from authz.policy import load as policy_load
from authz.policy.load import PolicyBundle
from authz.policy.reload import PolicyWatcher
from authz.server import app as app_module
from authz.server.metrics import Metrics
from authz.stores.embedded import EmbeddedAgentStore
from tests.conftest import POLICIES, PURPOSE, check_input, grant

MAINTENANCE = """\
// Everything is closed for maintenance.
@id("maintenance")
@reason("maintenance_window")
forbid (principal, action, resource);
"""

# `action ===` on line 5: a syntax error Cedar reports at 5:12.
BROKEN_FILE = "scribe-read-records.cedar"
BROKEN_LINE = 5


class Harness:
    """A watcher over a copy of the shipped policies, with an install that records its calls."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "policies"
        shutil.copytree(POLICIES, self.dir)
        self.bundle = policy_load.load(self.dir)
        self.first = self.bundle
        self.installed: list[PolicyBundle] = []
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.metrics.policy_version.labels(self.bundle.version).set(1)  # as app.build does
        self.watcher = PolicyWatcher(
            self.dir, 0.05, lambda: self.bundle, self.install, self.metrics
        )

    def install(self, bundle: PolicyBundle) -> None:
        self.installed.append(bundle)
        self.bundle = bundle

    def poll(self) -> bool:
        return asyncio.run(self.watcher.poll())

    def reloads(self, result: str) -> float:
        value = self.registry.get_sample_value("lasthop_policy_reload_total", {"result": result})
        return 0.0 if value is None else value

    def version_info(self, version: str) -> float | None:
        return self.registry.get_sample_value("lasthop_policy_version_info", {"version": version})

    def ids(self) -> set[str]:
        return {info.id for info in self.bundle.policies.values()}


def _break(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    assert "action ==" in lines[BROKEN_LINE - 1], lines
    lines[BROKEN_LINE - 1] = lines[BROKEN_LINE - 1].replace("action ==", "action ===")
    path.write_text("\n".join(lines), encoding="utf-8")


def test_no_change_is_no_reload(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.poll() is False
    assert h.poll() is False
    assert h.installed == []
    assert h.reloads("success") == 0.0 and h.reloads("failure") == 0.0
    assert h.version_info(h.first.version) == 1.0


def test_valid_change_goes_into_force(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    (h.dir / "maintenance.cedar").write_text(MAINTENANCE, encoding="utf-8")
    assert h.poll() is True
    assert len(h.installed) == 1
    new = h.installed[0]
    assert new.version != h.first.version
    assert "maintenance" in {info.id for info in new.policies.values()}
    assert len(new.policy_set) == len(h.first.policy_set) + 1
    assert h.reloads("success") == 1.0
    assert h.reloads("failure") == 0.0
    assert h.version_info(new.version) == 1.0
    assert h.version_info(h.first.version) == 0.0
    # nothing changed since: no second reload
    assert h.poll() is False
    assert len(h.installed) == 1 and h.reloads("success") == 1.0


def test_reload_logs_the_versions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(tmp_path)
    (h.dir / "maintenance.cedar").write_text(MAINTENANCE, encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="authz.policy.reload"):
        assert h.poll() is True
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert h.first.version in messages and h.bundle.version in messages


def test_invalid_change_keeps_the_last_good_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(tmp_path)
    _break(h.dir / BROKEN_FILE)
    with caplog.at_level(logging.ERROR, logger="authz.policy.reload"):
        assert h.poll() is False
    assert h.installed == []
    assert h.bundle is h.first
    assert h.reloads("failure") == 1.0
    assert h.reloads("success") == 0.0
    assert h.version_info(h.first.version) == 1.0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, caplog.records
    message = errors[0].getMessage()
    assert f"{BROKEN_FILE}:{BROKEN_LINE}" in message
    assert h.first.version in message  # says which version stays in force
    # polling again without another change does not retry (or re-log) the broken set
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="authz.policy.reload"):
        assert h.poll() is False
    assert h.reloads("failure") == 1.0
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]


def test_fixing_a_broken_change_reloads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(tmp_path)
    path = h.dir / "maintenance.cedar"
    path.write_text(MAINTENANCE.replace("forbid (", "forbidd ("), encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="authz.policy.reload"):
        assert h.poll() is False
    assert "maintenance.cedar:4" in " ".join(r.getMessage() for r in caplog.records)
    assert h.bundle is h.first and h.reloads("failure") == 1.0
    path.write_text(MAINTENANCE, encoding="utf-8")
    assert h.poll() is True
    assert "maintenance" in h.ids()
    assert h.reloads("success") == 1.0 and h.reloads("failure") == 1.0
    assert h.version_info(h.bundle.version) == 1.0
    assert h.version_info(h.first.version) == 0.0


def test_a_schema_violation_is_refused_with_its_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(tmp_path)
    (h.dir / "zz-typo.cedar").write_text(
        '@id("typo")\nforbid (principal, action, resource)\nwhen { context.nope };\n',
        encoding="utf-8",
    )
    with caplog.at_level(logging.ERROR, logger="authz.policy.reload"):
        assert h.poll() is False
    assert "zz-typo.cedar:3" in " ".join(r.getMessage() for r in caplog.records)
    assert h.bundle is h.first and h.reloads("failure") == 1.0


def test_reverting_a_broken_edit_leaves_the_set_in_force(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    path = h.dir / BROKEN_FILE
    original = path.read_text(encoding="utf-8")
    _break(path)
    assert h.poll() is False
    path.write_text(original, encoding="utf-8")
    assert h.poll() is False  # the directory is the set in force again: nothing to install
    assert h.installed == [] and h.bundle is h.first
    assert h.reloads("success") == 0.0
    # and the watcher still works afterwards
    (h.dir / "maintenance.cedar").write_text(MAINTENANCE, encoding="utf-8")
    assert h.poll() is True and "maintenance" in h.ids()


def test_touching_a_file_without_changing_it_installs_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    path = h.dir / BROKEN_FILE
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert h.poll() is False
    assert h.installed == []
    assert h.reloads("success") == 0.0 and h.reloads("failure") == 0.0


def test_removing_a_policy_file_reloads(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    (h.dir / "scribe-write-notes.cedar").unlink()
    assert h.poll() is True
    assert "scribe-write-notes" not in h.ids()
    assert "scribe-read-records" in h.ids()


def test_removing_every_policy_file_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(tmp_path)
    for path in h.dir.glob("*.cedar"):
        path.unlink()
    with caplog.at_level(logging.ERROR, logger="authz.policy.reload"):
        assert h.poll() is False
    assert h.bundle is h.first and h.reloads("failure") == 1.0
    assert "*.cedar" in " ".join(r.getMessage() for r in caplog.records)


def test_entities_change_reloads_the_agent_seed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    path = h.dir / "entities.json"
    entities = json.loads(path.read_text(encoding="utf-8"))
    for entity in entities:
        if entity["uid"] == {"type": "Agent", "id": "scribe"}:
            entity["attrs"]["status"] = "suspended"
    path.write_text(json.dumps(entities, indent=1), encoding="utf-8")
    assert h.poll() is True
    assert h.first.agents["scribe"].status == "active"
    assert h.bundle.agents["scribe"].status == "suspended"


def test_routes_change_reloads(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    path = h.dir / "routes.toml"
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            'path = "/claims/{claim}"', 'path = "/v2/claims/{claim}"'
        ),
        encoding="utf-8",
    )
    assert h.poll() is True
    assert h.bundle.routes.resolve("GET", "/v2/claims/c-1").action == "read"


def test_fixture_changes_do_not_reload(tmp_path: Path) -> None:
    """Fixtures under tests/ are not part of the loaded set."""
    h = Harness(tmp_path)
    (h.dir / "tests" / "scenarios.toml").write_text("# emptied\n", encoding="utf-8")
    assert h.poll() is False
    assert h.installed == [] and h.reloads("failure") == 0.0


def test_missing_directory_keeps_the_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(tmp_path)
    shutil.rmtree(h.dir)
    with caplog.at_level(logging.ERROR, logger="authz.policy.reload"):
        assert h.poll() is False
    assert h.bundle is h.first
    assert any(str(h.dir) in r.getMessage() for r in caplog.records), caplog.records


def test_a_change_made_while_the_server_starts_is_picked_up(tmp_path: Path) -> None:
    """The server loads the set in app.build() and creates the watcher later, in serve().

    A file written in between (a config-management push during start-up) must
    still be loaded: the directory no longer holds the set in force.
    """
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    in_force = policy_load.load(directory)  # app.build()
    (directory / "maintenance.cedar").write_text(MAINTENANCE, encoding="utf-8")
    installed: list[PolicyBundle] = []
    watcher = PolicyWatcher(
        directory, 0.05, lambda: installed[-1] if installed else in_force, installed.append, None
    )  # serve()
    assert asyncio.run(watcher.poll()) is True, "the set in force is stale and stays stale"
    assert "maintenance" in {info.id for info in installed[-1].policies.values()}


def test_run_polls_on_its_interval(tmp_path: Path) -> None:
    h = Harness(tmp_path)

    async def go() -> None:
        task = asyncio.create_task(h.watcher.run())
        try:
            await asyncio.sleep(0.01)
            (h.dir / "maintenance.cedar").write_text(MAINTENANCE, encoding="utf-8")
            for _ in range(100):  # up to 2 s; the interval is 0.05 s
                if h.installed:
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    assert len(h.installed) == 1 and "maintenance" in h.ids()


# --- App.install, as the server wires it ----------------------------------------------------
#
# The server seeds the agent registry from entities.json at start-up
# (App.seed_registry) and on every reload (App.install): agents the store lacks
# are added; then the whole policy bundle is swapped in.


def _app(tmp_path: Path) -> tuple[app_module.App, Path, DemoIssuer]:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    issuer = DemoIssuer("ES256", kid="reload-test")
    jwks = issuer.write_jwks(tmp_path / "keys" / "jwks.json")
    path = devstack.write_config(tmp_path, jwks, policies=policies)
    app = app_module.build(config.load(path, environ={}), CollectorRegistry())
    app.pipeline.audit = MemoryAudit()  # the file trail is only opened by serve()
    asyncio.run(app.seed_registry(app.pipeline.bundle))  # as serve() does at start-up
    return app, policies, issuer


def _check(
    app: app_module.App, issuer: DemoIssuer, user: str, agent: str, purpose: str, path: str
) -> Decision:
    async def go() -> Decision:
        await app.store.put(grant(agent=agent, user=user, purpose=purpose))
        token = issuer.access_token(user, [agent], purpose=purpose)
        return await app.pipeline.check(check_input(token, path=path))

    return asyncio.run(go())


NEW_AGENT = "discharge-planner"
RECORDS_PATH, MEDS_PATH = "/patients/p-1001/records", "/patients/p-1001/medications"
MED_PURPOSE = "medication-reconciliation"


def _add_agent_and_close_records(policies: Path) -> None:
    """A new seed agent (a copy of med-reconciler) with its own permit; records closed."""
    path = policies / "entities.json"
    entities = json.loads(path.read_text(encoding="utf-8"))
    template = next(e for e in entities if e["uid"] == {"type": "Agent", "id": "med-reconciler"})
    entities.append({**template, "uid": {"type": "Agent", "id": NEW_AGENT}})
    path.write_text(json.dumps(entities, indent=1), encoding="utf-8")
    (policies / "discharge-planner-read-medications.cedar").write_text(
        '@id("discharge-planner-read-medications")\n'
        f'permit (principal == Agent::"{NEW_AGENT}", action == Action::"read", '
        "resource is Medications)\nwhen { context has grant };\n",
        encoding="utf-8",
    )
    (policies / "records-paused.cedar").write_text(
        '@id("records-paused")\n@reason("maintenance_window")\n'
        "forbid (principal, action, resource is Records);\n",
        encoding="utf-8",
    )


def test_app_install_swaps_bundle_and_seeds_the_registry(tmp_path: Path) -> None:
    app, policies, issuer = _app(tmp_path)
    old = app.pipeline.bundle
    assert _check(app, issuer, "dr-alice", "scribe", PURPOSE, RECORDS_PATH).reason == "allowed"
    unknown = _check(app, issuer, "dr-alice", NEW_AGENT, MED_PURPOSE, MEDS_PATH)
    assert (unknown.status, unknown.reason) == (403, "agent_unregistered")

    _add_agent_and_close_records(policies)
    new = policy_load.load(policies)
    assert new.version != old.version
    asyncio.run(app.install(new))

    assert app.pipeline.bundle is new
    seeded = asyncio.run(app.registry.get(NEW_AGENT))
    assert seeded is not None and seeded.status == "active"
    allowed = _check(app, issuer, "dr-alice", NEW_AGENT, MED_PURPOSE, MEDS_PATH)
    assert (allowed.status, allowed.reason) == (200, "allowed")
    assert allowed.policies == ("discharge-planner-read-medications",)
    closed = _check(app, issuer, "dr-alice", "scribe", PURPOSE, RECORDS_PATH)
    assert (closed.status, closed.reason) == (403, "maintenance_window")
    assert closed.policies == ("records-paused",)


def test_app_install_through_the_watcher(tmp_path: Path) -> None:
    app, policies, issuer = _app(tmp_path)
    old = app.pipeline.bundle
    watcher = PolicyWatcher(policies, 1.0, lambda: app.pipeline.bundle, app.install, app.metrics)
    _add_agent_and_close_records(policies)
    assert asyncio.run(watcher.poll()) is True
    assert app.pipeline.bundle.version != old.version
    assert _check(app, issuer, "dr-alice", NEW_AGENT, MED_PURPOSE, MEDS_PATH).reason == "allowed"
    assert (
        _check(app, issuer, "dr-alice", "scribe", PURPOSE, RECORDS_PATH).reason
        == "maintenance_window"
    )
    samples = app.metrics.registry
    assert (
        samples.get_sample_value(
            "lasthop_policy_version_info", {"version": app.pipeline.bundle.version}
        )
        == 1.0
    )
    assert samples.get_sample_value("lasthop_policy_version_info", {"version": old.version}) == 0.0
    assert samples.get_sample_value("lasthop_policy_reload_total", {"result": "success"}) == 1.0


def test_app_install_of_a_refused_set_changes_nothing(tmp_path: Path) -> None:
    app, policies, issuer = _app(tmp_path)
    old = app.pipeline.bundle
    watcher = PolicyWatcher(policies, 1.0, lambda: app.pipeline.bundle, app.install, app.metrics)
    _add_agent_and_close_records(policies)
    _break(policies / BROKEN_FILE)
    assert asyncio.run(watcher.poll()) is False
    assert app.pipeline.bundle is old
    # the refused set's new agent was not seeded, nor its forbid enforced
    assert asyncio.run(app.registry.get(NEW_AGENT)) is None
    assert _check(app, issuer, "dr-alice", "scribe", PURPOSE, RECORDS_PATH).reason == "allowed"


def test_app_install_leaves_existing_agents_untouched(tmp_path: Path) -> None:
    """The registry is the truth for agents already in it; a reload only adds missing ones."""
    app, policies, issuer = _app(tmp_path)
    path = policies / "entities.json"
    entities = json.loads(path.read_text(encoding="utf-8"))
    for entity in entities:
        if entity["uid"] == {"type": "Agent", "id": "scribe"}:
            entity["attrs"]["status"] = "suspended"
    path.write_text(json.dumps(entities, indent=1), encoding="utf-8")
    new = policy_load.load(policies)
    assert new.agents["scribe"].status == "suspended"
    asyncio.run(app.install(new))
    assert app.pipeline.bundle is new
    scribe = asyncio.run(app.registry.get("scribe"))
    assert scribe is not None and scribe.status == "active"
    assert _check(app, issuer, "dr-alice", "scribe", PURPOSE, RECORDS_PATH).reason == "allowed"


def test_app_install_with_the_store_down_still_installs_the_policies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, policies, _ = _app(tmp_path)

    class DownAgents(EmbeddedAgentStore):
        async def add_agent(self, agent: Agent) -> bool:
            raise StoreUnavailable("agent store timed out (test)")

    app.stores.agents = DownAgents()
    _add_agent_and_close_records(policies)
    new = policy_load.load(policies)
    with caplog.at_level(logging.ERROR, logger="authz.server.app"):
        asyncio.run(app.install(new))
    assert app.pipeline.bundle is new
    assert any("timed out (test)" in r.getMessage() for r in caplog.records), caplog.records
