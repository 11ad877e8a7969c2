"""SIGTERM with requests flowing: exit 0, and one parseable audit line per decision, no tokens."""

from __future__ import annotations

import hashlib
import signal
import threading

import pytest

from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import (
    RECORDS,
    Response,
    Stack,
    read_audit,
    running_stack,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

MAX_REQUESTS_PER_CLIENT = 400
CLIENTS = 2
STOP_TIMEOUT = 15.0


def _decision_id(resp: Response) -> str | None:
    """The decision id Lasthop gave this response, if Lasthop decided it."""
    if resp.status == 200:
        return resp.upstream_saw.get("x-lasthop-decision-id")
    value = resp.body.get("decision_id")
    return value if isinstance(value, str) else None


def test_sigterm_drains_and_flushes_the_audit_trail(upstream: DemoUpstream) -> None:
    with running_stack("lasthop-it-term-", use_redis=False, upstream=upstream) as stack:
        _run(stack)


def _run(stack: Stack) -> None:
    user = unique("u-term")
    stack.grant(user)
    tokens = [
        stack.token(user, ["scribe"]),  # allowed
        stack.token(unique("u-term-none"), ["scribe"]),  # no_grant
        stack.token(user, ["chart-exporter"]),  # agent_suspended
    ]
    seen: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    terminated = threading.Event()
    after_term = [0]
    undecided = [0]  # Envoy's own 503s: no decision id reached the client

    def client(offset: int) -> None:
        for i in range(MAX_REQUESTS_PER_CLIENT):
            if stop.is_set():
                return
            try:
                resp = stack.get(RECORDS, tokens[(i + offset) % len(tokens)])
            except OSError:
                continue
            with lock:
                statuses.append(resp.status)
                decision = _decision_id(resp)
                if decision:
                    seen.append(decision)
                else:
                    undecided[0] += 1
                if terminated.is_set():
                    after_term[0] += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: len(seen) >= 30, timeout=15.0), statuses[-20:]
        terminated.set()
        stack.lasthop.proc.send_signal(signal.SIGTERM)
        code = stack.lasthop.proc.wait(STOP_TIMEOUT)
        # Requests kept flowing while it stopped; afterwards Envoy answers 503 itself.
        wait_until(lambda: after_term[0] >= 5, timeout=3.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert code == 0, stack.lasthop.logs()[-2000:]
    assert "lasthop stopped" in stack.lasthop.logs()
    assert 200 in statuses and 403 in statuses
    assert all(s in (200, 403, 503) for s in statuses), sorted(set(statuses))

    text = stack.audit_path.read_text(encoding="ascii")
    assert text.endswith("\n"), "the last audit record was cut short"
    for token in tokens:
        assert token not in text, "a raw token is in the audit trail"
        assert token.split(".")[2] not in text, "a token signature is in the audit trail"
    trail = read_audit(stack.audit_path)
    assert trail[-1]["type"] == "checkpoint" and trail[-1]["trigger"] == "shutdown"
    records = [r for r in trail if r["type"] == "decision"]
    ids = [r["decision_id"] for r in records]
    assert len(ids) == len(set(ids)), "a decision was written twice"
    missing = set(seen) - set(ids)
    assert not missing, f"{len(missing)} decisions the client saw have no audit record"
    # One record per decision made: a record no client saw can only be a request whose
    # answer Envoy replaced with its own 503 (Lasthop too slow or going away).
    extra = set(ids) - set(seen)
    assert len(extra) <= undecided[0], (len(extra), undecided[0])
    digests = {hashlib.sha256(t.encode()).hexdigest() for t in tokens}
    for record in records:
        assert record["decision"] in ("allow", "deny")
        assert record["token_sha256"] in digests
        assert record["path"] == RECORDS
        assert record["reason"] in ("allowed", "no_grant", "agent_suspended"), record
