"""A fleet for the integration tests: several `lasthop serve` replicas, each behind its own
Envoy, sharing one Redis (any topology: a URL), plus the demo EHR upstream.

Each replica has its own directory (config, audit trail, logs) and its own ports.
The fleet's policy set is the shipped one plus one test policy, so that agents the
tests register themselves can be allowed (the shipped permits name their agents):

    any registered agent may read records with a grant covering them

and one extra seed agent (`SEED_AGENT`) in entities.json that the seeding tests may
change without touching the shipped example's agents.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from authz._proto import agents_pb2 as apb
from authz._proto import grants_pb2 as pb
from authz.cli.admin_client import AdminClient
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import PURPOSE, RECORDS, Response, request

SEED_AGENT = "fleet-seeded"
BOUND_SECONDS = 1.0  # the issue's bound: revoke and suspend seen everywhere within 1 s

FLEET_POLICY = """\
// Test fleet only: any registered agent reads records with a grant covering them.
@id("fleet-any-agent-reads-records")
permit (
  principal is Agent,
  action == Action::"read",
  resource is Records
)
when { context has grant };
"""

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fleet_policies(work: Path) -> Path:
    """The shipped policies plus FLEET_POLICY and the SEED_AGENT entity, under `work`."""
    target = work / "policies"
    shutil.copytree(devstack.POLICIES, target, ignore=shutil.ignore_patterns("tests"))
    (target / "fleet-any-agent-reads-records.cedar").write_text(FLEET_POLICY)
    entities = json.loads((target / "entities.json").read_text())
    entities.append(
        {
            "uid": {"type": "Agent", "id": SEED_AGENT},
            "attrs": {
                "owner": {"__entity": {"type": "User", "id": "dr-alice"}},
                "risk": 10,
                "status": "active",
                "allowed_purposes": [PURPOSE],
                "description": "seed agent of the fleet tests",
            },
            "parents": [],
        }
    )
    (target / "entities.json").write_text(json.dumps(entities, indent=1))
    return target


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in `text` (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@dataclass
class Replica:
    name: str
    config: Path
    env: dict[str, str]
    lasthop: devstack.LasthopServer
    envoy: devstack.Envoy
    admin: AdminClient

    @property
    def admin_address(self) -> str:
        return self.lasthop.ready["admin_listen"]

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> Response:
        return request(self.envoy.url, path, token, **kwargs)

    def metrics(self) -> str:
        url = f"http://{self.lasthop.ready['metrics_listen']}/metrics"
        with _OPENER.open(url, timeout=5) as resp:
            return str(resp.read().decode())

    def cache(self, cache: str, result: str) -> float:
        """lasthop_cache_requests_total{cache, result} on this replica."""
        return metric(self.metrics(), "lasthop_cache_requests_total", cache=cache, result=result)

    def cache_hits(self, cache: str) -> float:
        """Hits of `cache` plus hits of the decision cache (which answers before it)."""
        text = self.metrics()
        return sum(
            metric(text, "lasthop_cache_requests_total", cache=name, result="hit")
            for name in (cache, "decisions")
        )

    def stop(self) -> None:
        _close_lasthop(self.lasthop)

    def start(self) -> None:
        """Start `lasthop serve` again on the same config (same ports, same Envoy)."""
        self.lasthop = devstack.LasthopServer(self.config, env=self.env)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Fleet:
    work: Path
    issuer: DemoIssuer
    replicas: list[Replica]
    upstream: DemoUpstream
    admin_token: str = field(repr=False, default="")

    def token(self, user: str, agents: list[str], purpose: str = PURPOSE, **extra: Any) -> str:
        return self.issuer.access_token(user, agents, purpose=purpose, **extra)

    def register(self, via: int = 0, prefix: str = "agent", risk: int = 10) -> str:
        """A fresh agent, registered through replica `via`, allowed PURPOSE."""
        agent_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.replicas[via].admin.register_agent(
            apb.RegisterAgentRequest(
                id=agent_id,
                owner="dr-alice",
                risk=risk,
                allowed_purposes=[PURPOSE],
                description="registered by a fleet test",
            )
        )
        return agent_id

    def grant(
        self, user: str, agent: str, *, via: int = 0, ttl: int = 600, max_uses: int = 0
    ) -> pb.Grant:
        return self.replicas[via].admin.issue(
            pb.IssueGrantRequest(
                agent=agent,
                user=user,
                actions=["read"],
                resources=['Patient::"p-1001"'],
                purpose=PURPOSE,
                ttl_seconds=ttl,
                max_uses=max_uses,
            )
        )

    def wait_allowed(self, replica: Replica, token: str, timeout: float = 5.0) -> None:
        """Until `replica` allows RECORDS for `token` (the grant reached its cache)."""
        deadline = time.monotonic() + timeout
        while True:
            resp = replica.get(RECORDS, token)
            if resp.status == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{replica.name} never allowed: {resp.status} {resp.body}")
            time.sleep(0.02)

    def warm(self, replica: Replica, token: str, cache: str, timeout: float = 10.0) -> None:
        """Until `replica` allows `token` from a local cache: its `cache` cache, or the
        decision cache in front of it (a hit is counted on either).

        The first reads may miss: the caches are off until the subscription is confirmed,
        and a read that raced an invalidation (the issue's own) is not cached.
        """
        self.wait_allowed(replica, token, timeout)
        deadline = time.monotonic() + timeout
        while True:
            hits = replica.cache_hits(cache)
            resp = replica.get(RECORDS, token)
            # A 503 is a busy machine (store timeout, Envoy's ext_authz timeout): try again.
            assert resp.status in (200, 503), (replica.name, resp.status, resp.body)
            if resp.status == 200 and replica.cache_hits(cache) > hits:
                return
            assert time.monotonic() < deadline, f"{replica.name} is not caching {cache}"
            time.sleep(0.02)


def poll_until_denied(
    replica: Replica, token: str, reason: str, since: float, limit: float = 5.0
) -> tuple[float, int]:
    """Poll RECORDS through `replica` until it is denied with `reason`.

    Returns (seconds from `since` to the first such deny, requests allowed on the way).
    Any other deny on the way fails: a revoke must not look like something else. A 503
    (a busy machine: store or ext_authz timeout) is not an allow; polling goes on.
    """
    allowed = 0
    while True:
        resp = replica.get(RECORDS, token)
        now = time.monotonic()
        if resp.status == 403 and resp.reason == reason:
            return now - since, allowed
        assert resp.status in (200, 503), (replica.name, resp.status, resp.body)
        assert resp.status == 200 or resp.reason in ("store_unavailable", ""), resp.body
        allowed += resp.status == 200
        assert now - since < limit, f"{replica.name} still allows {limit} s later"


def _close_lasthop(lasthop: devstack.LasthopServer) -> None:
    lasthop.close()
    if lasthop.proc.stdout is not None:
        lasthop.proc.stdout.close()


@contextlib.contextmanager
def running_fleet(
    prefix: str,
    redis_url: str,
    *,
    size: int = 2,
    env: Mapping[str, str] | None = None,
    upstream: DemoUpstream | None = None,
    envs: list[Mapping[str, str]] | None = None,
    urls: list[str] | None = None,
) -> Iterator[Fleet]:
    """`size` replicas (each Lasthop + its Envoy) on `redis_url`; all stopped on exit.

    `env` goes to every replica (LASTHOP_STORE_* etc.); `envs[i]` adds to replica i;
    `urls[i]` replaces the Redis URL of replica i (e.g. through a proxy).
    """
    with devstack.workdir(prefix) as work, contextlib.ExitStack() as stack:
        issuer = DemoIssuer("ES256", kid=f"fleet-{uuid.uuid4().hex[:6]}")
        jwks = issuer.write_jwks(work / "keys" / "jwks.json")
        policies = fleet_policies(work)
        if upstream is None:
            upstream = DemoUpstream()
            stack.callback(upstream.close)
        admin_token = issuer.admin_token(ttl=1800)
        replicas: list[Replica] = []

        def stop_all() -> None:  # whichever process each runs now
            for replica in replicas:
                replica.stop()

        stack.callback(stop_all)
        for i in range(size):
            home = work / f"replica-{i}"
            home.mkdir()
            config = devstack.write_config(
                home, jwks, redis_url=urls[i] if urls else redis_url, policies=policies
            )
            replica_env = {**(env or {}), **(envs[i] if envs else {})}
            lasthop = devstack.LasthopServer(config, env=replica_env)
            try:
                envoy = devstack.Envoy(home, lasthop.port, upstream.port)
            except BaseException:
                _close_lasthop(lasthop)
                raise
            stack.callback(envoy.close)
            admin = AdminClient(lasthop.ready["admin_listen"], admin_token)
            stack.callback(admin.close)
            replicas.append(
                Replica(
                    name=f"replica-{i}",
                    config=config,
                    env=replica_env,
                    lasthop=lasthop,
                    envoy=envoy,
                    admin=admin,
                )
            )
        yield Fleet(
            work=work, issuer=issuer, replicas=replicas, upstream=upstream, admin_token=admin_token
        )


class Topology(Protocol):
    """A Redis topology a fleet can run on (authz.dev.topology)."""

    @property
    def url(self) -> str: ...
    def close(self) -> None: ...


T = TypeVar("T", bound=Topology)


@contextlib.contextmanager
def fleet_on(
    prefix: str,
    start: Callable[[Path], T],
    upstream: DemoUpstream,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[T, Fleet]]:
    """A topology started by `start(workdir)`, and a fleet on it; both stopped on exit."""
    with devstack.workdir(prefix) as work:
        topology = start(work)
        try:
            with running_fleet(
                f"{prefix}fleet-", topology.url, upstream=upstream, env=env
            ) as fleet:
                yield topology, fleet
        finally:
            topology.close()
