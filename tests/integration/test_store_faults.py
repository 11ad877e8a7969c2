"""What the store can do wrong besides going away: answer junk, or come back empty.

Two Lasthop replicas share one real Redis; replica A reaches it through a TCP relay
(tcp_proxy.py) that can answer every command with junk instead of forwarding it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from authz.dev import stack as devstack
from authz.dev.tcp_proxy import TcpProxy
from authz.dev.upstream import DemoUpstream
from authz.errors import AdminError
from tests.integration.conftest import (
    RECORDS,
    assert_deny,
    read_audit,
    unique,
    wait_until,
)
from tests.integration.fleet import SEED_AGENT, Fleet, running_fleet

pytestmark = pytest.mark.integration

JUNK_REQUESTS = 4
RESEED_WAIT_SECONDS = 10.0


@dataclass
class Faults:
    fleet: Fleet
    redis: devstack.RedisServer
    proxy: TcpProxy


@pytest.fixture(scope="module")
def faults(upstream: DemoUpstream) -> Iterator[Faults]:
    with devstack.workdir("lasthop-it-store-faults-") as work:
        server = devstack.RedisServer(work)
        proxy = TcpProxy(server.port)
        try:
            with running_fleet(
                "lasthop-it-store-faults-fleet-",
                server.url,
                upstream=upstream,
                urls=[proxy.url, server.url],
            ) as fleet:
                yield Faults(fleet, server, proxy)
        finally:
            proxy.close()
            server.close()


@pytest.mark.parametrize(("junk", "what"), [(b":1\r\n", "grants"), (b"*0\r\n", "agent")])
def test_junk_reply_is_store_unavailable(faults: Faults, junk: bytes, what: str) -> None:
    """Issue 12: an integer (or an empty array) where a JSON string was due raised
    TypeError, and the check answered 503 `internal_error`, so the store alert never fired."""
    a = faults.fleet.replicas[0]
    user = unique("u-junk")
    # Never seen by A: neither the grants of this pair nor (for `agent`) the agent is cached.
    agents = ["scribe"] if what == "grants" else [f"junk-agent-{uuid.uuid4().hex[:6]}"]
    token = faults.fleet.token(user, agents)
    faults.proxy.junk = junk
    try:
        answers = [a.get(RECORDS, token) for _ in range(JUNK_REQUESTS)]
    finally:
        faults.proxy.junk = None
    for resp in answers:
        assert_deny(resp, 503, "store_unavailable")
    # Working again once Redis answers sensibly: what the junk did is not remembered.
    faults.fleet.grant(user, "scribe")
    faults.fleet.wait_allowed(a, faults.fleet.token(user, ["scribe"]), timeout=5.0)


def _reseeded(replica_trail: list[dict[str, object]]) -> list[object]:
    return [r for r in replica_trail if r.get("event") == "registry_reseeded"]


def test_redis_restarted_empty_reseeds_the_registry(faults: Faults) -> None:
    """Issue 12: a Redis restarted without its data lost the registry until Lasthop
    restarted: every check was `agent_unregistered` and `grants issue` refused every agent."""
    fleet = faults.fleet
    before = unique("u-empty-before")
    fleet.grant(before, SEED_AGENT)
    before_token = fleet.token(before, [SEED_AGENT])
    for replica in fleet.replicas:
        fleet.wait_allowed(replica, before_token)

    faults.redis.restart_empty()

    after = unique("u-empty-after")

    def issued() -> bool:
        try:
            fleet.grant(after, SEED_AGENT, via=1)
        except AdminError:
            return False
        return True

    assert wait_until(issued, RESEED_WAIT_SECONDS), "the registry was never seeded again"
    token = fleet.token(after, [SEED_AGENT])
    for replica in fleet.replicas:
        fleet.wait_allowed(replica, token, timeout=RESEED_WAIT_SECONDS)
        # Grants were lost with the store: denied, never allowed from what a cache kept.
        assert_deny(replica.get(RECORDS, before_token), 403, "no_grant")
    events = [
        event
        for replica in fleet.replicas
        for event in _reseeded(read_audit(replica.config.parent / "audit" / "decisions.jsonl"))
    ]
    assert events, "no registry_reseeded event in any replica's trail"
    assert all(isinstance(e, dict) and e["actor"] == "lasthop" for e in events)
    named = {agent for e in events if isinstance(e, dict) for agent in e["detail"]["agents"]}
    assert SEED_AGENT in named and "scribe" in named, named
