"""`lasthop serve --workers 2` behind a real Envoy, on a real Redis: one port, two processes,
two trails; every answered check recorded in exactly one of them; SIGTERM drains both."""

from __future__ import annotations

import json
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest

from authz.audit.files import worker_trails
from authz.dev import stack as devstack
from tests.integration.conftest import (
    RECORDS,
    Response,
    Stack,
    read_audit,
    run_cli,
    running_stack,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

WORKERS = ["--workers", "2"]
ANY_METRICS_PORT = {"LASTHOP_SERVER_METRICS_LISTEN": "127.0.0.1:0"}  # each worker its own
REQUESTS = 120


def workers_of(stack: Stack) -> list[dict[str, Any]]:
    """The supervisor's ready line, by worker (`lasthop serve` alone has no such list)."""
    return cast(list[dict[str, Any]], stack.lasthop.ready["workers"])


def serve_workers() -> list[str]:
    return [sys.executable, "-m", "authz", "serve", *WORKERS]


def decision_ids(trail: Path) -> list[str]:
    return [
        r["decision_id"]
        for live in worker_trails(trail)
        for r in read_audit(live)
        if r["type"] == "decision"
    ]


def many(stack: Stack, token: str) -> list[Response]:
    with ThreadPoolExecutor(max_workers=16) as pool:  # Envoy opens several connections
        return list(pool.map(lambda _: stack.get(RECORDS, token), range(REQUESTS)))


def test_two_workers_answer_on_one_port_and_record_every_check_once() -> None:
    with running_stack("lasthop-workers-", command=serve_workers(), env=ANY_METRICS_PORT) as stack:
        assert [w["audit_path"] for w in workers_of(stack)] == [
            str(p) for p in (stack.audit_path, stack.audit_path.with_name("decisions.w1.jsonl"))
        ]
        assert len({w["metrics_listen"] for w in workers_of(stack)}) == 2
        user = unique("u-workers")
        stack.grant(user)
        responses = many(stack, stack.token(user, ["orchestrator", "scribe"]))
        assert [r.status for r in responses] == [200] * REQUESTS
        answered = [r.upstream_saw["x-lasthop-decision-id"] for r in responses]
        assert stack.lasthop.close() == 0  # SIGTERM: both drain, flush and exit 0
        recorded = decision_ids(stack.audit_path)
        assert sorted(set(answered)) == sorted(set(recorded) & set(answered))  # none lost
        assert len(recorded) == len(set(recorded))  # none recorded twice
        jwks = stack.audit_path.parent / "lasthop-receipts.json"
        verified = run_cli("audit", "verify", str(stack.audit_path), "--jwks", str(jwks))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.count(": ok: ") == 2  # each worker's trail, on its own
        shown = run_cli(
            "audit",
            "disclosures",
            "--user",
            user,
            "--trail",
            str(stack.audit_path),
            "--output",
            "json",
        )
        assert shown.returncode == 0, shown.stderr
        rows = json.loads(shown.stdout)
        assert sorted(r["decision_id"] for r in rows) == sorted(answered)
        assert [r["date"] for r in rows] == sorted(r["date"] for r in rows)


def test_a_worker_that_dies_stops_the_others() -> None:
    with running_stack(
        "lasthop-workers-die-", command=serve_workers(), env=ANY_METRICS_PORT
    ) as stack:
        first, second = (int(w["pid"]) for w in workers_of(stack))
        os.kill(second, signal.SIGKILL)
        assert wait_until(lambda: stack.lasthop.proc.poll() is not None, 30)
        assert stack.lasthop.proc.returncode == 1
        assert wait_until(lambda: not Path(f"/proc/{first}").exists(), 30)  # stopped, not left
        assert "worker 1 exited" in stack.lasthop.logs()


def test_without_workers_a_port_in_use_stops_start_up(tmp_path: Path) -> None:
    """Only workers share a port: a second server on the first one's port is refused."""
    with running_stack("lasthop-port-", use_redis=False) as stack:
        listen = stack.lasthop.ready["listen"]
        config = devstack.write_config(tmp_path, stack.work / "keys" / "jwks.json")
        second = run_cli("serve", "--config", str(config), env={"LASTHOP_SERVER_LISTEN": listen})
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"cannot listen on `{listen}` (server.listen)" in second.stderr
