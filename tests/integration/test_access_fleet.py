"""`lasthop access` against a fleet: two replicas, each behind its own Envoy, on one Redis.

A request made through one replica is decided through the other, and the grant it gives
works through both; a task ended through one ends everywhere; an agent waiting on one
replica hears a decision made on the other. Each bad input is a clear error that changes
nothing. Every step goes through the real CLI, Envoy and Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.cli.conventions import Exit
from authz.dev import stack as devstack
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import CLI_TIMEOUT, Response, assert_deny, run_cli, unique
from tests.integration.fleet import Fleet, Replica, running_fleet

pytestmark = pytest.mark.integration

MEDICATIONS = "/patients/p-1001/medications"
NOTES = "/patients/p-1001/notes"
RECONCILE = "medication-reconciliation"
DOCUMENT = "clinical-documentation"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet(upstream: DemoUpstream) -> Iterator[Fleet]:
    with devstack.workdir("lasthop-it-access-redis-") as work:
        redis = devstack.RedisServer(work)
        try:
            # Correctness across replicas, not latency: a busy machine's slow Redis read is
            # a 503 the polls below ride out, not a failure of what they test.
            env = {"LASTHOP_STORE_TIMEOUT_MS": "1000"}
            with running_fleet(
                "lasthop-it-access-", redis.url, upstream=upstream, env=env
            ) as running:
                yield running
        finally:
            redis.close()


def access(
    replica: Replica, *args: str, token: str = "", admin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {"LASTHOP_ADMIN_URL": replica.admin_address}
    if token:
        env["LASTHOP_TOKEN"] = token
    if admin:
        env["LASTHOP_ADMIN_TOKEN"] = admin
    return run_cli("access", *args, env=env)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.stdout, (result.returncode, result.stderr[-2000:])
    return json.loads(result.stdout)


def until(replica: Replica, path: str, token: str, status: int, method: str = "GET") -> Response:
    """Poll `path` through `replica` until it answers `status` (caches see a write within ~1 s)."""
    deadline = time.monotonic() + 5.0
    data = b"note" if method == "POST" else None
    while True:
        resp = replica.get(path, token, method=method, data=data)
        if resp.status == status or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


def answer(replica: Replica, path: str, token: str) -> Response:
    """The first answer that is not a 503 (Envoy's ext_authz timeout on a busy machine)."""
    deadline = time.monotonic() + 5.0
    while True:
        resp = replica.get(path, token)
        if resp.status != 503 or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


def reconcile_args(ttl: str = "15m", *extra: str) -> list[str]:
    resource = 'Medications::"p-1001"'
    return ["request", "--action", "read", "--resource", resource, "--purpose", RECONCILE,
            "--ttl", ttl, "--max-uses", "50", "--output", "json", *extra]  # fmt: skip


def note_args(*extra: str) -> list[str]:
    resource = 'Notes::"p-1001"'
    return ["request", "--action", "write", "--resource", resource, "--purpose", DOCUMENT,
            "--ttl", "10m", "--reason", "visit note", "--output", "json", *extra]  # fmt: skip


def test_approved_at_once_on_one_replica_works_on_both_until_the_task_ends(fleet: Fleet) -> None:
    a, b = fleet.replicas
    user, txn = unique("u-jit"), f"adm-{uuid.uuid4().hex[:8]}"
    token = fleet.token(user, ["med-reconciler"], purpose=RECONCILE, txn=txn)
    denied = answer(b, MEDICATIONS, token)
    assert_deny(denied, 403, "no_grant")
    assert denied.body["needs"] == {
        "action": "read",
        "resource": 'Medications::"p-1001"',
        "purpose": RECONCILE,
    }

    made = as_json(access(a, *reconcile_args("15m", "--txn", txn), token=token))
    assert (made["status"], made["decided_by"]) == (
        "approved",
        "policy:med-reconciler-reads-medications",
    )
    assert made["grant_id"].startswith("g-") and made["txn"] == txn
    for replica in (b, a):
        assert until(replica, MEDICATIONS, token, 200).status == 200
    other_task = fleet.token(user, ["med-reconciler"], purpose=RECONCILE, txn="another")
    assert_deny(answer(b, MEDICATIONS, other_task), 403, "task_mismatch")

    ended = access(b, "end-task", txn, token=token)
    assert ended.returncode == 0, ended.stderr
    assert made["grant_id"] in ended.stdout
    for replica in (a, b):
        assert_deny(until(replica, MEDICATIONS, token, 403), 403, "no_grant")
    again = access(a, *reconcile_args("15m", "--txn", txn), token=token)
    assert again.returncode == Exit.USAGE and "has ended" in again.stderr


def test_made_on_one_replica_approved_on_the_other_while_the_agent_waits(fleet: Fleet) -> None:
    a, b = fleet.replicas
    user = unique("u-note")
    token = fleet.token(user, ["scribe"], purpose=DOCUMENT)
    clinician = fleet.issuer.admin_token(user, "lasthop:approver")
    base = {"LASTHOP_ADMIN_URL": a.admin_address, "LASTHOP_TOKEN": token}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "authz", "access", *note_args("--wait", "60")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**_clean_env(), **base},
    )
    try:
        pending = _pending_for(b, clinician)
        approved = as_json(access(b, "approve", pending["id"], "--output", "json", admin=clinician))
        assert (approved["status"], approved["decided_by"]) == ("approved", user)
        out, err = waiting.communicate(timeout=CLI_TIMEOUT)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    assert json.loads(out)["grant_id"] == approved["grant_id"]
    assert until(a, NOTES, token, 201, method="POST").status == 201
    shown = as_json(access(a, "show", pending["id"], "--output", "json", token=token))
    assert (shown["status"], shown["grant_id"]) == ("approved", approved["grant_id"])


def _pending_for(replica: Replica, approver: str) -> Any:
    """The one pending request the approver's inbox shows, once the agent has made it."""
    deadline = time.monotonic() + CLI_TIMEOUT
    while True:
        listed = as_json(access(replica, "list", "--status", "pending", "--output", "json",
                                admin=approver))  # fmt: skip
        if listed:
            assert len(listed) == 1, listed
            return listed[0]
        assert time.monotonic() < deadline, "the request never reached the other replica"
        time.sleep(0.2)


def test_bad_input_to_each_verb_is_a_clear_error_that_changes_nothing(fleet: Fleet) -> None:
    a, b = fleet.replicas
    user = unique("u-bad")
    reconciler = fleet.token(user, ["med-reconciler"], purpose=RECONCILE)
    scribe = fleet.token(user, ["scribe"], purpose=DOCUMENT)
    admin = fleet.admin_token

    ghost = access(a, *reconcile_args(), token=fleet.token(user, ["ghost-agent"], RECONCILE))
    assert ghost.returncode == Exit.UNAUTHENTICATED
    assert "agent_unregistered: agent `ghost-agent` is not registered" in ghost.stderr

    over = access(a, *reconcile_args("1h"), token=reconciler)
    assert over.returncode == Exit.NO
    refused = json.loads(over.stdout)
    assert (refused["status"], refused["outcome"], refused["limit"]) == (
        "refused",
        "ttl_over_limit",
        "ttl_seconds <= 900",
    )
    assert refused["grant_id"] == ""

    malformed = access(b, *_with(reconcile_args(), "Medications:p-1001"), token=reconciler)
    assert malformed.returncode == Exit.USAGE
    assert "invalid_argument: resource `Medications:p-1001` is not a Cedar entity" in (
        malformed.stderr
    )

    missing = access(b, "approve", "r-0000000000000000", admin=admin)
    assert missing.returncode == Exit.NOT_FOUND
    assert "not_found: no access request `r-0000000000000000`" in missing.stderr

    pending = as_json(access(a, *note_args(), token=scribe))
    own = access(b, "approve", pending["id"], admin=scribe)
    assert own.returncode == Exit.UNAUTHENTICATED
    assert "permission_denied" in own.stderr and "agent's access token" in own.stderr
    unnamed = access(b, "approve", pending["id"], admin=admin)
    assert unnamed.returncode == Exit.UNAUTHENTICATED and f"user:{user}" in unnamed.stderr

    listed = as_json(access(b, "list", "--user", user, "--output", "json", admin=admin))
    assert sorted((r["status"], r["id"]) for r in listed) == sorted(
        [("refused", refused["id"]), ("pending", pending["id"])]
    )
    env = {"LASTHOP_ADMIN_URL": a.admin_address, "LASTHOP_ADMIN_TOKEN": admin}
    grants = run_cli("grants", "list", "--user", user, "--output", "json", env=env)
    assert json.loads(grants.stdout) == []


def _with(args: list[str], resource: str) -> list[str]:
    return [resource if a.startswith("Medications::") else a for a in args]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LASTHOP_")}
