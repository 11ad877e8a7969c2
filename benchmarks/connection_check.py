"""A database connection's Check against an HTTP GET's, in process, in the same run; and how far a
revocation reaches over connections already open, through a real Envoy and PostgreSQL.

    .venv/bin/python benchmarks/connection_check.py [--checks 2000] [--rounds 5]
        [--revocation] [--connections 6] [--max-seconds 4] [--json PATH]

Latency: the server's pipeline (no Envoy, no gRPC: Lasthop's own work) on the
hospital example, deciding two things in alternation, check by check, so that
machine drift lands on both alike:

  get         GET /patients/p-1001/records with the scribe's bearer token and a grant
  connection  a new connection to the EHR database from the scribe's workload
              certificate, naming its `connect` grant in the TLS server name

in two regimes: `warm` (memos on, as the server runs) and `cold` (every memo
cleared before each check). The ratio connection/get is taken per round; the
report gives its median and range over the rounds. No target: the connection
check does no token verification but reads its grant by id and binds the
certificate, and these figures say what that costs.

Revocation (`--revocation`): Redis, Lasthop and envoy/postgres.yaml in front of
PostgreSQL, with `connections.max_duration_seconds` = `--max-seconds`. It opens
`--connections` connections under one grant, spread evenly over most of one
maximum duration, revokes the grant, and reads from Envoy's access log when each
connection ended: the reach of the revocation over each open connection (its
end minus the moment the revoke returned), and whether a connection attempted
right after the revoke was refused. Every open connection must end within the
maximum duration of the revoke, and none may be admitted after it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import secrets
import statistics
import time
from pathlib import Path
from typing import Any

from report import paired_rounds

from authz.audit.records import NullAudit
from authz.check import keys as jwks
from authz.check.pipeline import Pipeline
from authz.config import IdentitySettings
from authz.dev import database
from authz.dev.tokens import DemoIssuer
from authz.model import CheckInput, Connection, Grant
from authz.policy import load as policy_load
from authz.server.app import assemble
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry

ROOT = Path(__file__).resolve().parent.parent
PURPOSE = "clinical-documentation"


def build(issuer: DemoIssuer) -> tuple[Pipeline, str]:
    """The pipeline, with a read grant and a connect grant for the scribe; the connect
    grant's id."""
    bundle = policy_load.load(ROOT / "policies")
    keys = jwks.StaticKeys(
        jwks.parse_jwks(json.dumps({"keys": [issuer.public_jwk]}), ("ES256",), "bench")
    )
    store = EmbeddedGrantStore(time.time)
    now = int(time.time())
    connect_id = f"g-{secrets.token_hex(8)}"
    for gid, action, resource in (
        ("g-bench-read", "read", 'Patient::"p-1001"'),
        (connect_id, "connect", 'Database::"ehr"'),
    ):
        grant = Grant(
            id=gid, agent="scribe", user="dr-alice", actions=(action,), resources=(resource,),
            purpose=PURPOSE, issued_by="bench", issued_at=now, expires_at=now + 3600,
        )  # fmt: skip
        asyncio.run(store.put(grant))
    pipeline = assemble(
        ident=IdentitySettings(
            spiffe_trust_domain=database.TRUST_DOMAIN, spiffe_id_template=database.TEMPLATE
        ),
        keys=keys,
        bundle=bundle,
        registry=SeededRegistry(bundle.agents),
        store=store,
        audit=NullAudit(),
    )
    return pipeline, connect_id


def requests(token: str, connect_id: str) -> dict[str, CheckInput]:
    scribe = database.TEMPLATE.format(trust_domain=database.TRUST_DOMAIN, agent="scribe")
    return {
        "get": CheckInput(
            "GET", "/patients/p-1001/records", "ehr", {"authorization": [f"Bearer {token}"]}
        ),
        "connection": CheckInput(
            "", "", "", {}, peer_principal=scribe,
            connection=Connection(database.LISTENER_ID, f"{connect_id}.{database.HOST}"),
        ),
    }  # fmt: skip


def samples(p: Pipeline, reqs: dict[str, CheckInput], checks: int, cold: bool) -> Any:
    """`checks` of each kind, alternating, so noise lands on both alike."""

    async def go() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {kind: [] for kind in reqs}
        for _ in range(checks):
            for kind, request in reqs.items():
                if cold:
                    p.bundle = p.bundle  # a new policy engine: its memos start empty
                    p.verifier.forget()
                started = time.perf_counter()
                decision = await p.check(request)
                out[kind].append(time.perf_counter() - started)
                if not decision.allowed:
                    raise RuntimeError(f"benchmark {kind} denied: {decision.reason}")
        return out

    gc.collect()
    return asyncio.run(go())


def latency(checks: int, rounds: int) -> dict[str, Any]:
    issuer = DemoIssuer("ES256", kid="bench-connection")
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE, ttl=3600)
    pipeline, connect_id = build(issuer)
    reqs = requests(token, connect_id)
    samples(pipeline, reqs, 200, cold=False)  # warm up both paths
    report: dict[str, Any] = {"checks": checks, "rounds": rounds}
    report |= paired_rounds(
        lambda cold: samples(pipeline, reqs, checks, cold), "get", "connection", rounds
    )
    return report


def revocation(connections: int, max_seconds: int) -> dict[str, Any]:
    """Open connections spread over one maximum duration, revoke, read when each ended."""
    import psycopg

    from authz._proto import grants_pb2 as pb
    from authz.cli.admin_client import AdminClient
    from authz.dev import stack as devstack
    from authz.dev.postgres import PostgresServer

    with devstack.workdir("lasthop-bench-db-") as work:
        issuer = DemoIssuer("ES256", kid="bench-revoke")
        redis = devstack.RedisServer(work)
        postgres = PostgresServer()
        config = devstack.write_config(
            work, issuer.write_jwks(work / "keys" / "jwks.json"), redis_url=redis.url
        )
        lasthop = devstack.LasthopServer(config, env=database.lasthop_env(max_seconds))
        mesh = database.Mesh(work / "mesh")
        envoy = database.envoy(work, lasthop.port, postgres.port, mesh, max_seconds)
        admin = AdminClient(lasthop.ready["admin_listen"], issuer.admin_token())
        try:
            grant = admin.issue(
                pb.IssueGrantRequest(
                    agent="scribe", user="dr-alice", actions=["connect"],
                    resources=['Database::"ehr"'], purpose=PURPOSE, ttl_seconds=3600,
                )
            )  # fmt: skip
            args = database.connect_args(envoy.port, grant.id, mesh.agent("scribe"), mesh.ca.path)
            opened = []
            for _ in range(connections):  # over 80% of a maximum duration: all open at the revoke
                opened.append(psycopg.connect(**args, autocommit=True))
                time.sleep(0.8 * max_seconds / connections)
            admin.revoke(grant.id)
            revoked_at = time.time()
            try:
                psycopg.connect(**args).close()
                refused_after_revoke = False
            except psycopg.OperationalError:
                refused_after_revoke = True
            ended = _wait_for_ends(database.access_log(work), connections, max_seconds)
            for conn in opened:
                conn.close()
        finally:
            admin.close()
            envoy.close()
            lasthop.close()
            postgres.close()
            redis.close()
    reach = sorted(end - revoked_at for end in ended)
    return {
        "connections": connections,
        "max_seconds": max_seconds,
        "refused_after_revoke": refused_after_revoke,
        "reach_s": reach,
        "reach_median_s": statistics.median(reach),
        "reach_min_s": reach[0],
        "reach_max_s": reach[-1],
    }


def _wait_for_ends(log: Path, count: int, max_seconds: int) -> list[float]:
    """When each connection admitted under the grant ended (Envoy's clock, its access log)."""
    deadline = time.monotonic() + max_seconds + 10
    while True:
        lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        admitted = [e for e in lines if e["decision_id"] not in ("", "-", None)]
        if len(admitted) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return [float(e["start"]) + int(e["duration_ms"]) / 1000 for e in admitted[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--revocation", action="store_true")
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--max-seconds", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"latency": latency(args.checks, args.rounds)}
    for regime in ("warm", "cold"):
        r = report["latency"][regime]
        print(
            f"{regime}: GET p50 {r['get_p50_us']:.1f} µs, connection p50 "
            f"{r['connection_p50_us']:.1f} µs; ratio median x{r['ratio_median']:.3f} (range "
            f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f} over {args.rounds} rounds)"
        )
    if args.revocation:
        rev = report["revocation"] = revocation(args.connections, args.max_seconds)
        after = "refused" if rev["refused_after_revoke"] else "ADMITTED"
        print(
            f"revocation over {rev['connections']} open connections (max duration "
            f"{rev['max_seconds']} s): each ended {rev['reach_median_s']:.2f} s after the revoke "
            f"(median; range {rev['reach_min_s']:.2f}-{rev['reach_max_s']:.2f} s); a new "
            f"connection right after it was {after}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
