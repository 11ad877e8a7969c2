"""What the audit path costs a Check: the same server with and without it, in the same run.

Starts the demo EHR and three Lasthop servers (embedded grant store) from the
same code and policies:

  off        benchmarks/serve_without_audit.py: records discarded, no receipts
  50ms       `audit.fsync = "50ms"`: trail, checkpoints, receipts   (the target's setting)
  always     `audit.fsync = "always"`: each Check waits for its fsync (group commit)

and sends an allowed 2-hop-chain request (dr-alice -> orchestrator -> scribe)
at a fixed offered rate (open loop, latency measured from the schedule), two ways:

  grpc       straight to Lasthop's ext_authz Check, as Envoy calls it
  envoy      through Envoy to the demo EHR, as an application sees it

Variants and ways alternate round by round so that drift cancels. It prints
p50/p90/p99 per variant and way, Lasthop's own mean Check time (from its
`lasthop_check_duration_seconds` sum and count, which includes building,
signing and handing over the record), and the audit overhead at p50 as a
ratio of the `off` median. Target: at most 10 % at 400 req/s with fsync 50ms.
Bounded: --rounds x --seconds per variant and way at --rate.

    .venv/bin/python benchmarks/audit_overhead.py [--rate 400] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from check_latency import open_loop, pct
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc

from authz import devstack
from authz._proto import grants_pb2
from authz.admin_client import AdminClient
from authz.demo_tokens import DemoIssuer
from authz.demo_upstream import DemoUpstream

PATH = "/patients/p-1001/records"
PURPOSE = "clinical-documentation"
TARGET = 0.10
VARIANTS = {
    "off": "",
    "50ms": 'fsync = "50ms"\n',
    "always": 'fsync = "always"\n',
}
BASELINE_SERVER = Path(__file__).resolve().parent / "serve_without_audit.py"


async def grpc_open_loop(port: int, request: pb.CheckRequest, rate: float,
                         seconds: float) -> tuple[list[float], dict[int, int]]:
    """Check calls at a fixed rate over one HTTP/2 channel; latency from the schedule."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.AuthorizationStub(channel)
        await stub.Check(request)  # connect first

        async def fire(due: float) -> None:
            response = await stub.Check(request, timeout=5)
            latencies.append(time.perf_counter() - due)
            code = 200 if response.HasField("ok_response") else \
                response.denied_response.status.code
            codes[code] = codes.get(code, 0) + 1

        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire(due)))
        await asyncio.gather(*tasks)
    return latencies, codes


def check_seconds(metrics: str) -> tuple[float, int]:
    """(sum, count) of lasthop_check_duration_seconds from the metrics listener."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = float(re.search(r"^lasthop_check_duration_seconds_sum (\S+)$", text, re.M)[1])  # type: ignore[index]
    count = float(re.search(r"^lasthop_check_duration_seconds_count (\S+)$", text, re.M)[1])  # type: ignore[index]
    return total, int(count)


class Target:
    def __init__(self, name: str, work: Path, issuer: DemoIssuer, jwks: Path,
                 upstream: DemoUpstream) -> None:
        work.mkdir()
        self.name = name
        config = devstack.write_config(work, jwks, extra=VARIANTS[name])
        command = [sys.executable, str(BASELINE_SERVER)] if name == "off" else None
        self.lasthop = devstack.LasthopServer(config, command=command)
        self.envoy = devstack.Envoy(work, self.lasthop.port, upstream.port)
        admin = AdminClient(self.lasthop.ready["admin_listen"], issuer.admin_token())
        admin.issue(grants_pb2.IssueGrantRequest(
            agent="scribe", user="dr-alice", actions=["read"],
            resources=['Patient::"p-1001"'], purpose=PURPOSE, ttl_seconds=3600))
        admin.close()
        self.server_time: list[tuple[float, int]] = []

    def close(self) -> None:
        self.envoy.close()
        self.lasthop.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=400.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ways", default="grpc,envoy")
    ap.add_argument("--json", type=Path, help="also write results here")
    args = ap.parse_args()
    ways = args.ways.split(",")

    with devstack.workdir("lasthop-bench-audit-") as work:
        issuer = DemoIssuer("ES256")
        jwks = issuer.write_jwks(work / "jwks.json")
        upstream = DemoUpstream()
        targets: list[Target] = []
        try:
            for name in VARIANTS:
                targets.append(Target(name, work / name, issuer, jwks, upstream))
            token = issuer.access_token("dr-alice", ["orchestrator", "scribe"],
                                        purpose=PURPOSE, ttl=3600)
            check = pb.CheckRequest()
            check.attributes.request.http.method = "GET"
            check.attributes.request.http.path = PATH
            check.attributes.request.http.host = "ehr.local"
            check.attributes.request.http.headers["authorization"] = f"Bearer {token}"
            raw = (f"GET {PATH} HTTP/1.1\r\nhost: ehr.local\r\n"
                   f"authorization: Bearer {token}\r\n\r\n").encode()
            samples = {(t.name, w): [] for t in targets for w in ways}  # type: ignore[var-annotated]
            codes: dict[tuple[str, str], dict[int, int]] = {k: {} for k in samples}
            server: dict[str, list[float]] = {t.name: [0.0, 0.0] for t in targets}
            for target in targets:  # warm up: connections, caches; not measured
                asyncio.run(grpc_open_loop(target.lasthop.port, check, args.rate, 1.0))
                asyncio.run(open_loop(target.envoy.port, raw, args.rate, 1.0))
            for _ in range(args.rounds):
                for target in targets:
                    for way in ways:
                        before = check_seconds(target.lasthop.ready["metrics_listen"])
                        if way == "grpc":
                            lat, st = asyncio.run(grpc_open_loop(
                                target.lasthop.port, check, args.rate, args.seconds))
                        else:
                            lat, st = asyncio.run(open_loop(
                                target.envoy.port, raw, args.rate, args.seconds))
                        after = check_seconds(target.lasthop.ready["metrics_listen"])
                        server[target.name][0] += after[0] - before[0]
                        server[target.name][1] += after[1] - before[1]
                        samples[(target.name, way)].extend(lat)
                        for code, n in st.items():
                            codes[(target.name, way)][code] = codes[(target.name, way)].get(
                                code, 0) + n
        finally:
            for target in targets:
                target.close()
            upstream.close()
    report(args, ways, samples, codes, server)


def report(args: argparse.Namespace, ways: list[str],
           samples: dict[tuple[str, str], list[float]],
           codes: dict[tuple[str, str], dict[int, int]],
           server: dict[str, list[float]]) -> None:
    print(f"\noffered {args.rate:.0f} req/s, {args.rounds} x {args.seconds:.0f} s per variant "
          "and way\n")
    print(f"{'variant':<8} {'way':<6} {'n':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  "
          "statuses")
    result: dict[str, object] = {}
    for (name, way), lat in samples.items():
        row = {"n": len(lat), "p50_ms": pct(lat, 0.5), "p90_ms": pct(lat, 0.9),
               "p99_ms": pct(lat, 0.99), "statuses": codes[(name, way)]}
        result[f"{name}/{way}"] = row
        print(f"{name:<8} {way:<6} {row['n']:>6} {row['p50_ms']:>8.3f} {row['p90_ms']:>8.3f} "
              f"{row['p99_ms']:>8.3f}  {codes[(name, way)]}")
    print("\nLasthop's own mean Check time (lasthop_check_duration_seconds sum / count):")
    means = {name: total / count * 1e6 for name, (total, count) in server.items() if count}
    for name, mean in means.items():
        print(f"  {name:<8} {mean:8.1f} us")
    result["server_mean_us"] = means
    print()
    verdicts = []
    for way in ways:
        base = pct(samples[("off", way)], 0.5)
        for name in ("50ms", "always"):
            ours = pct(samples[(name, way)], 0.5)
            ratio = (ours - base) / base
            result[f"overhead_p50/{name}/{way}"] = ratio
            mark = "target" if name == "50ms" else "info"
            ok = ratio <= TARGET
            if name == "50ms":
                verdicts.append(ok)
            print(f"audit fsync={name:<6} via {way:<5}: p50 {base:.3f} -> {ours:.3f} ms, "
                  f"{(ours - base) * 1000:+.0f} us = {ratio:+.1%} of the off median"
                  f"{'  (' + ('ok' if ok else 'OVER') + f' vs {TARGET:.0%} ' + mark + ')'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"\n{'PASS' if all(verdicts) else 'FAIL'}: audit overhead at p50 with fsync 50ms "
          f"{'within' if all(verdicts) else 'above'} {TARGET:.0%} of the Check median")


if __name__ == "__main__":
    main()
