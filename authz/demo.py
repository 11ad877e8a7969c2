"""`lasthop demo`: Envoy + Lasthop (embedded store) + the demo EHR, and a short scenario.

Everything runs on loopback in a temporary directory with a freshly generated
demo signing key, and stops at the end (or on Ctrl-C with --keep-running).
"""

from __future__ import annotations

import json
import signal
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from authz import devstack
from authz._proto import grants_pb2 as pb
from authz.admin_client import AdminClient
from authz.demo_tokens import DemoIssuer
from authz.demo_upstream import DemoUpstream

PURPOSE = "clinical-documentation"


@dataclass(frozen=True)
class Outcome:
    status: int
    reason: str
    body: dict[str, object]


def request(base: str, method: str, path: str, token: str | None) -> Outcome:
    req = urllib.request.Request(base + path, method=method,
                                 data=b"note text" if method == "POST" else None)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = json.loads(resp.read() or b"{}")
            return Outcome(resp.status, "allowed", body)
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"raw": raw.decode("utf-8", "replace")}
        return Outcome(err.code, str(body.get("reason", "")), body)


def _step(title: str, method: str, path: str, outcome: Outcome) -> None:
    print(f"\n- {title}\n  {method} {path}\n  -> {outcome.status} {outcome.reason}")
    seen = outcome.body.get("lasthop")
    if isinstance(seen, dict) and seen:
        chain = seen.get("x-lasthop-chain") or seen.get("X-Lasthop-Chain")
        print(f"     upstream saw chain={chain}")


def run_demo(keep_running: bool = False) -> int:
    with devstack.workdir("lasthop-demo-") as work:
        issuer = DemoIssuer("ES256")
        jwks = issuer.write_jwks(Path(work) / "keys" / "jwks.json")
        cfg = devstack.write_config(Path(work), jwks)
        upstream = DemoUpstream()
        lasthop = envoy = None
        try:
            lasthop = devstack.LasthopServer(cfg)
            envoy = devstack.Envoy(Path(work), lasthop.port, upstream.port)
            print(f"Lasthop ext_authz on {lasthop.ready['listen']}, admin on "
                  f"{lasthop.ready['admin_listen']}; Envoy on {envoy.url}; "
                  f"demo EHR on 127.0.0.1:{upstream.port}")
            _scenario(envoy.url, AdminClient(lasthop.ready["admin_listen"],
                                             issuer.admin_token()), issuer)
            if keep_running:
                _wait_for_ctrl_c(envoy.url, lasthop.ready, issuer)
        finally:
            if envoy:
                envoy.close()
            if lasthop:
                lasthop.close()
            upstream.close()
        _show_audit(Path(work) / "audit" / "decisions.jsonl")
    return 0


def _show_audit(path: Path) -> None:
    """The audit trail the scenario wrote (flushed by Lasthop's SIGTERM), one line a decision."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    print(f"\nAudit trail: {len(records)} decisions, one JSON line each (no tokens, only hashes):")
    for r in records:
        chain = " -> ".join([r["user"], *r["chain"]]) if r["user"] else "-"
        print(f"  {r['decision']:<5} {r['reason']:<22} {chain:<38} {r['action'] or '-':<5} "
              f"{r['resource'] or r['path']}  grant={r['grant_id'] or '-'}")


def _scenario(base: str, admin: AdminClient, issuer: DemoIssuer) -> None:
    records = "/patients/p-1001/records"
    scribe = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    print("\nDr. Alice's scribe agent documents a visit for patient p-1001.")
    _step("scribe reads the chart, no grant yet", "GET", records,
          request(base, "GET", records, scribe))

    grant = admin.issue(pb.IssueGrantRequest(
        agent="scribe", user="dr-alice", actions=["read", "write"],
        resources=['Patient::"p-1001"'], purpose=PURPOSE, ttl_seconds=900))
    print(f"\n+ dr-alice approves grant {grant.id}: scribe may read/write p-1001 for "
          f"{PURPOSE}, 15 minutes")
    _step("scribe reads the chart with the grant", "GET", records,
          request(base, "GET", records, scribe))

    chained = issuer.access_token("dr-alice", ["orchestrator", "scribe"], purpose=PURPOSE)
    _step("orchestrator delegates to scribe (dr-alice -> orchestrator -> scribe)", "GET",
          records, request(base, "GET", records, chained))

    billing = issuer.access_token("bob", ["billing-bot"], purpose="billing")
    admin.issue(pb.IssueGrantRequest(
        agent="billing-bot", user="bob", actions=["read"], resources=['Patient::"p-1001"'],
        purpose="billing", ttl_seconds=900))
    _step("billing-bot, even with a grant on p-1001, asks for clinical records", "GET",
          records, request(base, "GET", records, billing))

    _step("scribe, no token at all", "GET", records, request(base, "GET", records, None))

    admin.revoke(grant.id)
    print(f"\n- dr-alice revokes {grant.id}")
    _step("scribe reads the chart after revocation", "GET", records,
          request(base, "GET", records, scribe))


def _wait_for_ctrl_c(base: str, ready: dict[str, str], issuer: DemoIssuer) -> None:
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE, ttl=3600)
    print(f"\nStaying up (Ctrl-C to stop). Admin API on {ready['admin_listen']}, "
          f"metrics on http://{ready['metrics_listen']}/metrics\n"
          f"Admin token (1 h):\n  export LASTHOP_ADMIN_TOKEN={issuer.admin_token(ttl=3600)}\n"
          f"Try:\n  curl -i -H 'authorization: Bearer {token}' {base}/patients/p-1001/records")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
