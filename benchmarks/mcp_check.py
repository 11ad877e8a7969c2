"""A tool call's Check against a plain GET's, in process, in the same run.

    .venv/bin/python benchmarks/mcp_check.py [--checks 2000] [--rounds 5] [--json PATH]

The server's pipeline (no Envoy, no gRPC: Lasthop's own work) on the hospital
example: dr-alice -> orchestrator -> scribe with a grant on p-1001, asking
for the same chart two ways:

  get   GET /patients/p-1001/records
  mcp   POST /mcp, tools/call get_patient_record {"patient_id": "p-1001"}, the
        whole body as Envoy sends it, a new JSON-RPC id on every call

Two regimes, each as the server runs it: `warm` (token, entity and Cedar
memos on; the body is parsed on every call all the same) and `cold` (every
memo cleared before each check). The two kinds alternate check by check,
so machine drift lands on both alike; the ratio is per round, and the report gives
its median and range over the rounds. `parse` is the body's own cost (read,
check and resolve the JSON-RPC), measured alone.
Target: p50(mcp) <= 1.2 x p50(get), in both regimes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from pathlib import Path
from typing import Any

from report import paired_rounds

from authz.audit.records import NullAudit
from authz.check import keys as jwks
from authz.check import mcp
from authz.check.pipeline import Pipeline
from authz.config import IdentitySettings
from authz.dev.tokens import DemoIssuer
from authz.model import CheckInput, Grant
from authz.policy import load as policy_load
from authz.server.app import assemble
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry

ROOT = Path(__file__).resolve().parent.parent
PURPOSE = "clinical-documentation"
TARGET = 1.2


def build(issuer: DemoIssuer) -> Pipeline:
    bundle = policy_load.load(ROOT / "policies")
    keys = jwks.StaticKeys(
        jwks.parse_jwks(json.dumps({"keys": [issuer.public_jwk]}), ("ES256",), "bench")
    )
    store = EmbeddedGrantStore(time.time)
    now = int(time.time())
    grant = Grant(
        id="g-bench", agent="scribe", user="dr-alice", actions=("read",),
        resources=('Patient::"p-1001"',), purpose=PURPOSE, issued_by="bench",
        issued_at=now, expires_at=now + 3600,
    )  # fmt: skip
    asyncio.run(store.put(grant))
    return assemble(
        ident=IdentitySettings(),
        keys=keys,
        bundle=bundle,
        registry=SeededRegistry(bundle.agents),
        store=store,
        audit=NullAudit(),
    )


class Requests:
    """The two requests; every tool call gets a new JSON-RPC id, as a client sends it."""

    def __init__(self, token: str) -> None:
        self.headers = {"authorization": [f"Bearer {token}"]}
        self.n = 0

    def get(self) -> CheckInput:
        return CheckInput("GET", "/patients/p-1001/records", "ehr", self.headers)

    def mcp(self) -> CheckInput:
        self.n += 1
        body = mcp.call_body("get_patient_record", {"patient_id": "p-1001"}, self.n)
        return CheckInput.with_body(
            body, method="POST", path="/mcp", host="ehr", headers=self.headers
        )


def samples(p: Pipeline, requests: Requests, checks: int, cold: bool) -> dict[str, list[float]]:
    """`checks` of each kind, GET and tool call alternating, so noise lands on both alike."""

    async def go() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"get": [], "mcp": []}
        for _ in range(checks):
            for kind in ("get", "mcp"):
                request = requests.get() if kind == "get" else requests.mcp()
                if cold:
                    p.bundle = p.bundle  # a new policy engine: its memos start empty
                    p.verifier.forget()
                started = time.perf_counter()
                decision = await p.check(request)
                out[kind].append(time.perf_counter() - started)
                if not decision.allowed:
                    raise RuntimeError(f"benchmark request denied: {decision.reason}")
        return out

    gc.collect()
    return asyncio.run(go())


def parse_p50(requests: Requests, p: Pipeline, checks: int) -> float:
    endpoint = p.bundle.routes.mcp["/mcp"]
    out = []
    for _ in range(checks):
        request = requests.mcp()
        started = time.perf_counter()
        endpoint.resolve(*mcp.read(request, endpoint.max_body_bytes, endpoint.max_depth))
        out.append(time.perf_counter() - started)
    return statistics.median(out) * 1e6


def run(checks: int, rounds: int) -> dict[str, Any]:
    issuer = DemoIssuer("ES256", kid="bench-mcp")
    token = issuer.access_token("dr-alice", ["orchestrator", "scribe"], purpose=PURPOSE, ttl=3600)
    pipeline = build(issuer)
    requests = Requests(token)
    samples(pipeline, requests, 200, cold=False)  # warm up both paths
    report: dict[str, Any] = {"checks": checks, "rounds": rounds, "target": TARGET}
    report |= paired_rounds(
        lambda cold: samples(pipeline, requests, checks, cold), "get", "mcp", rounds
    )
    report["parse_p50_us"] = parse_p50(requests, pipeline, checks)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args.checks, args.rounds)
    for regime in ("warm", "cold"):
        r = report[regime]
        verdict = "meets" if r["ratio_median"] <= TARGET else "MISSES"
        print(
            f"{regime}: GET p50 {r['get_p50_us']:.1f} µs, tool call p50 {r['mcp_p50_us']:.1f} µs; "
            f"ratio median x{r['ratio_median']:.3f} (range {r['ratio_min']:.3f}-"
            f"{r['ratio_max']:.3f} over {args.rounds} rounds) {verdict} the x{TARGET} target"
        )
    share = report["parse_p50_us"] / report["warm"]["mcp_p50_us"]
    print(
        f"body parse + resolve alone: p50 {report['parse_p50_us']:.1f} µs "
        f"({share:.0%} of a warm tool call's Check)"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
