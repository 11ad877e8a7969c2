"""`kill -9` under load, then verify: the trail is intact, and nothing acknowledged is missing
beyond the documented window.

- `audit.fsync = "always"`: a check is answered only once its record is fsynced,
  so every decision a client received is in the trail.
- `audit.fsync = "50ms"`: a check is answered once its record is queued; a
  `kill -9` loses the records still in Lasthop's memory (queued, or in the batch
  being written): at most `queue_size + 512`, and only at the end. Each client
  sends one request at a time, so what it lost is a suffix of what it was told
  (no gap), and its earlier decisions are all there.

Either way a restart repairs the tail and continues the chain.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from authz.audit.writer import MAX_BATCH
from authz.dev import stack as devstack
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import (
    RECORDS,
    Response,
    Stack,
    run_cli,
    running_stack,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

CLIENTS = 3
MAX_PER_CLIENT = 400
KILL_AFTER = 120  # decisions acknowledged across clients before the kill
QUEUE_SIZE = 64


@dataclass
class Client:
    acknowledged: list[str] = field(default_factory=list)  # decision ids, in order received


def decision_id(resp: Response) -> str | None:
    """The decision a client was told about; None for Envoy's own 503 and audit refusals."""
    if resp.status == 200:
        return resp.upstream_saw["x-lasthop-decision-id"]
    if resp.body.get("reason") == "audit_unavailable":
        return None
    value = resp.body.get("decision_id")
    return value if isinstance(value, str) else None


def load_and_kill(stack: Stack) -> list[Client]:
    user = unique("u-kill")
    stack.grant(user)
    tokens = [stack.token(user, ["scribe"]), stack.token(unique("u-kill-none"), ["scribe"]), None]
    clients = [Client() for _ in range(CLIENTS)]
    stop = threading.Event()
    lock = threading.Lock()
    total = [0]

    def run(client: Client, offset: int) -> None:
        for i in range(MAX_PER_CLIENT):
            if stop.is_set():
                return
            try:
                resp = stack.get(RECORDS, tokens[(i + offset) % len(tokens)])
            except OSError:
                continue
            found = decision_id(resp)
            if found is not None:
                client.acknowledged.append(found)
                with lock:
                    total[0] += 1

    threads = [
        threading.Thread(target=run, args=(c, n), daemon=True) for n, c in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: total[0] >= KILL_AFTER, timeout=30.0), total[0]
        stack.lasthop.proc.kill()  # SIGKILL: no flush, no final checkpoint
        stack.lasthop.proc.wait(10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    return clients


def trail_ids(path: Path) -> list[str]:
    complete = path.read_bytes().split(b"\n")[:-1]  # after the last newline: a torn write
    return [r["decision_id"] for r in map(json.loads, complete) if r["type"] == "decision"]


def verify(stack: Stack) -> str:
    result = run_cli(
        "audit",
        "verify",
        str(stack.audit_path),
        "--jwks",
        str(stack.audit_path.parent / "lasthop-receipts.json"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def restart_and_stop(stack: Stack) -> None:
    again = devstack.LasthopServer(stack.config)
    try:
        assert again.close() == 0, again.logs()[-2000:]
    finally:
        if again.proc.stdout is not None:
            again.proc.stdout.close()
    opened = [
        json.loads(raw)
        for raw in stack.audit_path.read_bytes().splitlines()
        if b'"event":"trail_opened"' in raw
    ]
    assert len(opened) == 2
    assert opened[1]["detail"]["previous_end"] != "checkpoint:shutdown"  # it was killed


@pytest.mark.parametrize("fsync", ["always", "50ms"])
def test_kill_9_under_load(upstream: DemoUpstream, fsync: str) -> None:
    with running_stack(
        f"lasthop-it-kill-{fsync}-",
        use_redis=False,
        upstream=upstream,
        audit=f'fsync = "{fsync}"\nqueue_size = {QUEUE_SIZE}\n',
    ) as stack:
        clients = load_and_kill(stack)
        verify(stack)
        recorded = set(trail_ids(stack.audit_path))
        told = [d for c in clients for d in c.acknowledged]
        assert len(told) >= KILL_AFTER
        missing = [d for d in told if d not in recorded]
        if fsync == "always":
            assert missing == [], f"{len(missing)} acknowledged decisions are not in the trail"
        else:
            assert len(missing) <= QUEUE_SIZE + MAX_BATCH
            for client in clients:
                lost = [d not in recorded for d in client.acknowledged]
                first_lost = lost.index(True) if True in lost else len(lost)
                assert not any(lost[:first_lost]) and all(lost[first_lost:]), (
                    "a gap: a decision is missing while a later one of the same client is there"
                )
        print(
            f"kill -9 with fsync={fsync}: {len(told)} decisions acknowledged, "
            f"{len(missing)} not in the trail"
        )
        restart_and_stop(stack)
        verify(stack)
