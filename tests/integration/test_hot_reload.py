"""Hot reload under traffic, through real Envoy to a real `lasthop serve`.

A steady stream of sequential requests runs while a forbid policy is added,
then a broken policy file, then both are removed. Every response must be 200
or 403 maintenance_window (never a 5xx or a connection error), the switch-over
must be clean (no 200 after the first maintenance_window), the broken file must
change nothing and be reported with its file and line, and removing the files
must bring the original set back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz._proto import grants_pb2 as pb
from authz.cli.admin_client import AdminClient
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import PURPOSE, RECORDS, assert_deny, request, unique

pytestmark = pytest.mark.integration

RELOAD_INTERVAL = "0.2"
MAINTENANCE = (
    "// Closed for maintenance.\n"
    '@id("maintenance")\n'
    '@reason("maintenance_window")\n'
    "forbid (principal, action, resource);\n"
)
BROKEN = (
    "// A policy with a typo in its effect.\n"
    '@id("broken")\n'
    "forbidd (principal, action, resource);\n"
)
BROKEN_LINE = 3
SWITCH_AFTER = 50  # requests before the forbid is written
MAX_REQUESTS = 600
PHASE_SECONDS = 15.0
AFTER_SWITCH = 40  # requests sent after the first maintenance_window
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class ReloadStack:
    policies: Path
    work: Path
    issuer: DemoIssuer
    lasthop: devstack.LasthopServer
    envoy: devstack.Envoy
    admin: AdminClient

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://{self.lasthop.ready['metrics_listen']}/metrics"
        with _OPENER.open(url, timeout=5.0) as resp:
            text = resp.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))


@contextlib.contextmanager
def reload_stack() -> Iterator[ReloadStack]:
    with devstack.workdir("lasthop-it-reload-") as work, contextlib.ExitStack() as stack:
        policies = work / "policies"
        shutil.copytree(devstack.POLICIES, policies)
        issuer = DemoIssuer("ES256", kid=f"it-{uuid.uuid4().hex[:6]}")
        jwks = issuer.write_jwks(work / "keys" / "jwks.json")
        upstream = DemoUpstream()
        stack.callback(upstream.close)
        config = devstack.write_config(work, jwks, policies=policies)
        lasthop = devstack.LasthopServer(
            config, env={"LASTHOP_POLICIES_RELOAD_INTERVAL_SECONDS": RELOAD_INTERVAL}
        )
        stack.callback(_close, lasthop)
        envoy = devstack.Envoy(work, lasthop.port, upstream.port)
        stack.callback(envoy.close)
        admin = AdminClient(lasthop.ready["admin_listen"], issuer.admin_token(ttl=1800))
        stack.callback(admin.close)
        yield ReloadStack(policies, work, issuer, lasthop, envoy, admin)


def _close(lasthop: devstack.LasthopServer) -> None:
    lasthop.close()
    if lasthop.proc.stdout is not None:
        lasthop.proc.stdout.close()


def _place(stack: ReloadStack, name: str, text: str) -> None:
    """Write the file whole (a rename), so the watcher never sees half of it."""
    staging = stack.work / f".{name}.staging"
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, stack.policies / name)


def _outcome(stack: ReloadStack, token: str) -> str:
    """`200`, `403 <reason>`, `<status> <reason>` or `error <what>` for one request."""
    try:
        resp = request(stack.envoy.url, RECORDS, token)
    except OSError as err:
        return f"error {err!r}"
    if resp.status == 200:
        assert resp.body.get("patient") == "p-1001", resp.raw[:300]
        return "200"
    if resp.status == 403 and resp.reason == "maintenance_window":
        assert_deny(resp, 403, "maintenance_window")
    return f"{resp.status} {resp.reason or resp.raw[:200]!r}"


def test_hot_reload_under_traffic() -> None:
    started = time.monotonic()
    with reload_stack() as stack:
        initial = stack.lasthop.ready["policy_version"]
        user = unique("u-reload")
        stack.admin.issue(
            pb.IssueGrantRequest(
                agent="scribe",
                user=user,
                actions=["read"],
                resources=['Patient::"p-1001"'],
                purpose=PURPOSE,
                ttl_seconds=600,
            )
        )
        token = stack.issuer.access_token(user, ["scribe"], purpose=PURPOSE, ttl=600)
        assert _outcome(stack, token) == "200"
        assert stack.sample("lasthop_policy_version_info", version=initial) == 1.0

        # --- 1: a forbid added under traffic goes into force cleanly ---------------------
        outcomes: list[str] = []
        written_at: int | None = None
        first_forbid: int | None = None
        deadline = time.monotonic() + PHASE_SECONDS
        while len(outcomes) < MAX_REQUESTS and time.monotonic() < deadline:
            if len(outcomes) == SWITCH_AFTER:
                _place(stack, "maintenance.cedar", MAINTENANCE)
                written_at = len(outcomes)
            outcome = _outcome(stack, token)
            outcomes.append(outcome)
            if first_forbid is None and outcome == "403 'maintenance_window'":
                first_forbid = len(outcomes) - 1
            if first_forbid is not None and len(outcomes) - first_forbid > AFTER_SWITCH:
                break
        unexpected = [
            (i, o) for i, o in enumerate(outcomes) if o not in ("200", "403 'maintenance_window'")
        ]
        assert unexpected == [], unexpected[:10]
        assert written_at == SWITCH_AFTER, len(outcomes)
        assert all(o == "200" for o in outcomes[:SWITCH_AFTER]), outcomes[:SWITCH_AFTER]
        assert first_forbid is not None, (
            f"the forbid never took effect in {len(outcomes)} requests / {PHASE_SECONDS} s"
        )
        late_allows = [i for i, o in enumerate(outcomes) if i > first_forbid and o == "200"]
        assert late_allows == [], f"200 after the switch at {first_forbid}: {late_allows[:10]}"
        assert len(outcomes) - first_forbid > AFTER_SWITCH // 2

        samples = stack.metrics()
        versions = {
            dict(labels)["version"]: value
            for (name, labels), value in samples.items()
            if name == "lasthop_policy_version_info"
        }
        in_force = [v for v, value in versions.items() if value == 1.0]
        assert len(in_force) == 1 and in_force[0] != initial, versions
        assert versions[initial] == 0.0
        maintenance_version = in_force[0]
        assert samples[("lasthop_policy_reload_total", (("result", "success"),))] == 1.0

        # --- 2: a broken file changes nothing, and is reported with its file and line ----
        _place(stack, "broken.cedar", BROKEN)
        failures: float | None = None
        after_broken: list[str] = []
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            after_broken.append(_outcome(stack, token))
            failures = stack.sample("lasthop_policy_reload_total", result="failure")
            if failures is not None and failures >= 1:
                break
        assert failures is not None and failures >= 1, "the broken file was never reported"
        for _ in range(20):
            after_broken.append(_outcome(stack, token))
        assert set(after_broken) == {"403 'maintenance_window'"}, after_broken
        assert stack.sample("lasthop_policy_version_info", version=maintenance_version) == 1.0
        assert stack.sample("lasthop_policy_reload_total", result="success") == 1.0
        logs = stack.lasthop.logs()
        assert f"broken.cedar:{BROKEN_LINE}" in logs, logs[-3000:]
        assert maintenance_version in logs

        # --- 3: removing both files brings the original set back -------------------------
        (stack.policies / "broken.cedar").unlink()
        (stack.policies / "maintenance.cedar").unlink()
        after_removal: list[str] = []
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            after_removal.append(_outcome(stack, token))
            if after_removal[-1] == "200":
                break
        assert after_removal[-1] == "200", after_removal[-10:]
        for _ in range(10):
            after_removal.append(_outcome(stack, token))
        assert set(after_removal) <= {"200", "403 'maintenance_window'"}, after_removal
        first_allow = after_removal.index("200")
        assert set(after_removal[first_allow:]) == {"200"}, after_removal
        assert stack.sample("lasthop_policy_version_info", version=initial) == 1.0
        assert stack.sample("lasthop_policy_version_info", version=maintenance_version) == 0.0
        assert stack.lasthop.proc.poll() is None
    assert time.monotonic() - started < 60.0
