"""Issue 11 against a running `lasthop serve`: its gRPC ports, as an attacker reaches them.

1. A deeply nested admin token: the admin API answered gRPC UNKNOWN (a
   RecursionError); now UNAUTHENTICATED, with the reason.
3. A CheckRequest protobuf cannot decode, sent straight to the ext_authz port:
   gRPC UNKNOWN and no audit record; now an OK RPC carrying a 400 deny, recorded.
4. `"scribe\\n"` and other ids with a trailing newline: refused by the admin API.
10. A grant for a suspended agent was issued (FAILED_PRECONDITION now); an
    approver could grant on behalf of anyone (now only for themselves, an
    admin for anyone).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as pb
from google.rpc import code_pb2

from authz._proto import agents_pb2 as apb
from authz._proto import grants_pb2 as gpb
from authz.cli.admin_client import AdminClient
from authz.codec import b64url_decode
from authz.errors import AdminError
from tests.integration.conftest import (
    PURPOSE,
    RECORDS,
    Stack,
    assert_deny,
    read_audit,
    unique,
    wait_until,
)
from tests.test_tokens_adversarial import raw_token

pytestmark = pytest.mark.integration

CHECK = "/envoy.service.auth.v3.Authorization/Check"


def issue_request(user: str, agent: str = "scribe", **changes: Any) -> gpb.IssueGrantRequest:
    fields: dict[str, Any] = {
        "agent": agent,
        "user": user,
        "actions": ["read"],
        "resources": ['Patient::"p-1001"'],
        "purpose": PURPOSE,
        "ttl_seconds": 300,
        **changes,
    }
    return gpb.IssueGrantRequest(**fields)


# --- 1. a deeply nested admin token ------------------------------------------------------------


def test_a_deeply_nested_admin_token_is_unauthenticated(stack: Stack) -> None:
    header_part, payload_part, _ = stack.issuer.admin_token().split(".")
    header = b64url_decode(header_part)
    payload = b64url_decode(payload_part).decode()
    control = AdminClient(stack.admin_address, raw_token(header, payload.encode(), stack.issuer))
    deep = payload[:-1] + ', "x": ' + "[" * 2500 + "]" * 2500 + "}"
    attack = AdminClient(stack.admin_address, raw_token(header, deep.encode(), stack.issuer))
    try:
        assert control.list_agents()
        with pytest.raises(AdminError) as err:
            attack.list_agents()
        assert err.value.code == "unauthenticated"
        assert "malformed_token" in err.value.detail
    finally:
        control.close()
        attack.close()


# --- 3. an undecodable CheckRequest -----------------------------------------------------------


def test_raw_bytes_protobuf_cannot_decode_get_an_ok_rpc_with_a_recorded_deny(stack: Stack) -> None:
    message = pb.CheckRequest()
    message.attributes.request.http.path = "/XX"
    message.attributes.request.http.method = "GET"
    good = message.SerializeToString()
    bad = good.replace(b"/XX", b"/\xff\xfe")  # invalid UTF-8 in a string field
    channel = grpc.insecure_channel(stack.lasthop.ready["listen"])
    check = channel.unary_unary(
        CHECK, request_serializer=None, response_deserializer=pb.CheckResponse.FromString
    )
    try:
        control = check(good, timeout=5)
        assert json.loads(control.denied_response.body)["reason"] == "missing_token"
        resp = check(bad, timeout=5)  # an OK RPC: no grpc.RpcError
    finally:
        channel.close()
    assert resp.status.code == code_pb2.INVALID_ARGUMENT
    assert resp.denied_response.status.code == 400
    body = json.loads(resp.denied_response.body)
    assert (body["decision"], body["reason"]) == ("deny", "malformed_request")

    def recorded() -> list[dict[str, Any]]:
        return [
            r for r in read_audit(stack.audit_path) if r.get("decision_id") == body["decision_id"]
        ]

    assert wait_until(lambda: bool(recorded()), timeout=5)
    [record] = recorded()
    assert (record["decision"], record["status"], record["reason"]) == (
        "deny",
        400,
        "malformed_request",
    )


# --- 4. ids with a trailing newline -----------------------------------------------------------


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"id": "scribe\n"}, "id `scribe\n`"),
        ({"owner": "dr-alice\n"}, "`owner` must name"),
        ({"allowed_purposes": ["clinical-documentation\n"]}, "is not a purpose name"),
        ({"spiffe_id": "spiffe://td/ns/x/sa/y\n"}, "`spiffe_id`"),
    ],
    ids=["id", "owner", "purpose", "spiffe_id"],
)
def test_ids_with_a_trailing_newline_are_refused_by_the_agents_api(
    stack: Stack, changes: dict[str, Any], field: str
) -> None:
    fields: dict[str, Any] = {"id": f"nl-{uuid.uuid4().hex[:6]}", "owner": "dr-alice", "risk": 5}
    with pytest.raises(AdminError) as err:
        stack.admin.register_agent(apb.RegisterAgentRequest(**{**fields, **changes}))
    assert err.value.code == "invalid_argument"
    assert field in err.value.detail
    assert "scribe\n" not in {a.id for a in stack.admin.list_agents()}


@pytest.mark.parametrize(
    "changes",
    [
        {"user": "dr-alice\n"},
        {"purpose": PURPOSE + "\n"},
        {"resources": ['Patient::"p-1001"\n']},
        {"agent": "scribe\n"},
    ],
    ids=["user", "purpose", "resource", "agent"],
)
def test_ids_with_a_trailing_newline_are_refused_by_the_grants_api(
    stack: Stack, changes: dict[str, Any]
) -> None:
    fields = {"user": unique("u-nl"), **changes}
    with pytest.raises(AdminError) as err:
        stack.admin.issue(issue_request(**fields))
    assert err.value.code == "invalid_argument"


# --- 10. who may grant, and to whom --------------------------------------------------------------


def test_no_grant_for_a_suspended_agent(stack: Stack) -> None:
    agent = f"susp-{uuid.uuid4().hex[:6]}"
    stack.admin.register_agent(
        apb.RegisterAgentRequest(id=agent, owner="dr-alice", risk=10, allowed_purposes=[PURPOSE])
    )
    user = unique("u-susp")
    stack.admin.issue(issue_request(user, agent))  # the control: active, it gets one
    stack.admin.suspend_agent(agent)
    with pytest.raises(AdminError) as err:
        stack.admin.issue(issue_request(user, agent))
    assert err.value.code == "failed_precondition"
    assert f"agent `{agent}` is suspended" in err.value.detail
    stack.admin.deregister_agent(agent)
    with pytest.raises(AdminError) as gone:
        stack.admin.issue(issue_request(user, agent))
    assert (gone.value.code, f"unknown agent `{agent}`" in gone.value.detail) == (
        "invalid_argument",
        True,
    )


def test_an_approver_grants_only_for_themselves(stack: Stack) -> None:
    approver, patient_of_someone_else = unique("u-nurse"), unique("u-other")
    client = AdminClient(
        stack.admin_address, stack.issuer.admin_token(sub=approver, scope="lasthop:approver")
    )
    try:
        own = client.issue(issue_request(approver))
        assert own.issued_by == approver
        with pytest.raises(AdminError) as err:
            client.issue(issue_request(patient_of_someone_else))
        assert err.value.code == "permission_denied"
        assert f"`{approver}` approves only for themselves" in err.value.detail
        # nor may it read, list or revoke someone else's
        theirs = stack.admin.issue(issue_request(patient_of_someone_else))  # an admin may
        for call in (
            lambda: client.get(theirs.id),
            lambda: client.revoke(theirs.id),
            lambda: client.list(user=patient_of_someone_else),
        ):
            with pytest.raises(AdminError) as denied:
                call()
            assert denied.value.code == "permission_denied"
        assert [g.id for g in client.list()] == [own.id]  # its own, unasked
        assert client.get(own.id).id == own.id
    finally:
        client.close()
    # the refused grant does not exist, and the admin's still works
    token = stack.token(patient_of_someone_else, ["scribe"])
    assert stack.get(RECORDS, token).status == 200
    assert [g.id for g in stack.admin.list(user=patient_of_someone_else)] == [theirs.id]
    stack.admin.revoke(theirs.id)
    assert_deny(stack.get(RECORDS, token), 403, "no_grant")
