"""Database connections through a real Envoy (envoy/postgres.yaml) to a real PostgreSQL.

An agent connects with psycopg, PostgreSQL's direct TLS and its own client
certificate (made by the test's mesh CA), naming its grant in the TLS server
name. Envoy's network ext_authz asks Lasthop about each connection: allowed
with a grant, refused without one, refused after revocation for new
connections, and every connection ended by Envoy no later than its grant's
expiry. Each refusal is one test here, with the reason Lasthop recorded.

One PostgreSQL, Lasthop (on Redis) and Envoy for the module; each test uses its
own user, so no grant of one test covers another's connection.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from authz._proto import agents_pb2 as apb
from authz._proto import grants_pb2 as gpb
from authz.audit.disclosures import account
from authz.dev import database
from authz.dev.certs import Pem
from authz.dev.postgres import PostgresServer
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import Stack, read_audit, running_stack, unique, wait_until

pytestmark = pytest.mark.integration

MAX_SECONDS = 2  # connections.max_duration_seconds = Envoy's max_downstream_connection_duration
EHR_DB = 'Database::"ehr"'
PURPOSE = "clinical-documentation"


@dataclass
class Db:
    stack: Stack
    mesh: database.Mesh
    postgres: PostgresServer

    @property
    def port(self) -> int:
        return self.stack.envoy.port

    def grant(
        self,
        user: str,
        agent: str = "scribe",
        ttl: int = 600,
        actions: tuple[str, ...] = ("connect",),
        purpose: str = PURPOSE,
    ) -> gpb.Grant:
        return self.stack.grant(
            user, agent, actions=actions, resources=(EHR_DB,), purpose=purpose, ttl=ttl
        )

    def connect(self, grant_id: str, client: Pem, port: int = 0) -> psycopg.Connection[Any]:
        args = database.connect_args(port or self.port, grant_id, client, self.mesh.ca.path)
        return psycopg.connect(**args, autocommit=True)

    def records(self) -> list[dict[str, Any]]:
        return [
            r
            for r in read_audit(self.stack.audit_path)
            if r.get("type") == "decision" and r.get("kind") == "connection"
        ]

    def refused(self, grant_id: str, client: Pem, port: int = 0) -> dict[str, Any]:
        """Connect, expect Envoy to close the connection; Lasthop's record of the refusal."""
        before = len(self.records())
        with pytest.raises(psycopg.OperationalError):
            self.connect(grant_id, client, port).close()
        assert wait_until(lambda: len(self.records()) > before, 5)
        record = self.records()[-1]
        assert record["decision"] == "deny", record
        return record

    def stat(self, name: str) -> int:
        url = f"http://127.0.0.1:{self.stack.envoy.admin_port}/stats?filter=^{name}$&format=json"
        with urllib.request.urlopen(url, timeout=5) as resp:
            stats = json.loads(resp.read())["stats"]
        return int(stats[0]["value"]) if stats else 0

    def access_log(self) -> list[dict[str, Any]]:
        path = database.access_log(self.stack.work)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, upstream: DemoUpstream) -> Iterator[Db]:
    postgres = PostgresServer()
    mesh = database.Mesh(tmp_path_factory.mktemp("mesh"))

    def envoy(work: Path, lasthop: Any, _: DemoUpstream) -> Any:
        return database.envoy(work, lasthop.port, postgres.port, mesh, MAX_SECONDS)

    try:
        with running_stack(
            "lasthop-db-",
            upstream=upstream,
            env=database.lasthop_env(MAX_SECONDS),
            envoy=envoy,
        ) as stack:
            yield Db(stack, mesh, postgres)
    finally:
        postgres.close()


def closed(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return conn.closed


# --- allowed --------------------------------------------------------------------------------


def test_an_agent_connects_with_a_grant_and_the_connection_is_on_the_record(db: Db) -> None:
    user = unique("u-db")
    grant = db.grant(user)
    with db.connect(grant.id, db.mesh.agent("scribe")) as conn:
        assert conn.execute("SELECT current_database(), count(*) FROM records").fetchone() == (
            "ehr",
            3,
        )
    record = db.records()[-1]
    assert {k: record[k] for k in ("decision", "reason", "agent", "user", "grant_id")} == {
        "decision": "allow",
        "reason": "allowed",
        "agent": "scribe",
        "user": user,
        "grant_id": grant.id,
    }
    assert (record["action"], record["resource"], record["phi"]) == ("connect", EHR_DB, True)
    assert record["peer"] == "spiffe://cluster.local/ns/agents/sa/scribe"
    assert record["listener"] == database.LISTENER_ID
    # Envoy's access log line for the connection carries Lasthop's decision
    assert wait_until(
        lambda: any(e["decision_id"] == record["decision_id"] for e in db.access_log()), 5
    )
    line = next(e for e in db.access_log() if e["decision_id"] == record["decision_id"])
    assert (line["agent"], line["user"], line["grant"]) == ("scribe", user, grant.id)
    # the accounting of disclosures lists it as access to the database
    rows = account(read_audit(db.stack.audit_path), user=user)
    assert [(r.recipient, r.description, r.grant_id) for r in rows] == [
        ("scribe", f"connect {EHR_DB} (database connection: the whole database)", grant.id)
    ]


# --- refused: each reason through Envoy -----------------------------------------------------


def test_refused_without_a_grant(db: Db) -> None:
    """No standing access: the agent holds no grant, or names none, or one that covers
    something else. A refused connection never reaches PostgreSQL."""
    scribe = db.mesh.agent("scribe")
    user = unique("u-db")
    other = db.grant(user, actions=("read",))  # covers reading records, not connecting
    upstream_before = db.stat("cluster.postgres.upstream_cx_total")
    assert db.refused("", scribe)["reason"] == "grant_not_named"
    record = db.refused("g-0123456789abcdef", scribe)
    assert (record["reason"], record["grant_id"]) == ("no_grant", "")
    assert db.refused(other.id, scribe)["reason"] == "no_grant"
    assert db.stat("cluster.postgres.upstream_cx_total") == upstream_before


def test_refused_after_revocation_for_new_connections(db: Db) -> None:
    """A revoke refuses every new connection at once. Its reach over a connection already
    open is Envoy's maximum duration: that connection ends within it."""
    scribe = db.mesh.agent("scribe")
    grant = db.grant(unique("u-db"))
    conn = db.connect(grant.id, scribe)
    db.stack.admin.revoke(grant.id)
    assert db.refused(grant.id, scribe)["reason"] == "no_grant"
    assert wait_until(lambda: closed(conn), MAX_SECONDS + 5, interval=0.1)
    conn.close()


def test_an_open_connection_ends_no_later_than_its_grant(db: Db) -> None:
    """The grant outlives the maximum duration by a second: the connection is admitted,
    Envoy ends it at the maximum (flag DT) before the grant expires, and a new one is
    then refused because the grant would end first."""
    grant = db.grant(unique("u-db"), ttl=MAX_SECONDS + 2)
    conn = db.connect(grant.id, db.mesh.agent("scribe"))
    decision_id = db.records()[-1]["decision_id"]
    assert conn.execute("SELECT count(*) FROM records").fetchone() == (3,)
    assert wait_until(lambda: closed(conn), MAX_SECONDS + 5, interval=0.1)
    conn.close()
    assert wait_until(lambda: any(e["decision_id"] == decision_id for e in db.access_log()), 5)
    line = next(e for e in db.access_log() if e["decision_id"] == decision_id)
    assert line["flags"] == "DT"  # Envoy's max_downstream_connection_duration ended it
    ended = float(line["start"]) + int(line["duration_ms"]) / 1000
    assert ended <= grant.expires_at  # Envoy's clock: the connection never outlived its grant
    assert ended <= float(line["ends_at"])  # nor the end Lasthop admitted it for
    assert db.refused(grant.id, db.mesh.agent("scribe"))["reason"] in (
        "grant_ends_too_soon",
        "no_grant",  # the machine was slow enough for the grant to expire meanwhile
    )


def test_a_grant_that_ends_before_the_maximum_duration_admits_no_connection(db: Db) -> None:
    grant = db.grant(unique("u-db"), ttl=MAX_SECONDS - 1)
    assert db.refused(grant.id, db.mesh.agent("scribe"))["reason"] == "grant_ends_too_soon"


def test_another_agents_grant_is_peer_mismatch(db: Db) -> None:
    grant = db.grant(unique("u-db"))  # the scribe's
    record = db.refused(grant.id, db.mesh.agent("med-reconciler"))
    assert (record["reason"], record["agent"]) == ("peer_mismatch", "scribe")
    impostor = db.mesh.workload("impostor", "spiffe://cluster.local/ns/attacker/sa/scribe")
    assert db.refused(grant.id, impostor)["reason"] == "peer_mismatch"


def test_a_certificate_without_a_spiffe_id_is_invalid_peer(db: Db) -> None:
    grant = db.grant(unique("u-db"))
    no_uri = db.mesh.ca.issue(f"no-uri-{uuid.uuid4().hex[:6]}", dns=("scribe",), client=True)
    assert db.refused(grant.id, no_uri)["reason"] == "invalid_peer"


def test_a_suspended_agent_is_refused(db: Db) -> None:
    agent = f"db-agent-{uuid.uuid4().hex[:6]}"
    admin = db.stack.admin
    admin.register_agent(
        apb.RegisterAgentRequest(id=agent, owner="dr-alice", risk=10, allowed_purposes=[PURPOSE])
    )
    grant = db.grant(unique("u-db"), agent=agent)
    admin.suspend_agent(agent)
    assert db.refused(grant.id, db.mesh.agent(agent))["reason"] == "agent_suspended"


def test_policy_refuses_billing_whatever_grant_it_holds(db: Db) -> None:
    grant = db.grant(unique("u-db"), agent="billing-bot", purpose="billing")
    record = db.refused(grant.id, db.mesh.agent("billing-bot"))
    assert (record["reason"], record["policies"]) == (
        "billing_not_clinical",
        ["billing-never-clinical"],
    )


def test_a_listener_the_route_table_does_not_declare_is_no_database(db: Db) -> None:
    other = db.mesh.issue_listener("spiffe://cluster.local/ns/billing/sa/billing-db")
    envoy = database.envoy(
        db.stack.work,
        db.stack.lasthop.port,
        db.postgres.port,
        db.mesh,
        MAX_SECONDS,
        listener=other,
    )
    try:
        grant = db.grant(unique("u-db"))
        record = db.refused(grant.id, db.mesh.agent("scribe"), port=envoy.port)
        assert (record["reason"], record["listener"]) == (
            "no_database",
            "spiffe://cluster.local/ns/billing/sa/billing-db",
        )
    finally:
        envoy.close()


def test_envoy_refuses_what_never_reaches_lasthop(db: Db) -> None:
    """No client certificate, or PostgreSQL's SSLRequest instead of direct TLS: Envoy's TLS
    listener ends the handshake, and no check (so no record) is made."""
    grant = db.grant(unique("u-db"))
    before = len(db.records())
    args = database.connect_args(db.port, grant.id, db.mesh.agent("scribe"), db.mesh.ca.path)
    for change in ({"sslcert": "", "sslkey": ""}, {"sslnegotiation": "postgres"}):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**{**args, **change}).close()
    assert len(db.records()) == before
