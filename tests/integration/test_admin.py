"""The admin API's caller authentication (gRPC and CLI), and the `lasthop grants` CLI."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import grpc
import pytest

from authz._proto import grants_pb2 as pb
from authz._proto import grants_pb2_grpc as pb_grpc
from authz.cli.admin_client import AdminClient
from authz.dev.tokens import ADMIN_AUDIENCE, ISSUER, DemoIssuer
from authz.errors import AdminError
from tests.integration.conftest import PURPOSE, RECORDS, Stack, assert_deny, run_cli, unique

pytestmark = pytest.mark.integration


def _issue_request(user: str) -> pb.IssueGrantRequest:
    return pb.IssueGrantRequest(
        agent="scribe",
        user=user,
        actions=["read"],
        resources=['Patient::"p-1001"'],
        purpose=PURPOSE,
        ttl_seconds=300,
    )


def _admin_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": ADMIN_AUDIENCE,
        "sub": "ops-admin",
        "scope": "lasthop:admin",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        **overrides,
    }


def _refused_tokens(stack: Stack) -> dict[str, tuple[str, str]]:
    """name -> (token, the gRPC code it must get)."""
    issuer = stack.issuer
    forger = DemoIssuer("ES256", kid=issuer.kid)
    now = int(time.time())
    return {
        "no-token": ("", "unauthenticated"),
        "not-a-jwt": ("not-a-jwt", "unauthenticated"),
        "expired": (issuer.sign(_admin_claims(iat=now - 900, exp=now - 300)), "unauthenticated"),
        "wrong-audience": (
            issuer.access_token("ops-admin", [], scope="lasthop:admin"),
            "unauthenticated",
        ),
        "other-key": (forger.admin_token(), "unauthenticated"),
        "delegated": (
            issuer.sign(_admin_claims(sub="dr-alice", act={"sub": "scribe"}, client_id="scribe")),
            "permission_denied",
        ),
        "scope-openid": (issuer.admin_token(scope="openid"), "permission_denied"),
        "scope-missing": (
            issuer.sign({k: v for k, v in _admin_claims().items() if k != "scope"}),
            "permission_denied",
        ),
    }


REFUSED = [
    "no-token",
    "not-a-jwt",
    "expired",
    "wrong-audience",
    "other-key",
    "delegated",
    "scope-openid",
    "scope-missing",
]


@pytest.mark.parametrize("name", REFUSED)
def test_grpc_refuses_bad_admin_tokens(stack: Stack, name: str) -> None:
    token, code = _refused_tokens(stack)[name]
    user = unique(f"u-adm-{name}")
    client = AdminClient(stack.admin_address, token)
    try:
        with pytest.raises(AdminError) as refused:
            client.issue(_issue_request(user))
        assert str(refused.value).startswith(f"{code}:"), str(refused.value)
        with pytest.raises(AdminError, match=f"^{code}:"):
            client.list(user=user)
        with pytest.raises(AdminError, match=f"^{code}:"):
            client.revoke("g-0000000000000000")
    finally:
        client.close()
    assert stack.admin.list(user=user) == []
    assert_deny(stack.get(RECORDS, stack.token(user, ["scribe"])), 403, "no_grant")


def test_grpc_approver_scope_can_issue_and_revoke(stack: Stack) -> None:
    """An approver approves for themselves (authz.access.authority): `user` is its `sub`."""
    user = unique("u-approver")
    client = AdminClient(
        stack.admin_address,
        stack.issuer.admin_token(sub=user, scope="openid lasthop:approver"),
    )
    try:
        grant = client.issue(_issue_request(user))
        assert grant.issued_by == user
        assert [g.id for g in client.list(agent="scribe", user=user)] == [grant.id]
        assert stack.get(RECORDS, stack.token(user, ["scribe"])).status == 200
        client.revoke(grant.id)
    finally:
        client.close()
    assert_deny(stack.get(RECORDS, stack.token(user, ["scribe"])), 403, "no_grant")


def _grants(stack: Stack, *args: str) -> Any:
    return run_cli(
        "grants",
        *args,
        "--admin-url",
        stack.admin_address,
        env={"LASTHOP_ADMIN_TOKEN": stack.issuer.admin_token()},
    )


def _listed(stack: Stack, user: str, agent: str = "") -> list[dict[str, Any]]:
    args = ["list", "--user", user, "--output", "json"] + (["--agent", agent] if agent else [])
    result = _grants(stack, *args)
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, Any]] = json.loads(result.stdout)
    return listed


def _issue_args(user: str, **changes: str) -> list[str]:
    options = {
        "--agent": "scribe",
        "--user": user,
        "--action": "read",
        "--resource": 'Patient::"p-1001"',
        "--purpose": PURPOSE,
        "--ttl": "15m",
    }
    options.update(changes)
    args = ["issue"]
    for key, value in options.items():
        args += [key, value]
    return args


def test_cli_without_token_exits_2(stack: Stack) -> None:
    user = unique("u-cli-notoken")
    result = run_cli("grants", *_issue_args(user), "--admin-url", stack.admin_address)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "no admin token" in result.stderr
    assert result.stdout == ""
    assert _listed(stack, user) == []


@pytest.mark.parametrize("name", ["expired", "wrong-audience", "delegated", "scope-openid"])
def test_cli_with_refused_token_exits_4(stack: Stack, name: str) -> None:
    """Issue 18: every error exited 2; a refused token is 4, and it comes from a file."""
    token, code = _refused_tokens(stack)[name]
    user = unique("u-cli-refused")
    token_file = stack.work / f"token-{user}"
    token_file.write_text(token + "\n")
    result = run_cli(
        "grants",
        *_issue_args(user),
        "--admin-url",
        stack.admin_address,
        "--admin-token-file",
        str(token_file),
    )
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert code in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert _listed(stack, user) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"--agent": "ghost-agent"}, "unknown agent", id="unknown-agent"),
        pytest.param({"--ttl": "9h"}, "ttl", id="ttl-over-max"),
        pytest.param({"--ttl": "abc"}, "--ttl", id="ttl-not-a-duration"),
        pytest.param({"--action": ""}, "action", id="empty-action"),
        pytest.param({"--action": "delete"}, "unknown action", id="unknown-action"),
        pytest.param({"--resource": "p-1001"}, "entity", id="resource-not-entity"),
        pytest.param({"--purpose": ""}, "purpose", id="empty-purpose"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(
    stack: Stack, changes: dict[str, str], message: str
) -> None:
    user = unique("u-cli-bad")
    result = _grants(stack, *_issue_args(user, **changes))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("lasthop: "), result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert _listed(stack, user) == []


def test_cli_issue_list_revoke(stack: Stack) -> None:
    user = unique("u-cli")
    issued = _grants(
        stack, *_issue_args(user, **{"--ttl": "2m"}), "--max-uses", "5", "--output", "json"
    )
    assert issued.returncode == 0, issued.stderr
    grant = json.loads(issued.stdout)
    assert grant["id"].startswith("g-")
    assert (grant["agent"], grant["user"], grant["purpose"]) == ("scribe", user, PURPOSE)
    assert grant["actions"] == ["read"] and grant["resources"] == ['Patient::"p-1001"']
    assert int(grant["expires_at"]) - int(grant["issued_at"]) == 120
    assert int(grant["max_uses"]) == 5

    assert [g["id"] for g in _listed(stack, user, agent="scribe")] == [grant["id"]]
    table = _grants(stack, "list", "--agent", "scribe", "--user", user)
    assert table.returncode == 0 and grant["id"] in table.stdout

    token = stack.token(user, ["scribe"])
    assert stack.get(RECORDS, token).status == 200

    revoked = _grants(stack, "revoke", grant["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"revoked {grant['id']}"
    assert _listed(stack, user, agent="scribe") == []
    assert_deny(stack.get(RECORDS, token), 403, "no_grant")

    # A retry (the first answer lost, say) says so from the tombstone: never not_found.
    again = _grants(stack, "revoke", grant["id"])
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"already revoked {grant['id']}"
    unknown = _grants(stack, "revoke", "g-0000000000000000")
    assert unknown.returncode == 3 and "not_found" in unknown.stderr, unknown.stderr  # not found


def test_grpc_call_without_authorization_metadata(stack: Stack) -> None:
    channel = grpc.insecure_channel(stack.admin_address)
    try:
        stub = pb_grpc.GrantsStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListGrants(pb.ListGrantsRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            stub.IssueGrant(_issue_request(unique("u-nometa")), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
