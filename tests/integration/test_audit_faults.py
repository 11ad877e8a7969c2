"""The trail cannot be written: every check is a 503 `audit_unavailable`, never a 200.

Three real failures of a real server behind Envoy, no fault hooks in Lasthop:
the file size limit (RLIMIT_FSIZE: write(2) fails with EFBIG), a full tmpfs
(ENOSPC; skipped where this user may not mount), and the audit directory
replaced by a file (rotation fails with ENOTDIR).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.dev.upstream import DemoUpstream
from authz.errors import AdminError
from authz.server.front import AUTHZ_SERVICE
from tests.integration.conftest import (
    RECORDS,
    Response,
    Stack,
    assert_deny,
    run_cli,
    running_stack,
    unique,
)

pytestmark = pytest.mark.integration

MAX_REQUESTS = 400  # every case fails well before this: each record is ~900 bytes
AFTER_FAILURE = 5
FILE_SIZE_LIMIT = 48 * 1024


def drive_until_refused(stack: Stack) -> tuple[list[Response], list[Response]]:
    """Allowed requests until the first non-200; then a few more. (before, after)"""
    user = unique("u-fault")
    stack.grant(user)
    token = stack.token(user, ["scribe"])
    before: list[Response] = []
    for _ in range(MAX_REQUESTS):
        resp = stack.get(RECORDS, token)
        before.append(resp)
        if resp.status != 200:
            break
    after = [stack.get(RECORDS, token) for _ in range(AFTER_FAILURE)]
    return before, after


def assert_refused_from_then_on(
    stack: Stack, before: list[Response], after: list[Response]
) -> None:
    assert len(before) > 1 and all(r.status == 200 for r in before[:-1])
    for resp in [before[-1], *after]:
        assert_deny(resp, 503, "audit_unavailable")
    assert "denying every check with audit_unavailable" in stack.lasthop.logs()
    # A grant needs its record too: it is withdrawn, not issued unrecorded.
    user = unique("u-fault-grant")
    with pytest.raises(AdminError, match="unavailable: the audit trail cannot record"):
        stack.grant(user)
    assert stack.admin.list(user=user) == []


def assert_trail_verifies(stack: Stack) -> None:
    """What was written before the failure is an intact trail (a last line may be cut)."""
    result = run_cli(
        "audit",
        "verify",
        str(stack.audit_path),
        "--jwks",
        str(stack.audit_path.parent / "lasthop-receipts.json"),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_write_fails_with_efbig(upstream: DemoUpstream) -> None:
    limit = f"({FILE_SIZE_LIMIT}, {FILE_SIZE_LIMIT})"
    limited = (
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, {limit}); "
        "from authz.cli.main import main; sys.exit(main(['serve', *sys.argv[1:]]))"
    )
    with running_stack(
        "lasthop-it-efbig-",
        use_redis=False,
        upstream=upstream,
        command=[sys.executable, "-c", limited],
    ) as stack:
        assert health(stack) == {"": "SERVING", AUTHZ_SERVICE: "SERVING"}
        before, after = drive_until_refused(stack)
        assert_refused_from_then_on(stack, before, after)
        # Issue 12: health stayed SERVING, so a probe never restarted the pod.
        assert health(stack) == {"": "NOT_SERVING", AUTHZ_SERVICE: "NOT_SERVING"}
        assert "File too large" in stack.lasthop.logs()
        assert stack.audit_path.stat().st_size <= FILE_SIZE_LIMIT
        assert stack.lasthop.close() == 0
        assert_trail_verifies(stack)
        allowed = {r.upstream_saw["x-lasthop-decision-id"] for r in before[:-1]}
        recorded = {
            r["decision_id"] for r in complete_records(stack.audit_path) if r["type"] == "decision"
        }
        assert allowed <= recorded  # fsync always: every 200 was on disk first


def health(stack: Stack) -> dict[str, str]:
    """grpc.health.v1 as a Kubernetes gRPC probe asks it: the server and the ext_authz service."""
    with grpc.insecure_channel(stack.lasthop.ready["listen"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            service: health_pb2.HealthCheckResponse.ServingStatus.Name(
                stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            )
            for service in ("", AUTHZ_SERVICE)
        }


def complete_records(path: Path) -> list[dict[str, object]]:
    """Every complete line: what follows the last newline is a write cut short, no record."""
    return [json.loads(raw) for raw in path.read_bytes().split(b"\n")[:-1]]


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_enospc(upstream: DemoUpstream, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "64k") as disk:
        trail = disk / "decisions.jsonl"
        with running_stack(
            "lasthop-it-enospc-",
            use_redis=False,
            upstream=upstream,
            env={"LASTHOP_AUDIT_PATH": str(trail)},
        ) as stack:
            before, after = drive_until_refused(stack)
            assert_refused_from_then_on(stack, before, after)
            assert "No space left on device" in stack.lasthop.logs()
            assert stack.lasthop.close() == 0
            result = run_cli(
                "audit", "verify", str(trail), "--jwks", str(disk / "lasthop-receipts.json")
            )
            assert result.returncode == 0, result.stdout + result.stderr


def test_audit_directory_replaced_by_a_file(upstream: DemoUpstream) -> None:
    with running_stack(
        "lasthop-it-enotdir-", use_redis=False, upstream=upstream, audit="rotate_bytes = 4096\n"
    ) as stack:
        audit_dir = stack.audit_path.parent
        moved = audit_dir.with_name("audit-moved")
        user = unique("u-dir")
        stack.grant(user)
        assert stack.get(RECORDS, stack.token(user, ["scribe"])).status == 200
        audit_dir.rename(moved)
        audit_dir.write_text("not a directory any more")
        before, after = drive_until_refused(stack)
        assert_refused_from_then_on(stack, before, after)
        assert "Not a directory" in stack.lasthop.logs()
