"""`lasthop demo`: Envoy + Lasthop (embedded store) + the demo EHR, and a short scenario;
then the same EHR as an MCP server, called by an agent through the MCP SDK (`demo_mcp`);
then agents asking for just-in-time access (`demo_access`); then its PostgreSQL database,
which an agent connects to through Envoy (`demo_db`).

Everything runs on loopback with freshly generated demo keys (the token
issuer's, and Lasthop's audit and receipt signing key), in a directory that is
kept afterwards (`--dir`, else a new one under the system's temporary
directory) and named at the end, and stops at the end (or on Ctrl-C with
--keep-running, after printing the admin address, the config path and
commands that work as printed). Then it verifies the audit trail the
scenario wrote and prints dr-alice's accounting of disclosures, with the
`lasthop` commands that do the same.
"""

from __future__ import annotations

import json
import shlex
import signal
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from authz import config
from authz._proto import grants_pb2 as pb
from authz.audit import disclosures, receipts
from authz.audit import setup as audit_setup
from authz.audit import verify as audit_verify
from authz.audit.signing import read_jwks
from authz.cli.admin_client import AdminClient
from authz.dev import demo_access, demo_db, demo_mcp
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.dev.upstream import DemoUpstream
from authz.errors import UsageError
from authz.server.ext_authz import RECEIPT_HEADER

PURPOSE = "clinical-documentation"


@dataclass(frozen=True)
class Outcome:
    status: int
    reason: str
    body: dict[str, object]


def request(base: str, method: str, path: str, token: str | None) -> Outcome:
    req = urllib.request.Request(
        base + path, method=method, data=b"note text" if method == "POST" else None
    )
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


def _step(title: str, method: str, path: str, outcome: Outcome, jwks: Path) -> Outcome:
    print(f"\n- {title}\n  {method} {path}\n  -> {outcome.status} {outcome.reason}")
    seen = outcome.body.get("lasthop")
    if isinstance(seen, dict) and seen:
        seen = {str(k).lower(): v for k, v in seen.items()}
        print(f"     upstream saw chain={seen.get('x-lasthop-chain')}")
        receipt = seen.get(RECEIPT_HEADER)
        if isinstance(receipt, str):
            claims = receipts.verify(
                receipt, read_jwks(jwks), receipts.Binding(method=method, path=path)
            )
            print(
                f"     and a signed receipt for decision {claims['jti']}, verified offline "
                f"against {jwks.name}"
            )
    return outcome


def workdir(chosen: Path | None) -> Path:
    """The directory the demo writes and keeps: `chosen` (new or empty), else a new one."""
    if chosen is None:
        return Path(tempfile.mkdtemp(prefix="lasthop-demo-"))
    if chosen.exists() and (not chosen.is_dir() or any(chosen.iterdir())):
        raise UsageError(f"--dir `{chosen}` is not an empty directory; the demo starts afresh")
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen.resolve()


def run_demo(keep_running: bool = False, directory: Path | None = None) -> int:
    work = workdir(directory)
    issuer = DemoIssuer("ES256")
    jwks = issuer.write_jwks(work / "keys" / "jwks.json")
    cfg = devstack.write_config(work, jwks)
    settings = config.load(cfg)
    upstream = DemoUpstream()
    lasthop = envoy = None
    try:
        lasthop = devstack.LasthopServer(cfg, env=demo_db.LASTHOP_ENV)
        envoy = devstack.Envoy(work, lasthop.port, upstream.port)
        print(
            f"Lasthop ext_authz on {lasthop.ready['listen']}, admin on "
            f"{lasthop.ready['admin_listen']}; Envoy on {envoy.url}; "
            f"demo EHR on 127.0.0.1:{upstream.port}"
        )
        admin = AdminClient(lasthop.ready["admin_listen"], issuer.admin_token())
        _scenario(envoy.url, admin, issuer, audit_setup.jwks_path(settings))
        demo_mcp.run(work, lasthop.port, admin, issuer, audit_setup.jwks_path(settings))
        demo_access.scenario(envoy.url, lasthop.ready["admin_listen"], issuer)
        demo_db.run(work, lasthop.port, admin, audit_setup.trail_path(settings))
        if keep_running:
            _wait_for_ctrl_c(envoy.url, lasthop.ready, issuer, admin, cfg)
    finally:
        if envoy:
            envoy.close()
        if lasthop:
            lasthop.close()
        upstream.close()
    _show_audit(settings, cfg)
    print(f"\nEverything the demo wrote is kept in {work} (rm -r it when done).")
    return 0


def _show_audit(settings: config.Settings, cfg: Path) -> None:
    """The trail the scenario wrote (closed by Lasthop's SIGTERM): records, verification,
    and dr-alice's accounting of disclosures."""
    path = audit_setup.trail_path(settings)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    print(
        f"\nAudit trail: {len(records)} records, one hash-chained JSON line each "
        "(no tokens, only hashes):"
    )
    for r in records:
        if r["type"] == "decision":
            chain = " -> ".join([r["user"], *r["chain"]]) if r["user"] else "-"
            print(
                f"  {r['seq']:>3} decision {r['decision']:<5} {r['reason']:<20} {chain:<34} "
                f"{r['action'] or '-':<7} {_target(r)}{_mcp(r)}"
            )
        elif r["type"] == "event":
            print(f"  {r['seq']:>3} event    {r['event']:<26} by {r['actor']}: {r['target']}")
        else:
            print(f"  {r['seq']:>3} {r['type']} ({r['trigger']}), signed by key {r['kid']}")
    anchors = [audit_setup.checkpoints_path(settings)]
    report = audit_verify.verify([path], read_jwks(audit_setup.jwks_path(settings)), anchors)
    config_arg = shlex.quote(str(cfg))
    print(
        f"\n$ lasthop audit verify --config {config_arg}\n"
        f"{report.problem or 'ok: every hash, the sequence and every signature verify'}"
    )
    rows = disclosures.account(disclosures.read_records([path]), user="dr-alice")
    print(
        f"\n$ lasthop audit disclosures --user dr-alice --config {config_arg}\n"
        + disclosures.render(rows, "md", "Accounting of disclosures: user dr-alice")
    )


def _target(record: dict[str, object]) -> str:
    """What a decision was about: its resource, else the path or the listener it reached."""
    return str(record["resource"] or record["path"] or record.get("listener", ""))


def _mcp(record: dict[str, object]) -> str:
    what = " ".join(str(record[k]) for k in ("mcp_method", "tool") if record.get(k))
    return f" (MCP {what})" if what else ""


def _scenario(base: str, admin: AdminClient, issuer: DemoIssuer, jwks: Path) -> list[Outcome]:
    """The demo's requests and grants; returns the outcome of each request, in order."""
    records = "/patients/p-1001/records"
    outcomes: list[Outcome] = []

    def step(title: str, token: str | None) -> None:
        outcomes.append(_step(title, "GET", records, request(base, "GET", records, token), jwks))

    scribe = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    print("\nDr. Alice's scribe agent documents a visit for patient p-1001.")
    step("scribe reads the chart, no grant yet", scribe)

    grant = _scribe_grant(admin, 900)
    print(
        f"\n+ dr-alice approves grant {grant.id}: scribe may read/write p-1001 for "
        f"{PURPOSE}, 15 minutes"
    )
    step("scribe reads the chart with the grant", scribe)

    chained = issuer.access_token("dr-alice", ["orchestrator", "scribe"], purpose=PURPOSE)
    step("orchestrator delegates to scribe (dr-alice -> orchestrator -> scribe)", chained)

    billing = issuer.access_token("bob", ["billing-bot"], purpose="billing")
    admin.issue(
        pb.IssueGrantRequest(
            agent="billing-bot",
            user="bob",
            actions=["read"],
            resources=['Patient::"p-1001"'],
            purpose="billing",
            ttl_seconds=900,
        )
    )
    step("billing-bot, even with a grant on p-1001, asks for clinical records", billing)

    step("scribe, no token at all", None)

    admin.revoke(grant.id)
    print(f"\n- dr-alice revokes {grant.id}")
    step("scribe reads the chart after revocation", scribe)
    return outcomes


def _scribe_grant(admin: AdminClient, ttl: int) -> pb.Grant:
    """dr-alice's grant to scribe: read and write p-1001 for clinical documentation."""
    return admin.issue(
        pb.IssueGrantRequest(
            agent="scribe",
            user="dr-alice",
            actions=["read", "write"],
            resources=['Patient::"p-1001"'],
            purpose=PURPOSE,
            ttl_seconds=ttl,
        )
    )


def _wait_for_ctrl_c(
    base: str, ready: dict[str, str], issuer: DemoIssuer, admin: AdminClient, cfg: Path
) -> None:
    """Stay up with a live grant, and print what a person needs to try it, as commands."""
    grant = _scribe_grant(admin, 3600)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE, ttl=3600)
    token_file = cfg.parent / "keys" / "admin-token"
    token_file.write_text(issuer.admin_token(ttl=3600) + "\n", encoding="ascii")
    token_file.chmod(0o600)
    print(
        f"\nStaying up (Ctrl-C to stop). A fresh grant {grant.id} lets scribe read p-1001 "
        f"for an hour.\n"
        f"Config: {cfg}\n"
        f"Metrics: http://{ready['metrics_listen']}/metrics\n"
        f"Admin API (token valid 1 h):\n"
        f"  export LASTHOP_ADMIN_URL={ready['admin_listen']}\n"
        f"  export LASTHOP_ADMIN_TOKEN_FILE={shlex.quote(str(token_file))}\n"
        f"  lasthop grants list\n"
        f"Try:\n  curl -i -H 'authorization: Bearer {token}' {base}/patients/p-1001/records",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
