"""Scaling curves of one Check, in process, each as a ratio to its smallest point.

    .venv/bin/python benchmarks/scaling.py [--checks 1500] [--max-grants 1000000] [--json PATH]

Runs the server's pipeline (no Envoy, no gRPC: this isolates Lasthop's own
work) on the hospital example with a 2-hop chain, and varies one thing at a
time, with every cache that would hide the cost turned off:

  policies     10, 100, 1,000, 10,000 (one `principal ==` policy per agent)
  grants       10 up to --max-grants active grants in a real Redis (other pairs)
  chain depth  1 up to identity.max_chain_depth (4), agents in Redis, no local cache
  token size   about 1, 2, 4 and 8 KiB

and measures memory: RSS with 10,000 agents and 100,000 cached grant pairs.
Targets: 10,000 policies <= 2x the p50 of 10; 1,000,000 grants <= 1.2x of
10; the deepest chain <= 1.3x of depth 1; RSS <= 250 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from authz.audit.records import NullAudit
from authz.check import keys as jwks
from authz.check.pipeline import Pipeline
from authz.config import IdentitySettings
from authz.dev.stack import RedisServer
from authz.dev.tokens import DemoIssuer
from authz.model import Agent, CheckInput, Grant
from authz.policy import load as policy_load
from authz.server.app import assemble
from authz.stores.embedded import (
    EmbeddedGrantStore,
    SeededRegistry,
)
from authz.stores.protocols import AgentRegistry, GrantStore
from authz.stores.redis_store import PREFIX, RedisStore, pair_tag
from authz.stores.registry import StoreRegistry

ROOT = Path(__file__).resolve().parent.parent

PURPOSE = "clinical-documentation"
PATH = "/patients/p-1001/records"
# Agents that may hand a clinical-documentation task on, so that a chain can be 4 deep
# (every agent of a chain must allow its purpose: agent-purpose-must-be-allowed).
RELAYS = [
    Agent(f"relay-{n}", "dr-alice", 10, "active", allowed_purposes=(PURPOSE,)) for n in (1, 2)
]
DEEP_CHAIN = ["relay-2", "relay-1", "orchestrator", "scribe"]
DEPTHS = (1, 2, 3, 4)
PER_AGENT = """
@id("read-{n}")
permit (principal == Agent::"{n}", action == Action::"read", resource is Records)
when {{ context has grant }};
"""


def uncached(p: Pipeline) -> None:
    """Forget every memo the fast path keeps, so each check pays its full cost."""
    p.bundle = p.bundle  # a new policy engine: its memos start empty
    p.verifier.forget()


def pipeline(
    bundle: policy_load.PolicyBundle,
    issuer: DemoIssuer,
    store: GrantStore,
    agents: dict[str, Agent] | AgentRegistry,
) -> Pipeline:
    keys = jwks.StaticKeys(
        jwks.parse_jwks(json.dumps({"keys": [issuer.public_jwk]}), ("ES256",), "bench")
    )
    return assemble(
        ident=IdentitySettings(),
        keys=keys,
        bundle=bundle,
        registry=SeededRegistry(agents) if isinstance(agents, dict) else agents,
        store=store,
        audit=NullAudit(),
    )


def grant(agent: str = "scribe", user: str = "dr-alice") -> Grant:
    now = int(time.time())
    return Grant(
        id=f"g-{agent}-{user}",
        agent=agent,
        user=user,
        actions=("read",),
        resources=('Patient::"p-1001"',),
        purpose=PURPOSE,
        issued_by="bench",
        issued_at=now,
        expires_at=now + 3600,
    )


def p50(p: Pipeline, token: str, checks: int) -> float:
    async def go() -> list[float]:
        return (await uncached_samples([(p, token)], checks))[0]

    gc.collect()
    return statistics.median(asyncio.run(go())) * 1e6


async def uncached_samples(subjects: list[tuple[Pipeline, str]], checks: int) -> list[list[float]]:
    """Seconds per uncached check of each (pipeline, token), taking turns check by check, so
    that a machine's drift lands on every subject alike; warmed up first, and allowed."""
    requests = [
        CheckInput(
            method="GET", path=PATH, host="ehr", headers={"authorization": [f"Bearer {token}"]}
        )
        for _, token in subjects
    ]
    for (p, _), request in zip(subjects, requests, strict=True):
        for _ in range(50):
            decision = await p.check(request)
        if not decision.allowed:
            raise RuntimeError(f"benchmark request denied: {decision.reason} {decision.detail}")
    samples: list[list[float]] = [[] for _ in subjects]
    for _ in range(checks):
        for (p, _), request, taken in zip(subjects, requests, samples, strict=True):
            uncached(p)
            started = time.perf_counter()
            await p.check(request)
            taken.append(time.perf_counter() - started)
    return samples


def curve(name: str, points: list[tuple[Any, float]]) -> dict[str, Any]:
    base = points[0][1]
    print(f"\n{name}")
    for x, us in points:
        print(f"  {x!s:>10}  p50 {us:8.1f} µs  x{us / base:.2f}")
    return {"points": [{"x": x, "p50_us": us, "ratio": us / base} for x, us in points]}


def per_agent(
    bundle: policy_load.PolicyBundle, count: int
) -> tuple[policy_load.PolicyBundle, dict[str, Agent]]:
    """The shipped policies plus one per agent, `count` in all; a new agent for each."""
    agents = dict(bundle.agents)
    extra = count - len(bundle.policies)
    for i in range(extra):
        agents[f"agent-{i}"] = Agent(
            f"agent-{i}", "dr-alice", 20, "active", allowed_purposes=(PURPOSE,)
        )
    shipped = "\n".join(p.read_text() for p in sorted((ROOT / "policies").glob("*.cedar")))
    text = shipped + "".join(PER_AGENT.format(n=f"agent-{i}") for i in range(extra))
    return policy_load.with_enforced_text(bundle, text), agents


def policies_curve(
    bundle: policy_load.PolicyBundle, issuer: DemoIssuer, token: str, checks: int
) -> dict[str, Any]:
    points = []
    for count in (10, 100, 1000, 10000):
        scaled, agents = per_agent(bundle, count)
        store = EmbeddedGrantStore(time.time)
        asyncio.run(store.put(grant()))
        points.append(
            (
                count,
                p50(
                    pipeline(scaled, issuer, store, agents),
                    issuer_token(issuer, ["orchestrator", "scribe"]),
                    checks,
                ),
            )
        )
    return curve("policies (one per agent)", points)


def issuer_token(issuer: DemoIssuer, agents: list[str], pad: int = 0) -> str:
    extra = {"pad": "x" * pad} if pad else {}
    return issuer.access_token("dr-alice", agents, purpose=PURPOSE, ttl=3600, **extra)


def grants_curve(
    bundle: policy_load.PolicyBundle, issuer: DemoIssuer, checks: int, maximum: int
) -> dict[str, Any]:
    points = []
    with tempfile.TemporaryDirectory() as work:
        redis = RedisServer(Path(work))
        try:
            store = RedisStore(redis.url, 500)
            asyncio.run(store.put(grant()))
            loaded = 1
            import redis as sync_redis

            client = sync_redis.Redis.from_url(redis.url)
            for target in [n for n in (10, 1000, 100_000, 1_000_000) if n <= maximum]:
                batch = client.pipeline(transaction=False)
                for i in range(loaded, target):
                    g = grant(f"agent-{i % 10_000}", f"user-{i}")
                    batch.hset(f"{PREFIX}{pair_tag(g.agent, g.user)}:pair", g.id, g.to_json())
                    if i % 10_000 == 0:
                        batch.execute()
                batch.execute()
                loaded = target
                points.append(
                    (
                        target,
                        p50(
                            pipeline(bundle, issuer, RedisStore(redis.url, 500), bundle.agents),
                            issuer_token(issuer, ["orchestrator", "scribe"]),
                            checks,
                        ),
                    )
                )
            client.close()
        finally:
            redis.close()
    return curve("active grants in Redis (no local cache)", points)


def depth_curve(
    bundle: policy_load.PolicyBundle, issuer: DemoIssuer, checks: int, redis_url: str
) -> dict[str, Any]:
    """Chain depth 1 to 4, agents and grants in Redis with no local cache: every check reads
    the registry (one round trip for the whole chain) and the grants. The depths take turns
    check by check (a pipeline each, one Redis client)."""

    async def load() -> None:
        store = RedisStore(redis_url, 500)
        for agent in [*bundle.agents.values(), *RELAYS]:
            await store.add_agent(agent)
        await store.put(grant())
        await store.close()

    async def measure() -> list[list[float]]:
        store = RedisStore(redis_url, 500)  # one client, on this event loop
        try:
            p = [pipeline(bundle, issuer, store, StoreRegistry(store)) for _ in DEPTHS]
            tokens = [issuer_token(issuer, DEEP_CHAIN[-depth:]) for depth in DEPTHS]
            return await uncached_samples(list(zip(p, tokens, strict=True)), checks)
        finally:
            await store.close()

    asyncio.run(load())
    gc.collect()
    samples = asyncio.run(measure())
    points = [(d, statistics.median(s) * 1e6) for d, s in zip(DEPTHS, samples, strict=True)]
    return curve("chain depth (Redis, no local cache, depths in turn)", points)


def token_curve(
    bundle: policy_load.PolicyBundle, issuer: DemoIssuer, checks: int
) -> dict[str, Any]:
    store = EmbeddedGrantStore(time.time)
    asyncio.run(store.put(grant()))
    p = pipeline(bundle, issuer, store, bundle.agents)
    points = []
    for pad in (0, 1000, 3000, 5600):
        token = issuer_token(issuer, ["orchestrator", "scribe"], pad)
        points.append((f"{len(token)} B", p50(p, token, checks)))
    return curve("token size", points)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(bundle: policy_load.PolicyBundle) -> dict[str, Any]:
    """RSS of this process holding 10,000 agents and 100,000 cached grant pairs."""
    agents = {
        f"agent-{i}": Agent(
            f"agent-{i}",
            f"owner-{i % 500}",
            i % 100,
            "active",
            allowed_purposes=(PURPOSE,),
            description="benchmark agent",
        )
        for i in range(10_000)
    }
    cached = {
        (f"agent-{i % 10_000}", f"user-{i}"): (
            time.monotonic() + 5,
            0,
            [grant(f"agent-{i % 10_000}", f"user-{i}")],
        )
        for i in range(100_000)
    }
    gc.collect()
    measured = rss_mb()
    print(
        f"\nmemory: RSS {measured:.0f} MB with {len(agents)} agents and {len(cached)} cached "
        "grant pairs (target <= 250 MB)"
    )
    return {"rss_mb": measured, "agents": len(agents), "cached_grant_pairs": len(cached)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checks", type=int, default=1500)
    ap.add_argument("--max-grants", type=int, default=1_000_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    bundle = policy_load.load(ROOT / "policies")
    issuer = DemoIssuer("ES256", kid="bench")
    with tempfile.TemporaryDirectory() as work:
        redis = RedisServer(Path(work))
        try:
            depth = depth_curve(bundle, issuer, args.checks, redis.url)
        finally:
            redis.close()
    results = {
        "policies": policies_curve(bundle, issuer, "", args.checks),
        "chain_depth": depth,
        "token_size": token_curve(bundle, issuer, args.checks),
        "grants": grants_curve(bundle, issuer, args.checks, args.max_grants),
        "memory": memory(bundle),
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
