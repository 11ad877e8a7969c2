"""First latency measurement of a Check through Envoy (the full suite is a later issue).

Starts Redis, Lasthop (Redis store, audit on), Envoy and the demo EHR on
loopback; issues a grant; then sends an allowed 2-hop-chain request
(dr-alice -> orchestrator -> scribe) at a fixed offered rate (open loop),
alternating two targets round by round so machine drift cancels:

  upstream   the demo EHR directly (no Envoy)   baseline
  lasthop    Envoy -> Lasthop Check -> EHR

and prints p50/p90/p99 per target and Lasthop's added latency as a ratio
and a difference against the upstream baseline. Bounded: --seconds per round
(default 5) x --rounds (default 3) at --rate req/s (default 200).

    .venv/bin/python benchmarks/check_latency.py [--rate 200] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from authz import devstack
from authz._proto import grants_pb2 as pb
from authz.admin_client import AdminClient
from authz.demo_tokens import DemoIssuer
from authz.demo_upstream import DemoUpstream

PATH = "/patients/p-1001/records"
PURPOSE = "clinical-documentation"


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def open_loop(port: int, raw: bytes, rate: float, seconds: float,
                    connections: int = 8) -> tuple[list[float], dict[int, int]]:
    """Send at a fixed rate over keep-alive connections; latency measured from the schedule."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    total = int(rate * seconds)

    async def fire(due: float) -> None:
        conn = await pool.get()
        status = await _one(*conn, raw)
        latencies.append(time.perf_counter() - due)  # includes queueing: no coordinated omission
        statuses[status] = statuses.get(status, 0) + 1
        pool.put_nowait(conn)

    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(due)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    return latencies, statuses


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write results here")
    args = ap.parse_args()

    with devstack.workdir("lasthop-bench-") as work:
        issuer = DemoIssuer("ES256")
        redis = devstack.RedisServer(work)
        cfg = devstack.write_config(work, issuer.write_jwks(work / "jwks.json"),
                                    redis_url=redis.url)
        upstream = DemoUpstream()
        lasthop = devstack.LasthopServer(cfg)
        envoy = devstack.Envoy(work, lasthop.port, upstream.port)
        try:
            admin = AdminClient(lasthop.ready["admin_listen"], issuer.admin_token())
            admin.issue(pb.IssueGrantRequest(
                agent="scribe", user="dr-alice", actions=["read"],
                resources=['Patient::"p-1001"'], purpose=PURPOSE, ttl_seconds=3600))
            token = issuer.access_token("dr-alice", ["orchestrator", "scribe"], purpose=PURPOSE,
                                        ttl=3600)
            raw = (f"GET {PATH} HTTP/1.1\r\nhost: ehr.local\r\n"
                   f"authorization: Bearer {token}\r\n\r\n").encode()
            targets = {"upstream": upstream.port, "lasthop": envoy.port}
            samples: dict[str, list[float]] = {name: [] for name in targets}
            codes: dict[str, dict[int, int]] = {name: {} for name in targets}
            for _ in range(args.rounds):
                for name, port in targets.items():
                    lat, st = asyncio.run(open_loop(port, raw, args.rate, args.seconds))
                    samples[name].extend(lat)
                    for code, n in st.items():
                        codes[name][code] = codes[name].get(code, 0) + n
        finally:
            envoy.close()
            lasthop.close()
            upstream.close()
            redis.close()

    report = {}
    print(f"\noffered {args.rate:.0f} req/s, {args.rounds} x {args.seconds:.0f} s per target\n")
    print(f"{'target':<10} {'n':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  statuses")
    for name, lat in samples.items():
        row = {"n": len(lat), "p50_ms": pct(lat, 0.5), "p90_ms": pct(lat, 0.9),
               "p99_ms": pct(lat, 0.99), "mean_ms": statistics.fmean(lat) * 1000,
               "statuses": codes[name]}
        report[name] = row
        print(f"{name:<10} {row['n']:>6} {row['p50_ms']:>8.2f} {row['p90_ms']:>8.2f} "
              f"{row['p99_ms']:>8.2f}  {codes[name]}")
    base, ours = report["upstream"], report["lasthop"]
    p50_add, p99_add = ours["p50_ms"] - base["p50_ms"], ours["p99_ms"] - base["p99_ms"]
    print(f"\nEnvoy + Lasthop adds p50 {p50_add:+.2f} ms (x{ours['p50_ms'] / base['p50_ms']:.2f}), "
          f"p99 {p99_add:+.2f} ms (x{ours['p99_ms'] / base['p99_ms']:.2f}) over the upstream alone")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
