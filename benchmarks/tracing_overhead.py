"""What tracing costs a Check: the same pipeline with tracing off (the default) and on.

In one process, two pipelines built by the composition root from the shipped
example (embedded store, a grant for the 2-hop chain dr-alice -> orchestrator
-> scribe, an ES256 token, the in-memory audit sink, no decision cache so
every check runs every phase):

  off   the metrics observer alone, as `lasthop serve` runs by default
  on    the tracing observer in front of it: a span per check with an event per
        phase, every check continuing a sampled W3C traceparent (as behind a
        tracing Envoy), batched and exported over OTLP/gRPC to a collector in
        this process (the export thread's encoding is part of the cost)

Rounds alternate off and on, so that other load on the machine falls on both;
each round times `--checks` checks of each and the result is the ratio of
their mean check times, as median and range over the rounds. Exported spans
are counted, so a run that traced nothing cannot pass for cheap tracing.

    .venv/bin/python benchmarks/tracing_overhead.py [--checks 2000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry

from authz.audit.receipts import Unsigned
from authz.audit.records import Committed, MemoryAudit, Record
from authz.check import keys as jwks
from authz.check.pipeline import Pipeline
from authz.config import IdentitySettings, TracingSettings
from authz.dev.otlp import Collector
from authz.dev.stack import POLICIES
from authz.dev.tokens import DemoIssuer
from authz.model import CheckInput, Grant
from authz.policy import load as policy_load
from authz.server import tracing
from authz.server.app import assemble
from authz.server.metrics import Metrics
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry

TRACEPARENT = "00-{:032x}-00f067aa0ba902b7-01"
PURPOSE = "clinical-documentation"


class Drops(MemoryAudit):
    async def commit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        return Committed(True)


def pipeline(observer: Any, issuer: DemoIssuer, store: EmbeddedGrantStore) -> Pipeline:
    bundle = policy_load.load(POLICIES)
    doc = json.dumps({"keys": [issuer.public_jwk]})
    return assemble(
        ident=IdentitySettings(),
        keys=jwks.StaticKeys(jwks.parse_jwks(doc, ("ES256",), "bench")),
        bundle=bundle,
        registry=SeededRegistry(bundle.agents),
        store=store,
        audit=Drops(),
        observer=observer,
    )


def requests(issuer: DemoIssuer, n: int) -> list[CheckInput]:
    token = issuer.access_token("dr-alice", ["orchestrator", "scribe"], purpose=PURPOSE, ttl=3600)
    base = CheckInput(
        method="GET",
        path="/patients/p-1001/records",
        host="ehr.internal",
        headers={"authorization": [f"Bearer {token}"]},
    )
    return [
        replace(base, request_id=f"req-{i}", traceparent=TRACEPARENT.format(i + 1))
        for i in range(n)
    ]


async def mean_check(p: Pipeline, batch: list[CheckInput]) -> float:
    started = time.perf_counter()
    for req in batch:
        decision = await p.check(req)
        assert decision.allowed, decision.reason
    return (time.perf_counter() - started) / len(batch)


async def measure(checks: int, rounds: int) -> dict[str, Any]:
    issuer = DemoIssuer("ES256", kid="bench-tracing")
    store = EmbeddedGrantStore(time.time)
    now = int(time.time())
    await store.put(
        Grant(
            id="g-bench",
            agent="scribe",
            user="dr-alice",
            actions=("read",),
            resources=('Patient::"p-1001"',),
            purpose=PURPOSE,
            issued_by="bench",
            issued_at=now,
            expires_at=now + 3600,
        )
    )
    collector = Collector()
    settings = TracingSettings(enabled=True, endpoint=collector.endpoint)
    provider = tracing.provider(settings)
    off = pipeline(Metrics(CollectorRegistry()), issuer, store)
    on = pipeline(
        tracing.TracingObserver(Metrics(CollectorRegistry()), provider.get_tracer("bench")),
        issuer,
        store,
    )
    batch = requests(issuer, checks)
    warm = batch[:200]
    await mean_check(off, warm)  # warm both: token cache, Cedar memos
    await mean_check(on, warm)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        times["off"].append(await mean_check(off, batch))
        times["on"].append(await mean_check(on, batch))
    provider.shutdown()
    collector.close()
    ratios = [b / a for a, b in zip(times["off"], times["on"], strict=True)]
    traced = len(warm) + rounds * checks
    return {"times": times, "ratios": ratios, "spans": len(collector.spans), "traced": traced}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    result = asyncio.run(measure(args.checks, args.rounds))
    for mode in ("off", "on"):
        us = [t * 1e6 for t in result["times"][mode]]
        print(
            f"tracing {mode:<3}  mean check {statistics.median(us):7.1f} us "
            f"(median of {args.rounds} rounds; range {min(us):.1f} to {max(us):.1f})"
        )
    ratios = result["ratios"]
    print(
        f"on / off: median {statistics.median(ratios):.2f}, range {min(ratios):.2f} to "
        f"{max(ratios):.2f}; {result['spans']} spans exported"
    )
    expected = (
        (args.rounds + 1) * args.checks if args.checks < 200 else args.rounds * args.checks + 200
    )
    return 0 if result["spans"] == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
