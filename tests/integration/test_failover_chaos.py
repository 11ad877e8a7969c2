"""Failovers under load, checked Jepsen-style (tests/integration/chaos.py): no use spent twice,
no revoked grant back, every refusal a refusal, and the fleet serving again afterwards.

Both fleets fence counted uses and revocations on the replica (`store.use_replicas = 1`,
`store.revoke_replicas = 1`: every replica the topology has), the configuration the docs
give for "never more than max-uses, never a revoked grant back".

Sentinel: `SENTINEL FAILOVER` while the old primary is still up and serving (issue 12:
Lasthop kept its pooled connections to the old primary; a grant with 60 uses was allowed
94 times, and a revoke answered `not_found` on a retry came back after the demotion).

Cluster (three masters, each with a replica): the replication link of the master that
holds the grants is cut while it keeps serving (its replica paused, so it cannot
reconnect), the master is killed, and the replica takes over with what it had: every
write the master took after the cut is gone. Then the dead master is started again,
empty, and rejoins as the new master's replica.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.dev.resp import command
from authz.dev.topology import ClusterTopology, SentinelTopology
from authz.dev.upstream import DemoUpstream
from authz.stores.redis_store import PREFIX, pair_tag
from tests.integration import chaos
from tests.integration.conftest import RECORDS, assert_deny, unique, wait_until
from tests.integration.fleet import Fleet, fleet_on

pytestmark = pytest.mark.integration

FENCED = {"LASTHOP_STORE_USE_REPLICAS": "1", "LASTHOP_STORE_REVOKE_REPLICAS": "1"}
LIMITED = 3
MAX_USES = 40
REVOCABLE = 4
AGENT = "scribe"


@pytest.fixture(scope="module")
def sentinel(upstream: DemoUpstream) -> Iterator[tuple[SentinelTopology, Fleet]]:
    with fleet_on("lasthop-it-chaos-sentinel-", SentinelTopology, upstream, FENCED) as both:
        yield both


@pytest.fixture(scope="module")
def cluster(upstream: DemoUpstream) -> Iterator[tuple[ClusterTopology, Fleet]]:
    def start(work: Path) -> ClusterTopology:
        return ClusterTopology(work, replicas=1)

    with fleet_on("lasthop-it-chaos-cluster-", start, upstream, FENCED) as both:
        yield both


def _counted(command: chaos.Counted, targets: list[chaos.Target]) -> dict[str, int]:
    """The use counter of each grant as the primary that survived holds it."""
    found = {}
    for target in targets:
        grant = target.grant
        raw = command("GET", f"{PREFIX}{pair_tag(grant.agent, grant.user)}:uses:{grant.id}")
        found[grant.id] = int(raw or 0)
    return found


def _recovered(fleet: Fleet) -> None:
    """A grant issued after the fault is allowed through every replica."""
    user = unique("u-chaos-after")
    fleet.grant(user, AGENT)
    token = fleet.token(user, [AGENT])
    for replica in fleet.replicas:
        fleet.wait_allowed(replica, token, timeout=10.0)


def _check(
    name: str,
    load: chaos.Load,
    limited: list[chaos.Target],
    revocable: list[chaos.Target],
    acks: list[chaos.Ack],
    counted: dict[str, int],
) -> None:
    history = load.ops()
    allowed = chaos.allowed_uses(history)
    print(
        f"{name}: {chaos.summary(history)}; uses allowed / max-uses / counted: "
        + ", ".join(
            f"{allowed[t.grant.id]}/{t.grant.max_uses}/{counted[t.grant.id]}" for t in limited
        )
        + "; revokes: "
        + "; ".join(chaos.answers(a) for a in acks)
    )
    assert [a.grant_id for a in acks if a.acked_at is None] == [], acks
    assert chaos.overspent(history, limited, counted) == []
    late = chaos.allowed_after_revoke(history, acks)
    assert late == [], late[:5]
    expected = {t.grant.id: {"grant_exhausted"} for t in limited}
    expected.update({t.grant.id: {"no_grant"} for t in revocable})
    wrong = chaos.wrong_answers(history, expected)
    assert wrong == [], wrong[:5]


def test_sentinel_failover_under_load(sentinel: tuple[SentinelTopology, Fleet]) -> None:
    topology, fleet = sentinel
    users = chaos.users(LIMITED + REVOCABLE, "u-chaos-sentinel")
    limited = chaos.grants(fleet, AGENT, LIMITED, MAX_USES, users[:LIMITED])
    revocable = chaos.grants(fleet, AGENT, REVOCABLE, 0, users[LIMITED:])
    revokes = chaos.Revokes(fleet)
    with chaos.Load(fleet, limited + revocable) as load:
        time.sleep(0.5)
        revokes.start(revocable[0].grant.id)  # before the failover
        topology.failover()
        time.sleep(0.4)  # the replica is promoted; Sentinel does not name it yet
        revokes.start(revocable[1].grant.id, via=1)  # in the split
        topology.wait_for_failover()
        revokes.start(revocable[2].grant.id)  # named, the old primary still up
        time.sleep(1.0)
        topology.demote_old_primary()
        revokes.start(revocable[3].grant.id, via=1)  # after the demotion
        acks = revokes.wait()
        time.sleep(0.5)
    counted = _counted(lambda *args: topology.command(topology.primary_port, *args), limited)
    _check("sentinel failover", load, limited, revocable, acks, counted)
    for target in revocable:
        grant = target.grant
        assert topology.command(topology.primary_port, "EXISTS", f"{PREFIX}grant:{grant.id}") == 0
        for replica in fleet.replicas:
            assert_deny(replica.get(RECORDS, target.token), 403, "no_grant")
    _recovered(fleet)


SWITCH_BOUND_SECONDS = 3.0  # Sentinel demotes the old primary only after about ten


def _lasthop_connections(topology: SentinelTopology, port: int) -> int:
    """Clients of the server on `port` but the Sentinels, its replica and this CLIENT LIST."""
    clients = str(topology.command(port, "CLIENT", "LIST")).splitlines()
    return sum(
        not any(mark in f" {line} " for mark in (" name=sentinel-", " flags=S ", " cmd=client "))
        for line in clients
    )


def test_sentinel_switch_closes_every_connection_to_the_old_primary(
    sentinel: tuple[SentinelTopology, Fleet],
) -> None:
    """Issue 12: after `+switch-master` the fleet kept its pooled connections to the old
    primary (still up, still answering) until Sentinel demoted it some ten seconds later."""
    topology, fleet = sentinel
    user = unique("u-switch")
    fleet.grant(user, AGENT)
    token = fleet.token(user, [AGENT])
    targets = [chaos.Target(fleet.grant(unique("u-switch-l"), AGENT, max_uses=10_000), token)]
    with chaos.Load(fleet, targets):
        time.sleep(0.3)
        old = topology.primary_port
        assert _lasthop_connections(topology, old) > 0
        topology.failover()
        topology.wait_for_failover()
        switched = time.monotonic()
        while _lasthop_connections(topology, old) > 0:
            assert topology.command(old, "ROLE")[0] == "master", "demoted before the check"
            assert time.monotonic() - switched < SWITCH_BOUND_SECONDS, (
                f"{_lasthop_connections(topology, old)} connections still on the old primary"
            )
            time.sleep(0.05)
        new = topology.primary_port
        assert wait_until(lambda: _lasthop_connections(topology, new) > 0, SWITCH_BOUND_SECONDS)
    topology.demote_old_primary()
    for replica in fleet.replicas:
        fleet.wait_allowed(replica, token, timeout=10.0)


CUT_SECONDS = 0.6  # the master serves with no replica this long (under the node timeout)


def test_cluster_failover_under_load(cluster: tuple[ClusterTopology, Fleet]) -> None:
    topology, fleet = cluster
    master = next(p for p in sorted(topology.masters()) if p != topology.ports[0])
    replica = topology.replica_of(master)

    def on_master(user: str) -> bool:
        return topology.node_for(f"{PREFIX}{pair_tag(AGENT, user)}:pair") == master

    users = chaos.users(LIMITED + REVOCABLE, "u-chaos-cluster", on_master)
    limited = chaos.grants(fleet, AGENT, LIMITED, MAX_USES, users[:LIMITED])
    revocable = chaos.grants(fleet, AGENT, REVOCABLE, 0, users[LIMITED:])
    revokes = chaos.Revokes(fleet)
    with chaos.Load(fleet, limited + revocable) as load:
        time.sleep(0.5)
        revokes.start(revocable[0].grant.id)  # before the fault
        with topology.paused(replica):
            topology.cut_replication(master)
            time.sleep(CUT_SECONDS / 2)
            revokes.start(revocable[1].grant.id, via=1)  # reaches the master only
            time.sleep(CUT_SECONDS / 2)
            topology.kill(master)
        topology.takeover(replica)
        revokes.start(revocable[2].grant.id)  # the new master, with no replica yet
        time.sleep(0.5)
        topology.restart(master)
        topology.wait_replica_in_sync(master)
        revokes.start(revocable[3].grant.id, via=1)  # healed
        acks = revokes.wait()
        time.sleep(0.5)
    counted = _counted(lambda *args: command(replica, *args), limited)
    _check("cluster failover", load, limited, revocable, acks, counted)
    for target in revocable:
        grant = target.grant
        assert (
            command(replica, "HEXISTS", f"{PREFIX}{pair_tag(AGENT, grant.user)}:pair", grant.id)
            == 0
        )
        for each in fleet.replicas:
            assert_deny(each.get(RECORDS, target.token), 403, "no_grant")
    _recovered(fleet)
