"""Database connections decided in process: every rule of `authz.check.connection`, each refusal
with its reason, what an allow carries to Envoy, the audit record, the metrics and the
accounting of disclosures. Through a real Envoy and PostgreSQL: tests/integration/test_database.py.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as pb
from prometheus_client import CollectorRegistry

from authz.audit.disclosures import account
from authz.audit.records import AuditRecord, MemoryAudit
from authz.model import CheckInput, Connection, Decision, Grant
from authz.server import ext_authz
from authz.server.metrics import Metrics
from authz.stores.embedded import EmbeddedGrantStore
from tests.conftest import Clock, PipelineFactory

TEMPLATE = "spiffe://cluster.local/ns/agents/sa/{agent}"
LISTENER = "spiffe://cluster.local/ns/ehr/sa/ehr-db"
EHR_DB = 'Database::"ehr"'
MAX_SECONDS = 300  # connections.max_duration_seconds at its default


def peer(agent: str) -> str:
    return TEMPLATE.format(agent=agent)


def db_grant(
    clock: Clock,
    agent: str = "scribe",
    user: str = "dr-alice",
    ttl: int = 900,
    purpose: str = "clinical-documentation",
    resources: tuple[str, ...] = (EHR_DB,),
    actions: tuple[str, ...] = ("connect",),
    max_uses: int = 0,
) -> Grant:
    now = int(clock.now)
    return Grant(
        id=f"g-{secrets.token_hex(8)}",
        agent=agent,
        user=user,
        actions=actions,
        resources=resources,
        purpose=purpose,
        issued_by=user,
        issued_at=now,
        expires_at=now + ttl,
        max_uses=max_uses,
    )


def connect(
    grant: Grant | str, agent: str = "scribe", listener: str = LISTENER, principal: str = ""
) -> CheckInput:
    name = grant if isinstance(grant, str) else f"{grant.id}.ehr-db.lasthop.test"
    return CheckInput(
        method="",
        path="",
        host="",
        headers={},
        peer_principal=principal or peer(agent),
        connection=Connection(listener=listener, server_name=name, source="127.0.0.1:50000"),
    )


class Env:
    def __init__(self, make_pipeline: PipelineFactory, clock: Clock) -> None:
        clock.now = float(int(clock.now))  # grants expire on whole seconds
        self.clock = clock
        self.store = EmbeddedGrantStore(clock)
        self.audit = MemoryAudit()
        self.registry = CollectorRegistry()
        self.pipeline = make_pipeline(
            store=self.store,
            audit=self.audit,
            observer=Metrics(self.registry),
            spiffe_id_template=TEMPLATE,
        )

    def held(self, grant: Grant) -> Grant:
        asyncio.run(self.store.put(grant))
        return grant

    def check(self, req: CheckInput) -> Decision:
        return asyncio.run(self.pipeline.check(req))


@pytest.fixture
def env(make_pipeline: PipelineFactory, clock: Clock) -> Env:
    return Env(make_pipeline, clock)


def test_an_agent_connects_under_the_grant_it_names(env: Env) -> None:
    grant = env.held(db_grant(env.clock))
    decision = env.check(connect(grant))
    assert (decision.allowed, decision.reason, decision.kind) == (True, "allowed", "connection")
    assert decision.chain is not None and decision.chain.render() == "dr-alice -> scribe"
    assert decision.intent is not None and decision.intent.purpose == "clinical-documentation"
    assert decision.grant == grant
    assert decision.ends_at == env.clock.now + MAX_SECONDS <= grant.expires_at
    assert decision.cedar is not None
    assert decision.cedar["context"]["connection"] == {"peer": peer("scribe"), "listener": LISTENER}
    record = env.audit.records[-1]
    assert isinstance(record, AuditRecord)
    assert (record.kind, record.listener, record.peer) == ("connection", LISTENER, peer("scribe"))
    assert (record.action, record.resource, record.grant_id) == ("connect", EHR_DB, grant.id)
    assert (record.user, record.agent, record.decision, record.phi) == (
        "dr-alice",
        "scribe",
        "allow",
        True,
    )


def test_the_server_name_is_read_without_case(env: Env) -> None:
    grant = env.held(db_grant(env.clock))
    decision = env.check(connect(f"{grant.id.upper()}.EHR-DB.lasthop.test"))
    assert decision.reason == "allowed"


@pytest.mark.parametrize(
    "principal",
    ["", "CN=scribe", "spiffe://cluster.local/ns/agents/sa/scribe/", "https://scribe.example"],
)
def test_no_spiffe_id_in_the_client_certificate_is_invalid_peer(env: Env, principal: str) -> None:
    grant = env.held(db_grant(env.clock))
    req = replace(connect(grant), peer_principal=principal)
    decision = env.check(req)
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, "invalid_peer")


@pytest.mark.parametrize(
    "server_name",
    ["", "ehr-db.lasthop.test", "g-0123456789abcdef", "g-0123.ehr-db.lasthop.test", "127.0.0.1"],
)
def test_a_connection_that_names_no_grant_is_refused(env: Env, server_name: str) -> None:
    env.held(db_grant(env.clock))  # the agent holds one: it must still name it
    decision = env.check(connect(server_name))
    assert (decision.allowed, decision.reason) == (False, "grant_not_named")
    assert "<grant id>.<host>" in decision.detail


def test_a_grant_that_does_not_exist_or_was_revoked_is_no_grant(env: Env) -> None:
    decision = env.check(connect("g-0123456789abcdef.ehr-db.lasthop.test"))
    assert (decision.reason, decision.detail) == (
        "no_grant",
        "grant `g-0123456789abcdef` does not exist, was revoked or expired",
    )
    grant = env.held(db_grant(env.clock))
    assert env.check(connect(grant)).allowed
    asyncio.run(env.store.revoke(grant.id))
    assert env.check(connect(grant)).reason == "no_grant"


def test_another_agents_grant_binds_no_one_else(env: Env) -> None:
    """A grant id is no secret: naming the scribe's grant from the med-reconciler's workload,
    or from a workload in another namespace with the scribe's name, is `peer_mismatch`."""
    grant = env.held(db_grant(env.clock))
    for principal in (peer("med-reconciler"), "spiffe://cluster.local/ns/attacker/sa/scribe"):
        decision = env.check(connect(grant, principal=principal))
        assert (decision.allowed, decision.reason) == (False, "peer_mismatch"), principal


def test_a_suspended_agent_does_not_connect(env: Env) -> None:
    grant = env.held(db_grant(env.clock, agent="chart-exporter", user="bob"))
    decision = env.check(connect(grant, agent="chart-exporter"))
    assert (decision.allowed, decision.reason) == (False, "agent_suspended")


def test_an_unregistered_agent_does_not_connect(env: Env) -> None:
    grant = env.held(db_grant(env.clock, agent="ghost"))
    decision = env.check(connect(grant, agent="ghost"))
    assert (decision.allowed, decision.reason) == (False, "agent_unregistered")


def test_a_listener_the_route_table_does_not_declare_is_no_database(env: Env) -> None:
    grant = env.held(db_grant(env.clock))
    for listener in ("spiffe://cluster.local/ns/ehr/sa/billing-db", ""):
        decision = env.check(connect(grant, listener=listener))
        assert (decision.allowed, decision.reason) == (False, "no_database"), listener


@pytest.mark.parametrize(
    ("actions", "resources"),
    [(("read",), (EHR_DB,)), (("connect",), ('Database::"billing"',)), (("connect",), ())],
)
def test_a_grant_that_does_not_cover_connect_on_the_database_is_no_grant(
    env: Env, actions: tuple[str, ...], resources: tuple[str, ...]
) -> None:
    grant = env.held(db_grant(env.clock, actions=actions, resources=resources))
    decision = env.check(connect(grant))
    assert (decision.allowed, decision.reason) == (False, "no_grant")


def test_an_expired_grant_is_grant_expired(env: Env) -> None:
    grant = env.held(db_grant(env.clock, ttl=900))
    env.clock.now = grant.expires_at
    decision = env.check(connect(grant))
    assert (decision.allowed, decision.reason) == (False, "grant_expired")


def test_a_grant_that_ends_before_the_connection_would_is_refused(env: Env) -> None:
    """No connection outlives its grant: Envoy ends each at the maximum duration, so a grant
    with less left than that admits none (it would have, one second earlier)."""
    grant = env.held(db_grant(env.clock, ttl=MAX_SECONDS))
    assert env.check(connect(grant)).allowed
    env.clock.now += 1
    decision = env.check(connect(grant))
    assert (decision.allowed, decision.reason) == (False, "grant_ends_too_soon")
    assert "connections.max_duration_seconds" in decision.detail


def test_policy_decides_who_may_hold_a_connect_grant(env: Env) -> None:
    grant = env.held(db_grant(env.clock, agent="billing-bot", user="bob", purpose="billing"))
    decision = env.check(connect(grant, agent="billing-bot"))
    assert (decision.allowed, decision.reason) == (False, "billing_not_clinical")
    assert decision.policies == ("billing-never-clinical",)


def test_the_agent_must_be_allowed_the_grants_purpose(env: Env) -> None:
    grant = env.held(db_grant(env.clock, purpose="billing"))
    decision = env.check(connect(grant))
    assert (decision.allowed, decision.reason) == (False, "purpose_not_allowed")


def test_each_connection_spends_a_use_of_a_use_limited_grant(env: Env) -> None:
    grant = env.held(db_grant(env.clock, max_uses=1))
    assert env.check(connect(grant)).allowed
    decision = env.check(connect(grant))
    assert (decision.allowed, decision.reason) == (False, "grant_exhausted")


def test_metrics_count_connections_apart(env: Env) -> None:
    grant = env.held(db_grant(env.clock))
    env.check(connect(grant))
    env.check(connect("nothing"))

    def value(name: str, **labels: str) -> float | None:
        return env.registry.get_sample_value(name, labels)

    allowed = {"decision": "allow", "reason": "allowed"}
    assert value("lasthop_decisions_total", kind="connection", **allowed) == 1.0
    assert value("lasthop_decisions_total", kind="http", **allowed) == 0.0
    denied = {"decision": "deny", "reason": "grant_not_named"}
    assert value("lasthop_decisions_total", kind="connection", **denied) == 1.0
    assert value("lasthop_check_duration_seconds_count", kind="connection") == 2.0
    assert value("lasthop_check_duration_seconds_count", kind="mcp") == 0.0


def test_a_connection_is_a_disclosure_of_the_whole_database(env: Env) -> None:
    grant = env.held(db_grant(env.clock))
    env.check(connect(grant))
    env.check(connect("nothing"))  # a deny discloses nothing
    records = [r.to_dict() for r in env.audit.records if isinstance(r, AuditRecord)]
    for rows in (account(records, user="dr-alice"), account(records, patient="p-1001")):
        assert [(r.recipient, r.description, r.grant_id, r.purpose) for r in rows] == [
            (
                "scribe",
                f"connect {EHR_DB} (database connection: the whole database)",
                grant.id,
                "clinical-documentation",
            )
        ]
    assert account(records, user="bob") == []


# --- the Envoy side: a network CheckRequest in, a response Envoy acts on out -------------------


def network_check(server_name: str, principal: str = peer("scribe")) -> pb.CheckRequest:
    request = pb.CheckRequest()
    attrs = request.attributes
    attrs.source.principal = principal
    attrs.source.address.socket_address.address = "10.1.2.3"
    attrs.source.address.socket_address.port_value = 41000
    attrs.destination.principal = LISTENER
    attrs.tls_session.sni = server_name
    return request


def test_envoys_network_check_request_round_trip(env: Env) -> None:
    grant = env.held(db_grant(env.clock))
    check = ext_authz.to_input(network_check(f"{grant.id}.ehr-db.lasthop.test"))
    assert check.connection == Connection(
        listener=LISTENER, server_name=f"{grant.id}.ehr-db.lasthop.test", source="10.1.2.3:41000"
    )
    assert check.peer_principal == peer("scribe") and check.method == check.path == ""
    decision = env.check(check)
    response = pb.CheckResponse.FromString(ext_authz.to_response(decision, check))
    assert response.status.code == 0 and not response.HasField("ok_response")
    metadata = dict(response.dynamic_metadata)
    assert metadata == {
        "decision_id": decision.decision_id,
        "agent": "scribe",
        "user": "dr-alice",
        "grant": grant.id,
        "database": EHR_DB,
        "grant_expires_at": float(grant.expires_at),
        "ends_at": env.clock.now + MAX_SECONDS,
    }


def test_a_refused_connection_is_a_non_ok_check_status(env: Env) -> None:
    """Envoy's network filter closes the connection on any check status but OK; the gRPC
    call itself stays OK, so `failure_mode_allow` never applies."""
    check = ext_authz.to_input(network_check("ehr-db.lasthop.test"))
    decision = env.check(check)
    response = pb.CheckResponse.FromString(ext_authz.to_response(decision, check))
    assert decision.reason == "grant_not_named"
    assert response.status.code == 7  # PERMISSION_DENIED
    assert not response.dynamic_metadata.fields
