"""How long a revocation and a suspension take to reach every replica (issue 4: target
100 ms, bound 1 s).

    .venv/bin/python benchmarks/revocation_latency.py [--replicas 3] [--rounds 30]
                                                      [--cache-ttl-ms 5000] [--json PATH]
                                                      [--blackhole]

Starts on loopback one Redis and --replicas Lasthop processes sharing it, each with
its local caches on (`store.cache_ttl_ms`, default 5000: a stale entry would live
5 s, so every early deny below is the pub/sub invalidation at work). No Envoy: one
thread per replica calls that replica's ext_authz `Check` over gRPC directly, so the
figures are propagation, not Envoy.

Per round, for each kind:

  revoke    issue a grant (replica 0's admin API), warm every replica until it
            allows from its cache, revoke it through replica 0, and poll every
            replica in a tight loop until it denies `no_grant`
  suspend   same with `SuspendAgent` of the chain's agent until `agent_suspended`
  resume    then `ResumeAgent`, until every replica allows again

and records, per replica, the delay from the moment the admin call was sent and
from the moment it returned (0: already enforced when the call returned) to the
completion of that replica's first Check with the new answer. Reports p50, p99 and
max per kind across replicas (and per replica) as a Markdown table, the 100 ms
target and the 1 s bound as PASS/FAIL lines, and the baseline: the poll loop's own
time per iteration (one Check round trip), which is the resolution of every figure.
Bounded: --rounds x 3 kinds, each poll gives up after --give-up seconds.

--blackhole: the last replica reaches Redis through a TCP relay
(`authz.dev.tcp_proxy`), and right before every revoke and suspend the relay
stops forwarding on its subscription without closing it (a partition, a hung
Redis, a NAT that forgot the flow: no FIN, no RST). That replica hears no
invalidation: what stops it is the caches' trust window. The report gives its
delays apart (`black-holed replica`); the relay then closes the dead
subscription and the round waits for a new one before going on.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import attribute_context_pb2 as attrs
from envoy.service.auth.v3 import external_auth_pb2 as ext
from envoy.service.auth.v3 import external_auth_pb2_grpc as ext_grpc

from authz._proto import grants_pb2 as gpb
from authz.cli.admin_client import AdminClient
from authz.dev import stack as devstack
from authz.dev.tcp_proxy import TcpProxy
from authz.dev.tokens import DemoIssuer
from authz.errors import AdminError

ROOT = Path(__file__).resolve().parent.parent

PATH = "/patients/p-1001/records"
PURPOSE = "clinical-documentation"
AGENT = "scribe"
TARGET_MS = 100.0
BOUND_MS = 1000.0
WARM_CHECKS = 3  # Checks per replica after the first allow, so the answer is cached
KINDS = ("revoke", "suspend", "resume")


def check_request(token: str) -> ext.CheckRequest:
    """What Envoy would send for GET PATH with the token (see authz.server.ext_authz.to_input)."""
    http = attrs.AttributeContext.HttpRequest(
        id=uuid.uuid4().hex,
        method="GET",
        path=PATH,
        host="ehr.local",
        headers={"authorization": f"Bearer {token}"},
    )
    return ext.CheckRequest(
        attributes=attrs.AttributeContext(request=attrs.AttributeContext.Request(http=http))
    )


def outcome(response: ext.CheckResponse) -> str:
    """`allowed`, or the deny reason from the JSON body."""
    if response.HasField("ok_response"):
        return "allowed"
    body = json.loads(response.denied_response.body or "{}")
    return str(body.get("reason", "unknown"))


@dataclass
class Replica:
    index: int
    server: devstack.LasthopServer
    channel: grpc.Channel
    stub: Any
    admin: AdminClient

    def check(self, request: ext.CheckRequest) -> str:
        return outcome(self.stub.Check(request, timeout=2.0))


@dataclass
class Poll:
    """One replica's poll until `want`: the completion time of the first Check that had it."""

    seen_at: float | None = None
    iterations: list[float] = field(default_factory=list)  # seconds per Check
    other: dict[str, int] = field(default_factory=dict)  # unexpected answers on the way


def poll(
    replica: Replica,
    request: ext.CheckRequest,
    want: str,
    before: str,
    start: threading.Event,
    abandon: threading.Event,
    result: Poll,
    give_up: float,
) -> None:
    start.wait()
    deadline = time.perf_counter() + give_up
    while not abandon.is_set():
        sent = time.perf_counter()
        got = replica.check(request)
        done = time.perf_counter()
        result.iterations.append(done - sent)
        if got == want:
            result.seen_at = done
            return
        if got != before:
            result.other[got] = result.other.get(got, 0) + 1
        if done > deadline:
            return


def warm(replicas: list[Replica], request: ext.CheckRequest, want: str, give_up: float) -> None:
    for replica in replicas:
        deadline = time.perf_counter() + give_up
        while replica.check(request) != want:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"replica {replica.index} never answered `{want}`")
            time.sleep(0.005)
        for _ in range(WARM_CHECKS):
            if replica.check(request) != want:
                raise RuntimeError(f"replica {replica.index} flapped while warming")


def measure(
    replicas: list[Replica],
    request: ext.CheckRequest,
    action: Any,
    want: str,
    before: str,
    give_up: float,
) -> list[dict[str, Any]]:
    """Start a poller per replica, run `action`, return each replica's delays.

    An admin call that fails (e.g. `unavailable` on an overloaded machine) abandons the
    round: it is counted, not measured.
    """
    start, abandon = threading.Event(), threading.Event()
    polls = [Poll() for _ in replicas]
    threads = [
        threading.Thread(target=poll, args=(r, request, want, before, start, abandon, p, give_up))
        for r, p in zip(replicas, polls, strict=True)
    ]
    for thread in threads:
        thread.start()
    start.set()
    time.sleep(0.002)  # every poller is in its loop, still seeing the old answer
    sent = time.perf_counter()
    try:
        action()
    except AdminError as err:
        abandon.set()
        for thread in threads:
            thread.join()
        return [{"replica": r.index, "failed_call": str(err)} for r in replicas]
    returned = time.perf_counter()
    for thread in threads:
        thread.join()
    rows = []
    for replica, result in zip(replicas, polls, strict=True):
        rows.append(
            {
                "replica": replica.index,
                "from_sent_ms": None if result.seen_at is None else (result.seen_at - sent) * 1000,
                "from_returned_ms": None
                if result.seen_at is None
                else max(0.0, (result.seen_at - returned) * 1000),
                "call_ms": (returned - sent) * 1000,
                "iteration_ms": [x * 1000 for x in result.iterations],
                "other": result.other,
            }
        )
    return rows


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_fleet(
    work: Path, issuer: DemoIssuer, args: argparse.Namespace, urls: list[str]
) -> list[Replica]:
    jwks = issuer.write_jwks(work / "keys" / "jwks.json")
    token = issuer.admin_token(ttl=3600)
    replicas = []
    for index in range(args.replicas):
        home = work / f"replica-{index}"
        home.mkdir()
        config = devstack.write_config(home, jwks, redis_url=urls[index])
        server = devstack.LasthopServer(
            config,
            env={
                "LASTHOP_STORE_CACHE_TTL_MS": str(args.cache_ttl_ms),
                "LASTHOP_STORE_TIMEOUT_MS": str(args.store_timeout_ms),
                "LASTHOP_POLICIES_RELOAD_INTERVAL_SECONDS": "0",
            },
        )
        channel = grpc.insecure_channel(server.ready["listen"])
        replicas.append(
            Replica(
                index,
                server,
                channel,
                ext_grpc.AuthorizationStub(channel),
                AdminClient(server.ready["admin_listen"], token),
            )
        )
    return replicas


class Blackhole:
    """The last replica's subscription, cut silently right before each revoke and suspend."""

    SETTLE = 0.3  # after a new subscription: confirmed, caches on

    def __init__(self, proxy: TcpProxy | None) -> None:
        self.proxy = proxy

    def ready(self, give_up: float) -> None:
        """Until the replica is subscribed again through the relay."""
        if self.proxy is None:
            return
        deadline = time.monotonic() + give_up
        while not self.proxy.subscribers():
            if time.monotonic() > deadline:
                raise RuntimeError("the black-holed replica never subscribed again")
            time.sleep(0.01)
        time.sleep(self.SETTLE)

    def before(self, action: Callable[[], object]) -> Callable[[], None]:
        """`action`, right after cutting the subscription."""

        def cut_then_act() -> None:
            if self.proxy is not None and self.proxy.blackhole_subscribers() != 1:
                raise RuntimeError("no subscription to black-hole")
            action()

        return cut_then_act

    def heal(self) -> None:
        if self.proxy is not None:
            self.proxy.close_subscribers()


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with devstack.workdir("lasthop-bench-revoke-") as work:
        redis = devstack.RedisServer(work)
        proxy = TcpProxy(redis.port) if args.blackhole else None
        hole = Blackhole(proxy)
        issuer = DemoIssuer("ES256")
        replicas: list[Replica] = []
        try:
            urls = [redis.url] * args.replicas
            if proxy is not None:
                urls[-1] = proxy.url
            replicas = start_fleet(work, issuer, args, urls)
            admin = replicas[0].admin
            for n in range(args.rounds):
                user = f"bench-user-{n}"
                request = check_request(
                    issuer.access_token(user, [AGENT], purpose=PURPOSE, ttl=3600)
                )
                grant = admin.issue(
                    gpb.IssueGrantRequest(
                        agent=AGENT,
                        user=user,
                        actions=["read"],
                        resources=['Patient::"p-1001"'],
                        purpose=PURPOSE,
                        ttl_seconds=3600,
                    )
                )
                hole.ready(args.give_up)
                warm(replicas, request, "allowed", args.give_up)
                results["revoke"] += measure(
                    replicas,
                    request,
                    hole.before(functools.partial(admin.revoke, grant.id)),
                    "no_grant",
                    "allowed",
                    args.give_up,
                )
                hole.heal()

                admin.issue(
                    gpb.IssueGrantRequest(
                        agent=AGENT,
                        user=user,
                        actions=["read"],
                        resources=['Patient::"p-1001"'],
                        purpose=PURPOSE,
                        ttl_seconds=3600,
                    )
                )
                hole.ready(args.give_up)
                warm(replicas, request, "allowed", args.give_up)
                suspended = measure(
                    replicas,
                    request,
                    hole.before(lambda: admin.suspend_agent(AGENT)),
                    "agent_suspended",
                    "allowed",
                    args.give_up,
                )
                hole.heal()
                results["suspend"] += suspended
                if any("failed_call" in r for r in suspended):
                    admin.resume_agent(AGENT)  # back to a known state; no resume measured
                    continue
                warm(replicas, request, "agent_suspended", args.give_up)
                results["resume"] += measure(
                    replicas,
                    request,
                    lambda: admin.resume_agent(AGENT),
                    "allowed",
                    "agent_suspended",
                    args.give_up,
                )
        finally:
            for replica in replicas:
                replica.admin.close()
                replica.channel.close()
                replica.server.close()
                if replica.server.proc.stdout is not None:
                    replica.server.proc.stdout.close()
            if proxy is not None:
                proxy.close()
            redis.close()
    return summarise(results, args)


def _stats(values: list[float]) -> dict[str, float]:
    return (
        {
            "n": len(values),
            "p50_ms": pct(values, 0.5),
            "p99_ms": pct(values, 0.99),
            "max_ms": max(values),
        }
        if values
        else {"n": 0}
    )


def summarise(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "replicas": args.replicas,
        "rounds": args.rounds,
        "cache_ttl_ms": args.cache_ttl_ms,
        "kinds": {},
    }
    for kind, every in results.items():
        rows = [r for r in every if "failed_call" not in r]
        seen = [r for r in rows if r["from_sent_ms"] is not None]
        summary["kinds"][kind] = {
            "failed_calls": [
                r["failed_call"] for r in every[:: args.replicas] if "failed_call" in r
            ],
            "missed": len(rows) - len(seen),
            "from_sent": _stats([r["from_sent_ms"] for r in seen]),
            "from_returned": _stats([r["from_returned_ms"] for r in seen]),
            "call": _stats([r["call_ms"] for r in rows[:: args.replicas]]),
            "per_replica": {
                i: _stats([r["from_sent_ms"] for r in seen if r["replica"] == i])
                for i in range(args.replicas)
            },
            "unexpected": [r["other"] for r in rows if r["other"]],
        }
    iterations = [x for rows in results.values() for r in rows for x in r.get("iteration_ms", [])]
    summary["poll_iteration"] = {**_stats(iterations), "mean_ms": statistics.fmean(iterations)}
    summary["raw"] = {
        kind: [{k: v for k, v in r.items() if k != "iteration_ms"} for r in rows]
        for kind, rows in results.items()
    }
    summary["store_timeout_ms"] = args.store_timeout_ms
    summary["blackhole"] = args.blackhole
    return summary


def report(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['replicas']} replicas, {summary['rounds']} rounds per kind, "
        f"cache_ttl_ms {summary['cache_ttl_ms']}, store timeout_ms "
        f"{summary['store_timeout_ms']}; delay until each replica's first Check "
        "with the new answer",
        "",
        "| kind | n | from sent p50 | p99 | max | from return p50 | p99 | max "
        "| admin call p50 | missed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, k in summary["kinds"].items():
        s, r, c = k["from_sent"], k["from_returned"], k["call"]
        if not s["n"]:
            lines.append(f"| {kind} | 0 | - | - | - | - | - | - | - | {k['missed']} |")
            continue
        lines.append(
            f"| {kind} | {s['n']} | {s['p50_ms']:.2f} ms | {s['p99_ms']:.2f} ms | "
            f"{s['max_ms']:.2f} ms | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | "
            f"{r['max_ms']:.2f} ms | {c['p50_ms']:.2f} ms | {k['missed']} |"
        )
    lines += [
        "",
        "| kind | "
        + " | ".join(f"replica {i} p50 / max" for i in range(summary["replicas"]))
        + " |",
        "| --- |" + " ---: |" * summary["replicas"],
    ]
    for kind, k in summary["kinds"].items():
        cells = [
            f"{v['p50_ms']:.2f} / {v['max_ms']:.2f} ms" if v["n"] else "-"
            for v in k["per_replica"].values()
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    if summary["blackhole"]:
        lines += ["", *_blackholed(summary)]
    it = summary["poll_iteration"]
    lines += [
        "",
        f"baseline: one poll iteration (a Check round trip) p50 {it['p50_ms']:.2f} ms, "
        f"p99 {it['p99_ms']:.2f} ms, max {it['max_ms']:.2f} ms over {it['n']} Checks: "
        "the resolution of the figures above",
        "",
    ]
    for kind in ("revoke", "suspend"):
        k = summary["kinds"][kind]
        worst_p99 = k["from_sent"].get("p99_ms", float("inf"))
        worst = k["from_sent"].get("max_ms", float("inf"))
        target = "PASS" if worst_p99 <= TARGET_MS and not k["missed"] else "FAIL"
        bound = "PASS" if worst <= BOUND_MS and not k["missed"] else "FAIL"
        lines.append(
            f"{kind}: target {TARGET_MS:.0f} ms (p99 from sent {worst_p99:.2f} ms): {target}"
        )
        lines.append(
            f"{kind}: bound {BOUND_MS:.0f} ms (max from sent {worst:.2f} ms, "
            f"{k['missed']} never seen): {bound}"
        )
    failed = {kind: k["failed_calls"] for kind, k in summary["kinds"].items() if k["failed_calls"]}
    if failed:
        lines.append(f"admin calls that failed (rounds not measured): {failed}")
    unexpected = {kind: k["unexpected"] for kind, k in summary["kinds"].items() if k["unexpected"]}
    if unexpected:
        lines.append(f"unexpected answers while polling: {unexpected}")
    return "\n".join(lines)


def _blackholed(summary: dict[str, Any]) -> list[str]:
    """The replica whose subscription was black-holed: the figure the trust window sets."""
    index = summary["replicas"] - 1
    lines = [f"black-holed replica (replica {index}, its subscription silently dead):"]
    for kind in ("revoke", "suspend"):
        v = summary["kinds"][kind]["per_replica"][index]
        if not v["n"]:
            lines.append(f"- {kind}: no round measured")
            continue
        verdict = "PASS" if v["p99_ms"] <= TARGET_MS else "FAIL"
        lines.append(
            f"- {kind}: n {v['n']}, from sent p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms, "
            f"max {v['max_ms']:.2f} ms; target {TARGET_MS:.0f} ms p99: {verdict}"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cache-ttl-ms", type=int, default=5000)
    ap.add_argument(
        "--store-timeout-ms",
        type=int,
        default=50,
        help="store.timeout_ms of every replica (raise it on a busy machine)",
    )
    ap.add_argument(
        "--give-up",
        type=float,
        default=5.0,
        help="seconds a poll waits for the new answer before counting a miss",
    )
    ap.add_argument("--json", type=Path, help="also write the summary and raw delays here")
    ap.add_argument(
        "--blackhole",
        action="store_true",
        help="black-hole the last replica's subscription before every revoke and suspend",
    )
    args = ap.parse_args()
    if not 1 <= args.replicas <= 8 or not 1 <= args.rounds <= 1000:
        ap.error("--replicas must be 1 to 8 and --rounds 1 to 1000")
    summary = run(args)
    print(report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
