"""Lasthop's benchmark suite: Envoy alone, the Python floor, and Lasthop, interleaved in one run.

    .venv/bin/python benchmarks/run.py [--seconds 5] [--rounds 3] [--rates 200,400,800,1000]
                                       [--out benchmarks/results/NAME] [--smoke]

Starts on loopback: Redis; Lasthop (Redis store with a grant for the
hospital example's 2-hop chain dr-alice -> orchestrator -> scribe, audit on,
RS256 and ES256 tokens alternating); the no-op Python ext_authz
(benchmarks/noop_authz.py); and three Envoys answering 200 themselves.
Lasthop's audit trail runs with --fsync (default 50ms) and signed receipts:

  envoy    no ext_authz
  floor    ext_authz -> the no-op Python server
  lasthop  ext_authz -> Lasthop

Each measurement visits the three targets in turn, round after round, so
machine drift lands on all of them alike. Per target: maximum throughput
(closed loop), p50/p90/p99/p99.9 at each offered rate (open loop), the
server's CPU per check, and its RSS. Writes report.md, results.json and
latency.png (latency against offered rate) to --out, and prints the report.
Everything is bounded: rounds x targets x (closed + rates) x seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import envoy_config
import loadgen

from authz._proto import grants_pb2 as pb
from authz.cli.admin_client import AdminClient
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer

HERE = Path(__file__).resolve().parent
PATH = "/patients/p-1001/records"
PURPOSE = "clinical-documentation"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Target:
    name: str
    port: int
    server_pid: int  # the process whose CPU and RSS we report (Envoy for `envoy`)
    envoy_pid: int
    closed: list[loadgen.Result] = field(default_factory=list)
    cpu_per_check_us: list[float] = field(default_factory=list)
    envoy_cpu_per_check_us: list[float] = field(default_factory=list)
    open: dict[float, list[loadgen.Result]] = field(default_factory=dict)
    rss: float = 0.0


class Stack:
    """Every process of the run; `close()` stops them all."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[Any]] = []
        self.closers: list[Any] = []

    def envoy(self, name: str, authz_ports: list[int] | None) -> tuple[int, int]:
        port, admin = devstack.free_port(), devstack.free_port()
        config = envoy_config.write(self.work / f"envoy-{name}.json", port, admin, authz_ports)
        proc = subprocess.Popen(
            [
                devstack.venv_binary("envoy"),
                "-c",
                str(config),
                "--disable-hot-restart",
                "--log-level",
                "error",
                "--concurrency",
                "1",
                "--base-id",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=0.5):
                    return port, proc.pid
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"envoy `{name}` did not start")

    def noop(self) -> tuple[int, int]:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "noop_authz.py"), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("noop ready"):
            raise RuntimeError("noop ext_authz did not start")
        return int(line.split()[2]), proc.pid

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for closer in reversed(self.closers):
            closer()


def measure_closed(target: Target, raws: list[bytes], seconds: float) -> None:
    before, envoy_before = cpu_seconds(target.server_pid), cpu_seconds(target.envoy_pid)
    result = asyncio.run(loadgen.closed_loop(target.port, raws, seconds))
    n = max(1, len(result.latencies))
    target.closed.append(result)
    target.cpu_per_check_us.append((cpu_seconds(target.server_pid) - before) / n * 1e6)
    target.envoy_cpu_per_check_us.append((cpu_seconds(target.envoy_pid) - envoy_before) / n * 1e6)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rates = [float(r) for r in args.rates.split(",")]
    with devstack.workdir("lasthop-bench-") as work:
        stack = Stack(work)
        try:
            es, rs = DemoIssuer("ES256", kid="bench-es"), DemoIssuer("RS256", kid="bench-rs")
            jwks = work / "jwks.json"
            jwks.write_text(json.dumps({"keys": [es.public_jwk, rs.public_jwk]}))
            redis = devstack.RedisServer(work)
            stack.closers.append(redis.close)
            lasthop = devstack.LasthopServer(
                devstack.write_config(work, jwks, redis_url=redis.url),
                env={"LASTHOP_AUDIT_FSYNC": args.fsync},
            )
            stack.closers.append(lasthop.close)
            admin = AdminClient(lasthop.ready["admin_listen"], es.admin_token())
            admin.issue(
                pb.IssueGrantRequest(
                    agent="scribe",
                    user="dr-alice",
                    actions=["read"],
                    resources=['Patient::"p-1001"'],
                    purpose=PURPOSE,
                    ttl_seconds=3600,
                )
            )
            noop_port, noop_pid = stack.noop()
            targets = []
            for name, ports, pid in (
                ("envoy", None, None),
                ("floor", [noop_port], noop_pid),
                ("lasthop", [lasthop.port], lasthop.proc.pid),
            ):
                port, envoy_pid = stack.envoy(name, ports)
                targets.append(Target(name, port, pid or envoy_pid, envoy_pid))
            raws = [
                loadgen.request_bytes(
                    PATH,
                    issuer.access_token(
                        "dr-alice", ["orchestrator", "scribe"], purpose=PURPOSE, ttl=3600
                    ),
                )
                for issuer in (es, rs)
            ]
            for target in targets:  # warm up, and prove every target allows
                warm = asyncio.run(loadgen.closed_loop(target.port, raws, 1.0, connections=4))
                if set(warm.statuses) != {200}:
                    raise RuntimeError(f"{target.name} answered {warm.statuses} in warm-up")
            for _ in range(args.rounds):
                for target in targets:
                    measure_closed(target, raws, args.seconds)
            for rate in rates:
                for _ in range(args.rounds):
                    for target in targets:
                        result = asyncio.run(
                            loadgen.open_loop(target.port, raws, rate, args.seconds)
                        )
                        target.open.setdefault(rate, []).append(result)
            for target in targets:
                target.rss = rss_mb(target.server_pid)
        finally:
            stack.close()
    return summarise(targets, rates, args)


def _merged(results: list[loadgen.Result]) -> loadgen.Result:
    merged = loadgen.Result(seconds=sum(r.seconds for r in results))
    for r in results:
        merged.latencies.extend(r.latencies)
        merged.errors += r.errors
        for code, n in r.statuses.items():
            merged.statuses[code] = merged.statuses.get(code, 0) + n
    return merged


def summarise(
    targets: list[Target], rates: list[float], args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "rates": rates,
            "fsync": args.fsync,
        },
        "targets": {},
    }
    for t in targets:
        closed = _merged(t.closed)
        entry: dict[str, Any] = {
            "max_throughput_rps": statistics.median(r.throughput for r in t.closed),
            "closed_p50_ms": closed.percentile(0.5),
            "closed_p99_ms": closed.percentile(0.99),
            "server_cpu_per_check_us": statistics.median(t.cpu_per_check_us),
            "envoy_cpu_per_check_us": statistics.median(t.envoy_cpu_per_check_us),
            "rss_mb": round(t.rss, 1),
            "statuses": closed.statuses,
            "errors": closed.errors,
            "open_loop": {},
        }
        for rate in rates:
            merged = _merged(t.open[rate])
            entry["open_loop"][str(int(rate))] = {
                "n": len(merged.latencies),
                **{
                    f"p{label}_ms": merged.percentile(q)
                    for label, q in (("50", 0.5), ("90", 0.9), ("99", 0.99), ("99.9", 0.999))
                },
                "statuses": merged.statuses,
                "errors": merged.errors,
            }
        out["targets"][t.name] = entry
    floor, ours = out["targets"]["floor"], out["targets"]["lasthop"]
    out["ratios"] = {
        "throughput_lasthop_over_floor": ours["max_throughput_rps"] / floor["max_throughput_rps"],
        "throughput_target": 0.80,
    }
    at = "400" if "400" in ours["open_loop"] else str(int(rates[0]))
    out["ratios"][f"p99_at_{at}_minus_floor_ms"] = (
        ours["open_loop"][at]["p99_ms"] - floor["open_loop"][at]["p99_ms"]
    )
    out["ratios"]["p99_budget_ms"] = 1.0
    return out


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Lasthop benchmark",
        "",
        f"{results['machine']['cpus']} CPUs, Python {results['machine']['python']}; "
        f"{results['settings']['rounds']} rounds x {results['settings']['seconds']} s per "
        f"measurement, targets interleaved; Lasthop on Redis with audit.fsync = "
        f"{results['settings']['fsync']} and receipts on.",
        "",
        "| target | max req/s | server CPU/check | Envoy CPU/check | RSS |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, t in results["targets"].items():
        lines.append(
            f"| {name} | {t['max_throughput_rps']:.0f} | "
            f"{t['server_cpu_per_check_us']:.0f} µs | "
            f"{t['envoy_cpu_per_check_us']:.0f} µs | {t['rss_mb']:.0f} MB |"
        )
    lines += [
        "",
        "| target | offered req/s | p50 | p90 | p99 | p99.9 | non-200 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rate in results["settings"]["rates"]:
        for name, t in results["targets"].items():
            o = t["open_loop"][str(int(rate))]
            bad = sum(n for code, n in o["statuses"].items() if int(code) != 200) + o["errors"]
            lines.append(
                f"| {name} | {int(rate)} | {o['p50_ms']:.2f} ms | {o['p90_ms']:.2f} ms | "
                f"{o['p99_ms']:.2f} ms | {o['p99.9_ms']:.2f} ms | {bad} |"
            )
    r = results["ratios"]
    p99_key = next(k for k in r if k.startswith("p99_at_"))
    lines += [
        "",
        "| target | measured | holds |",
        "| --- | ---: | --- |",
        f"| throughput, Lasthop / floor >= 0.80 | {r['throughput_lasthop_over_floor']:.2f} | "
        f"{'yes' if r['throughput_lasthop_over_floor'] >= 0.8 else 'NO'} |",
        f"| p99 {p99_key.split('_')[2]} req/s, Lasthop - floor <= 1.0 ms | "
        f"{r[p99_key]:+.2f} ms | {'yes' if r[p99_key] <= 1.0 else 'NO'} |",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rates = results["settings"]["rates"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, t in results["targets"].items():
        for q, style in (("p50", "-"), ("p99", "--")):
            ax.plot(
                rates,
                [t["open_loop"][str(int(r))][f"{q}_ms"] for r in rates],
                style,
                marker="o",
                label=f"{name} {q}",
            )
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency against offered load, through Envoy")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rates", default="200,400,800,1000")
    ap.add_argument("--out", type=Path, default=HERE / "results" / time.strftime("%Y%m%d-%H%M%S"))
    ap.add_argument(
        "--fsync", default="50ms", help="Lasthop's audit.fsync for the run (always, or e.g. 50ms)"
    )
    ap.add_argument("--smoke", action="store_true", help="tiny run: checks the harness works")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.rounds, args.rates = 0.5, 1, "100"
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    text = report(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "report.md").write_text(text)
    plotted = plot(results, args.out / "latency.png")
    print(text)
    print(f"written to {args.out}" + ("" if plotted else " (no plot: pip install matplotlib)"))


if __name__ == "__main__":
    main()
