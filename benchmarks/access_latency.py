"""Request-to-usable-grant latency of an auto-approved access request, against a plain
`grants issue` measured in the same run, and the cost access requests add to Check.

    .venv/bin/python benchmarks/access_latency.py [--rounds 5] [--per-round 100]
                                                  [--fsync always|50ms] [--redis] [--json PATH]

Starts `lasthop serve` on loopback (the embedded store, or one Redis with --redis) and
builds the same app in this process from the same settings. Per round, interleaved:

  api/request     RequestAccess over gRPC with the agent's own token (the medication
                  reconciler reading one patient's medications for 15 minutes and 50 uses,
                  which the shipped approval policies approve at once), until it answers
                  `approved` with its grant; then one ext_authz Check with that token must
                  allow (counted, not timed: the grant is usable when the call returns)
  api/issue       IssueGrant over gRPC with an admin token, the same grant: the baseline
  inproc/request  the same two servicer methods called in this process (no gRPC, no
  inproc/issue    network): the cost of the work itself
  check/plain     an in-process Check allowed by a plain grant (decision cache off)
  check/task      an in-process Check allowed by a task-bound grant approved through the
                  access API, with every request above still in the store (each round a
                  fresh grant of each kind, spent 20 times: the same use counting for both)

Each request is for a user of its own, so no pair of (agent, user) accumulates grants.
Reports p50, p99, min and max per kind, each as a ratio to its baseline from the same
run, and the target (p99 under 5 ms through the API) as PASS or FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, cast

import grpc
from envoy.service.auth.v3 import attribute_context_pb2 as attrs
from envoy.service.auth.v3 import external_auth_pb2 as ext
from envoy.service.auth.v3 import external_auth_pb2_grpc as ext_grpc

from authz import config
from authz._proto import access_pb2 as apb
from authz._proto import grants_pb2 as gpb
from authz.cli.access_client import AccessClient
from authz.cli.admin_client import AdminClient
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.model import CheckInput
from authz.server.app import App, build

AGENT = "med-reconciler"
PURPOSE = "medication-reconciliation"
RESOURCE = 'Medications::"p-1001"'
PATH = "/patients/p-1001/medications"
TARGET_P99_MS = 5.0
KINDS = ("api/request", "api/issue", "inproc/request", "inproc/issue", "check/plain", "check/task")
BASELINE = {
    "api/request": "api/issue",
    "inproc/request": "inproc/issue",
    "check/task": "check/plain",
}


def access_ask(txn: str = "") -> apb.RequestAccessRequest:
    return apb.RequestAccessRequest(
        action="read", resource=RESOURCE, purpose=PURPOSE, ttl_seconds=900, max_uses=50, txn=txn
    )


def plain_grant(user: str) -> gpb.IssueGrantRequest:
    return gpb.IssueGrantRequest(
        agent=AGENT,
        user=user,
        actions=["read"],
        resources=[RESOURCE],
        purpose=PURPOSE,
        ttl_seconds=900,
        max_uses=50,
    )


def check_request(token: str) -> ext.CheckRequest:
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


class StubContext:
    """What a servicer reads of a gRPC call: its metadata; abort raises."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, issuer: DemoIssuer) -> None:
        self.args = args
        self.issuer = issuer
        self.times: dict[str, list[float]] = {k: [] for k in KINDS}
        self.unusable = 0
        self.admin_token = issuer.admin_token(ttl=3600)
        jwks = issuer.write_jwks(work / "keys" / "jwks.json")
        self.redis = devstack.RedisServer(work) if args.redis else None
        url = self.redis.url if self.redis else ""
        server_home, local_home = work / "server", work / "local"
        server_home.mkdir()
        local_home.mkdir()
        extra = f'fsync = "{args.fsync}"\n'
        env = {"LASTHOP_POLICIES_RELOAD_INTERVAL_SECONDS": "0"}
        self.server = devstack.LasthopServer(
            devstack.write_config(server_home, jwks, redis_url=url, extra=extra), env=env
        )
        local_config = devstack.write_config(local_home, jwks, redis_url=url, extra=extra)
        self.settings = config.load(local_config, {**env, "LASTHOP_STORE_CACHE_TTL_MS": "0"})
        self.channel = grpc.insecure_channel(self.server.ready["listen"])
        self.ext = ext_grpc.AuthorizationStub(self.channel)
        self.admin = AdminClient(self.server.ready["admin_listen"], self.admin_token)

    def token(self, user: str, txn: str = "") -> str:
        return self.issuer.access_token(
            user, [AGENT], purpose=PURPOSE, ttl=3600, txn=txn or uuid.uuid4().hex
        )

    def api_round(self, round_no: int) -> None:
        address = self.server.ready["admin_listen"]
        for i in range(self.args.per_round):
            user = f"api-{round_no}-{i}"
            token = self.token(user)
            client = AccessClient(address, token)
            client.get  # noqa: B018  (channel set up before timing)
            for kind in ("api/request", "api/issue") if i % 2 else ("api/issue", "api/request"):
                if kind == "api/issue":
                    started = time.perf_counter()
                    self.admin.issue(plain_grant(f"{user}-plain"))
                    self.times[kind].append(time.perf_counter() - started)
                    continue
                started = time.perf_counter()
                made = client.request(access_ask())
                self.times[kind].append(time.perf_counter() - started)
                if made.status != "approved":
                    raise RuntimeError(f"not approved at once: {made.status}: {made.detail}")
                allowed = self.ext.Check(check_request(token), timeout=2.0)
                self.unusable += not allowed.HasField("ok_response")
            client.close()

    async def inproc_round(self, app: App, round_no: int) -> None:
        for i in range(self.args.per_round):
            user = f"in-{round_no}-{i}"
            agent_ctx = cast(Any, StubContext(self.token(user)))
            admin_ctx = cast(Any, StubContext(self.admin_token))
            order = (
                ("inproc/request", "inproc/issue") if i % 2 else ("inproc/issue", "inproc/request")
            )
            for kind in order:
                started = time.perf_counter()
                if kind == "inproc/issue":
                    await app.grants_service.IssueGrant(plain_grant(f"{user}-plain"), admin_ctx)
                else:
                    made = await app.access_service.RequestAccess(access_ask(), agent_ctx)
                    assert made.status == "approved", made.detail
                self.times[kind].append(time.perf_counter() - started)

    async def check_cost(self, app: App) -> None:
        """Per round, a fresh plain grant and a fresh task-bound one (both 50 uses, each spent
        20 times, so both pay the same use counting), checked in turn."""
        admin = cast(Any, StubContext(self.admin_token))
        for n in range(self.args.rounds):
            plain_token = self.token(f"check-plain-{n}")
            await app.grants_service.IssueGrant(plain_grant(f"check-plain-{n}"), admin)
            txn = f"bench-task-{n}"
            task_token = self.token(f"check-task-{n}", txn=txn)
            made = await app.access_service.RequestAccess(
                access_ask(txn), cast(Any, StubContext(task_token))
            )
            assert made.status == "approved", made.detail
            requests = {
                "check/plain": _check_input(plain_token),
                "check/task": _check_input(task_token),
            }
            for kind in ("check/plain", "check/task", "check/task", "check/plain"):
                for _ in range(10):
                    started = time.perf_counter()
                    decision = await app.pipeline.check(requests[kind])
                    self.times[kind].append(time.perf_counter() - started)
                    assert decision.allowed, decision.reason

    def close(self) -> None:
        self.admin.close()
        self.channel.close()
        self.server.close()
        if self.server.proc.stdout is not None:
            self.server.proc.stdout.close()
        if self.redis:
            self.redis.close()


async def in_process(bench: Bench) -> None:
    app = build(bench.settings)
    app.audit.open()
    await app.seed_registry(app.pipeline.bundle)
    try:
        for n in range(bench.args.rounds):
            await bench.inproc_round(app, n)
        await bench.check_cost(app)
    finally:
        await app.audit.close()
        await app.store.close()


def _check_input(token: str) -> CheckInput:
    return CheckInput("GET", PATH, "ehr.local", {"authorization": [f"Bearer {token}"]})


def stats(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {
        "n": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "min_ms": ms[0],
        "max_ms": ms[-1],
    }


def report(bench: Bench) -> dict[str, Any]:
    kinds = {k: stats(v) for k, v in bench.times.items() if v}
    for kind, base in BASELINE.items():
        if kind in kinds and base in kinds:
            kinds[kind]["p50_ratio"] = kinds[kind]["p50_ms"] / kinds[base]["p50_ms"]
            kinds[kind]["p99_ratio"] = kinds[kind]["p99_ms"] / kinds[base]["p99_ms"]
    api_p99 = kinds["api/request"]["p99_ms"]
    return {
        "store": "redis" if bench.args.redis else "embedded",
        "fsync": bench.args.fsync,
        "rounds": bench.args.rounds,
        "per_round": bench.args.per_round,
        "kinds": kinds,
        "unusable_after_approval": bench.unusable,
        "target": {"p99_ms": TARGET_P99_MS, "api_p99_ms": api_p99, "met": api_p99 < TARGET_P99_MS},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Access request latency: {result['store']} store, audit.fsync {result['fsync']}, "
        f"{result['rounds']} rounds x {result['per_round']}",
        "",
        "| kind | n | p50 ms | p99 ms | min ms | max ms | p50 / baseline | p99 / baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, s in result["kinds"].items():
        ratio50 = f"{s['p50_ratio']:.2f}" if "p50_ratio" in s else "baseline"
        ratio99 = f"{s['p99_ratio']:.2f}" if "p99_ratio" in s else "baseline"
        lines.append(
            f"| {kind} | {s['n']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['min_ms']:.2f} | "
            f"{s['max_ms']:.2f} | {ratio50} | {ratio99} |"
        )
    target = result["target"]
    lines += [
        "",
        f"grants unusable right after approval: {result['unusable_after_approval']}",
        f"target p99 < {target['p99_ms']} ms through the API: "
        f"{'PASS' if target['met'] else 'FAIL'} ({target['api_p99_ms']:.2f} ms)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--fsync", default="always", help="audit.fsync: always or e.g. 50ms")
    parser.add_argument("--redis", action="store_true", help="one Redis instead of embedded")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with devstack.workdir("lasthop-bench-access-") as work:
        bench = Bench(args, work, DemoIssuer("ES256"))
        try:
            for n in range(args.rounds):
                bench.api_round(n)
            asyncio.run(in_process(bench))
        finally:
            bench.close()
    result = report(bench)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["unusable_after_approval"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
