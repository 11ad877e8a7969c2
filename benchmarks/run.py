"""Lasthop's benchmark suite: Envoy alone, the Python floors and Lasthop, interleaved in one run.

    .venv/bin/python benchmarks/run.py [--rounds 3] [--seconds 5] [--open-seconds 10]
        [--rates 200,400,800,1000] [--targets envoy,floor,floor-threads,lasthop,lasthop-50ms]
        [--connections 16] [--out benchmarks/results/NAME] [--smoke]

Starts on loopback: Redis; each target behind its own Envoy (which answers 200
itself once ext_authz allows, so no upstream muddies the figures); a loopback
load generator. Targets (`--targets`, from `TARGETS` below):

  envoy           Envoy alone, no ext_authz
  floor           a no-op grpc.aio ext_authz: the floor every target is a ratio to
  floor-threads   the fastest no-op Python ext_authz we could build with grpcio (threaded
                  server, bytes in and out): the honest floor
  lasthop         Lasthop as installed: its default configuration (fsync `always`,
                  receipts on), Redis store, the hospital example's 2-hop chain
  lasthop-50ms    the same with `audit.fsync = "50ms"`
  ...             and the variants in `TARGETS` (other server fronts, receipts off, workers)

Every round visits every target in turn, in a rotated order, so machine drift
lands on all of them alike: maximum throughput (closed loop, `--connections`),
with each process's CPU per check (its main thread, its other threads, Envoy);
then latency at each offered rate (open loop, measured from the schedule, so a
stall is latency, not fewer requests); and the fsync time of the disk under
Lasthop's audit trail. Then chain depth 1 to 4 in process, uncached.

Prints the targets with their measured figures (median and range over rounds)
and writes report.md, results.json and latency.png to --out. Everything is
bounded: rounds x targets x (closed + rates) x seconds; the defaults take
about 8 minutes (7 min 46 s measured on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import disk
import envoy_config
import loadgen
import procstat
import report
import scaling

from authz._proto import grants_pb2 as pb
from authz.cli.admin_client import AdminClient
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.policy import load as policy_load

HERE = Path(__file__).resolve().parent
PATH = "/patients/p-1001/records"
PURPOSE = "clinical-documentation"
CHAIN = ["orchestrator", "scribe"]
DEFAULT_TARGETS = "envoy,floor,floor-threads,lasthop,lasthop-50ms"
ANY_METRICS_PORT = ("LASTHOP_SERVER_METRICS_LISTEN", "127.0.0.1:0")  # workers: each its own


@dataclass(frozen=True)
class Spec:
    """One target: what runs behind its Envoy."""

    kind: str  # envoy | noop | lasthop
    label: str
    env: tuple[tuple[str, str], ...] = ()  # Lasthop: LASTHOP_* overrides
    serve_args: tuple[str, ...] = ()  # Lasthop: extra `lasthop serve` arguments
    noop_threads: int = 0  # the no-op: 0 grpc.aio, N threaded
    open_loop: bool = True


TARGETS = {
    "envoy": Spec("envoy", "Envoy alone", open_loop=False),
    "floor": Spec("noop", "no-op grpc.aio ext_authz (the floor)"),
    "floor-threads": Spec(
        "noop", "no-op threaded ext_authz, bytes (honest floor)", noop_threads=16, open_loop=False
    ),
    "lasthop": Spec("lasthop", "Lasthop, defaults: fsync always, receipts on"),
    "lasthop-50ms": Spec(
        "lasthop", "Lasthop, fsync 50ms, receipts on", env=(("LASTHOP_AUDIT_FSYNC", "50ms"),)
    ),
    "lasthop-aio": Spec(
        "lasthop", "Lasthop on grpc.aio, defaults", env=(("LASTHOP_SERVER_THREADS", "0"),)
    ),
    "lasthop-aio-50ms": Spec(
        "lasthop",
        "Lasthop on grpc.aio, fsync 50ms",
        env=(("LASTHOP_SERVER_THREADS", "0"), ("LASTHOP_AUDIT_FSYNC", "50ms")),
    ),
    "lasthop-workers2": Spec(
        "lasthop",
        "Lasthop, 2 worker processes, defaults",
        env=(ANY_METRICS_PORT,),
        serve_args=("--workers", "2"),
    ),
    "lasthop-workers2-50ms": Spec(
        "lasthop",
        "Lasthop, 2 worker processes, fsync 50ms",
        env=(ANY_METRICS_PORT, ("LASTHOP_AUDIT_FSYNC", "50ms")),
        serve_args=("--workers", "2"),
    ),
    "lasthop-nodetect": Spec(
        "lasthop", "Lasthop, defaults without detection", env=(("LASTHOP_DETECT_ENABLED", "false"),)
    ),
    "lasthop-noreceipts": Spec(
        "lasthop", "Lasthop, fsync always, receipts off", env=(("LASTHOP_AUDIT_RECEIPTS", "false"),)
    ),
    "lasthop-50ms-noreceipts": Spec(
        "lasthop",
        "Lasthop, fsync 50ms, receipts off",
        env=(("LASTHOP_AUDIT_FSYNC", "50ms"), ("LASTHOP_AUDIT_RECEIPTS", "false")),
    ),
}


@dataclass
class Target:
    name: str
    spec: Spec
    port: int  # its Envoy's listener
    server_pid: int  # whose CPU counts as the server's (Envoy's own for `envoy`)
    envoy_pid: int
    audit_dir: Path | None = None
    closed: list[dict[str, Any]] = field(default_factory=list)
    open: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


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
            [devstack.venv_binary("envoy"), "-c", str(config), "--disable-hot-restart"]
            + ["--log-level", "error", "--concurrency", "1", "--base-id", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=0.5):
                    return port, proc.pid
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"envoy `{name}` did not start")

    def noop(self, threads: int) -> tuple[int, int]:
        command = [sys.executable, str(HERE / "noop_authz.py"), "--port", "0"]
        proc = subprocess.Popen(
            [*command, "--threads", str(threads)], stdout=subprocess.PIPE, text=True
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("noop ready"):
            raise RuntimeError("noop ext_authz did not start")
        return int(line.split()[2]), proc.pid

    def lasthop(
        self, name: str, spec: Spec, jwks: Path, redis_url: str
    ) -> tuple[devstack.LasthopServer, Path]:
        work = self.work / name
        work.mkdir()
        config = devstack.write_config(work, jwks, redis_url=redis_url)
        command = [sys.executable, "-m", "authz", "serve", *spec.serve_args]
        server = devstack.LasthopServer(config, env=dict(spec.env), command=command)
        self.closers.append(server.close)
        return server, work / "audit"

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


def start(
    stack: Stack, names: list[str], jwks: Path, redis_url: str, issuer: DemoIssuer
) -> list[Target]:
    targets, granted = [], False
    for name in names:
        spec = TARGETS[name]
        server_pid, audit_dir, ports = 0, None, None
        if spec.kind == "noop":
            port, server_pid = stack.noop(spec.noop_threads)
            ports = [port]
        elif spec.kind == "lasthop":
            server, audit_dir = stack.lasthop(name, spec, jwks, redis_url)
            server_pid, ports = server.proc.pid, [server.port]
            if not granted:  # every Lasthop reads the same Redis
                issue_grant(server.ready["admin_listen"], issuer)
                granted = True
        port, envoy_pid = stack.envoy(name, ports)
        targets.append(Target(name, spec, port, server_pid or envoy_pid, envoy_pid, audit_dir))
    return targets


def issue_grant(admin_listen: str, issuer: DemoIssuer) -> None:
    admin = AdminClient(admin_listen, issuer.admin_token())
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
    admin.close()


def closed_round(target: Target, raws: list[bytes], seconds: float, connections: int) -> None:
    server, envoy = procstat.cpu(target.server_pid), procstat.cpu(target.envoy_pid)
    result = asyncio.run(loadgen.closed_loop(target.port, raws, seconds, connections))
    server, envoy = procstat.cpu(target.server_pid) - server, procstat.cpu(target.envoy_pid) - envoy
    n = max(1, len(result.latencies))
    target.closed.append(
        {
            "rps": result.throughput,
            "main_us": server.main / n * 1e6,
            "other_us": server.other / n * 1e6,
            "envoy_us": envoy.total / n * 1e6,
            "statuses": result.statuses,
            "errors": result.errors,
        }
    )


def open_round(target: Target, raws: list[bytes], rate: float, seconds: float) -> None:
    result = asyncio.run(loadgen.open_loop(target.port, raws, rate, seconds))
    target.open.setdefault(str(int(rate)), []).append(
        {
            "latencies": result.latencies,
            "statuses": result.statuses,
            "errors": result.errors,
        }
    )


def warm_up(target: Target, raws: list[bytes], tries: int = 5) -> None:
    """Warm each target up until a whole second is all 200s: every target must allow.

    A first check can outlast Envoy's 250 ms timeout on a busy machine (a 503 then)."""
    statuses: dict[int, int] = {}
    for _ in range(tries):
        statuses = asyncio.run(loadgen.closed_loop(target.port, raws, 1.0, connections=4)).statuses
        if set(statuses) == {200}:
            return
    raise RuntimeError(f"{target.name} answered {statuses} in its last warm-up second")


def rotated(items: list[Target], by: int) -> list[Target]:
    by %= len(items)
    return items[by:] + items[:by]


def requests(issuers: list[DemoIssuer]) -> list[bytes]:
    """The allowed request, with tokens from each issuer in turn (ES256 and RS256)."""
    return [
        loadgen.request_bytes(PATH, i.access_token("dr-alice", CHAIN, purpose=PURPOSE, ttl=3600))
        for i in issuers
    ]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rates = [float(r) for r in args.rates.split(",")]
    names = args.targets.split(",")
    with devstack.workdir("lasthop-bench-") as work:
        stack = Stack(work)
        try:
            issuers = [DemoIssuer("ES256", kid="bench-es"), DemoIssuer("RS256", kid="bench-rs")]
            jwks = work / "jwks.json"
            jwks.write_text(json.dumps({"keys": [i.public_jwk for i in issuers]}))
            redis = devstack.RedisServer(work)
            stack.closers.append(redis.close)
            targets = start(stack, names, jwks, redis.url, issuers[0])
            raws = requests(issuers)
            for target in targets:
                warm_up(target, raws)
            fsync = rounds(args, targets, raws, rates)
            depth = chain_depth(args, redis.url)
            rss = {t.name: procstat.rss_mb(t.server_pid) for t in targets}
        finally:
            stack.close()
    return report.summarise(targets, fsync, depth, rss, rates, settings(args, rates))


def rounds(
    args: argparse.Namespace, targets: list[Target], raws: list[bytes], rates: list[float]
) -> list[list[float]]:
    """Every round: closed loop on each target, the fsync probe, open loop at each rate."""
    probe_dir = next((t.audit_dir for t in targets if t.audit_dir is not None), None)
    fsync: list[list[float]] = []
    for n in range(args.rounds):
        for target in rotated(targets, n):
            closed_round(target, raws, args.seconds, args.connections)
        if probe_dir is not None:
            fsync.append(disk.probe(probe_dir, args.fsync_probes))
        for rate in rates:
            for target in rotated([t for t in targets if t.spec.open_loop], n):
                open_round(target, raws, rate, args.open_seconds)
        print(f"round {n + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    return fsync


def chain_depth(args: argparse.Namespace, redis_url: str) -> list[list[float]]:
    """p50 (µs) at depth 1 to 4, uncached, in process, once per round."""
    bundle = policy_load.load(devstack.POLICIES)
    issuer = DemoIssuer("ES256", kid="bench-depth")
    points = []
    for _ in range(args.rounds):
        curve = scaling.depth_curve(bundle, issuer, args.depth_checks, redis_url)
        points.append([p["p50_us"] for p in curve["points"]])
    return points


def settings(args: argparse.Namespace, rates: list[float]) -> dict[str, Any]:
    return {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "open_seconds": args.open_seconds,
        "connections": args.connections,
        "rates": rates,
        "targets": args.targets.split(","),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="per closed-loop measurement")
    ap.add_argument("--open-seconds", type=float, default=10.0, help="per rate and target")
    ap.add_argument("--rates", default="200,400,800,1000")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help=f"from: {', '.join(TARGETS)}")
    ap.add_argument("--connections", type=int, default=16, help="closed loop")
    ap.add_argument("--fsync-probes", type=int, default=200, help="per round")
    ap.add_argument("--depth-checks", type=int, default=500, help="per depth and round")
    ap.add_argument("--out", type=Path, default=HERE / "results" / time.strftime("%Y%m%d-%H%M%S"))
    ap.add_argument("--smoke", action="store_true", help="tiny run: checks the harness works")
    args = ap.parse_args()
    unknown = [n for n in args.targets.split(",") if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target `{unknown[0]}`; choose from {', '.join(TARGETS)}")
    if args.smoke:
        args.rounds, args.seconds, args.open_seconds, args.rates = 1, 0.5, 0.5, "100"
        args.fsync_probes, args.depth_checks = 10, 20
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = measure(args)
    results["settings"]["minutes"] = round((time.monotonic() - started) / 60, 1)
    text = report.render(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "report.md").write_text(text)
    plotted = report.plot(results, args.out / "latency.png")
    print(text)
    print(f"written to {args.out}" + ("" if plotted else " (no plot: pip install matplotlib)"))


if __name__ == "__main__":
    main()
