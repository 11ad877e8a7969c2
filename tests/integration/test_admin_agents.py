"""The Agents admin API (`lasthop.v1.Agents`) and `lasthop agents`: bad input, callers and roles.

Every call is tried with bad input and with every kind of caller that must be refused;
each refusal carries a code and a reason, and the registry is compared before and after:
nothing changes. `lasthop:admin` may do everything; `lasthop:approver` may issue, list
and revoke grants and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from authz._proto import agents_pb2 as apb
from authz._proto import agents_pb2_grpc as apb_grpc
from authz.cli.admin_client import AdminClient
from authz.dev.tokens import ADMIN_AUDIENCE, ISSUER, DemoIssuer
from authz.errors import AdminError
from tests.integration.conftest import PURPOSE, RECORDS, Stack, assert_deny, run_cli, unique

pytestmark = pytest.mark.integration

ADMIN_ONLY = "token scope must include one of ['lasthop:admin']"


def _claims(**overrides: Any) -> dict[str, Any]:
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


def _refused(stack: Stack, name: str) -> tuple[str, str, str]:
    """(token, gRPC code name, a fragment of the reason) for each caller that must be refused."""
    issuer = stack.issuer
    now = int(time.time())
    cases: dict[str, Callable[[], tuple[str, str, str]]] = {
        "empty-bearer": lambda: ("", "unauthenticated", "malformed_authorization"),
        "expired": lambda: (
            issuer.sign(_claims(iat=now - 900, exp=now - 300)),
            "unauthenticated",
            "token_expired",
        ),
        "other-issuers-key": lambda: (
            DemoIssuer("ES256", kid=issuer.kid).admin_token(),
            "unauthenticated",
            "bad_signature",
        ),
        "other-issuer": lambda: (
            issuer.sign(_claims(iss="https://idp.elsewhere.example")),
            "unauthenticated",
            "invalid_issuer",
        ),
        "agent-access-token": lambda: (
            issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE, scope="lasthop:admin"),
            "unauthenticated",
            "invalid_audience",
        ),
        "agent-delegated": lambda: (
            issuer.sign(_claims(sub="dr-alice", act={"sub": "scribe"}, client_id="scribe")),
            "permission_denied",
            "delegated (agent) token",
        ),
        "approver": lambda: (
            issuer.admin_token(sub="nurse-lead", scope="lasthop:approver"),
            "permission_denied",
            ADMIN_ONLY,
        ),
        "openid": lambda: (
            issuer.admin_token(scope="openid profile"),
            "permission_denied",
            ADMIN_ONLY,
        ),
    }
    return cases[name]()


REFUSED = [
    "empty-bearer",
    "expired",
    "other-issuers-key",
    "other-issuer",
    "agent-access-token",
    "agent-delegated",
    "approver",
    "openid",
]


@pytest.fixture(scope="module")
def target(stack: Stack) -> Iterator[str]:
    """An agent of this module's own, active, with a live grant: what refused calls aim at."""
    agent_id = f"adm-target-{uuid.uuid4().hex[:6]}"
    stack.admin.register_agent(
        apb.RegisterAgentRequest(
            id=agent_id,
            owner="dr-alice",
            risk=25,
            allowed_purposes=[PURPOSE],
            description="target of the refused admin calls",
        )
    )
    yield agent_id
    with contextlib.suppress(AdminError):  # a test may have deregistered it already
        stack.admin.deregister_agent(agent_id)


def _snapshot(stack: Stack) -> list[dict[str, Any]]:
    return [MessageToDict(a) for a in stack.admin.list_agents()]


def _calls(client: AdminClient, target: str) -> dict[str, Callable[[], object]]:
    """Every Agents RPC, each with a request that would succeed for an admin."""
    return {
        "RegisterAgent": lambda: client.register_agent(
            apb.RegisterAgentRequest(
                id=f"adm-new-{uuid.uuid4().hex[:6]}", owner="dr-alice", risk=10
            )
        ),
        "GetAgent": lambda: client.get_agent(target),
        "ListAgents": lambda: client.list_agents(),
        "UpdateAgent": lambda: client.update_agent(apb.UpdateAgentRequest(id=target, risk=90)),
        "SuspendAgent": lambda: client.suspend_agent(target),
        "ResumeAgent": lambda: client.resume_agent(target),
        "DeregisterAgent": lambda: client.deregister_agent(target),
    }


@pytest.mark.parametrize("caller", REFUSED)
def test_grpc_refuses_every_agents_call_from_a_refused_caller(
    stack: Stack, target: str, caller: str
) -> None:
    token, code, reason = _refused(stack, caller)
    before = _snapshot(stack)
    client = AdminClient(stack.admin_address, token)
    try:
        for name, call in _calls(client, target).items():
            with pytest.raises(AdminError) as refused:
                call()
            message = str(refused.value)
            assert message.startswith(f"{code}: "), (name, message)
            assert reason in message, (name, message)
    finally:
        client.close()
    assert _snapshot(stack) == before


def test_grpc_calls_without_metadata_are_unauthenticated(stack: Stack, target: str) -> None:
    before = _snapshot(stack)
    with grpc.insecure_channel(stack.admin_address) as channel:
        stub = apb_grpc.AgentsStub(channel)
        ref = apb.AgentRef(id=target)
        for call, req in (
            (
                stub.RegisterAgent,
                apb.RegisterAgentRequest(id="adm-nometa", owner="dr-alice", risk=1),
            ),
            (stub.GetAgent, ref),
            (stub.ListAgents, apb.ListAgentsRequest()),
            (stub.UpdateAgent, apb.UpdateAgentRequest(id=target, risk=1)),
            (stub.SuspendAgent, ref),
            (stub.ResumeAgent, ref),
            (stub.DeregisterAgent, ref),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call(req, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "missing_token" in (refused.value.details() or "")
    assert _snapshot(stack) == before


def _bad_requests(target: str) -> list[Any]:
    """(id, call(client), code, reason fragment)."""
    register = apb.RegisterAgentRequest
    update = apb.UpdateAgentRequest

    def reg(**fields: Any) -> Callable[[AdminClient], object]:
        base: dict[str, Any] = dict(
            id=f"adm-bad-{uuid.uuid4().hex[:6]}",
            owner="dr-alice",
            risk=10,
            allowed_purposes=[PURPOSE],
        )
        return lambda c: c.register_agent(register(**{**base, **fields}))

    def upd(**fields: Any) -> Callable[[AdminClient], object]:
        return lambda c: c.update_agent(update(id=target, **fields))

    bad = "invalid_argument"
    return [
        pytest.param(reg(id="Scribe-2"), bad, "id `Scribe-2` must be", id="register-uppercase-id"),
        pytest.param(reg(id=""), bad, "id `` must be", id="register-empty-id"),
        pytest.param(reg(id="-lead"), bad, "id `-lead` must be", id="register-id-leading-dash"),
        pytest.param(reg(id="a" * 64), bad, "must be 1-63", id="register-id-too-long"),
        pytest.param(reg(id="has space"), bad, "id `has space`", id="register-id-with-space"),
        pytest.param(reg(id="x/../y"), bad, "id `x/../y`", id="register-id-with-slash"),
        pytest.param(reg(owner=""), bad, "`owner` must name", id="register-empty-owner"),
        pytest.param(reg(owner="   "), bad, "`owner` must name", id="register-blank-owner"),
        pytest.param(
            reg(risk=101), bad, "`risk` must be an integer 0 to 100", id="register-risk-101"
        ),
        pytest.param(
            reg(risk=-1), bad, "`risk` must be an integer 0 to 100", id="register-risk-neg"
        ),
        pytest.param(
            reg(allowed_purposes=[""]),
            bad,
            "purpose `` is not a purpose name",
            id="register-empty-purpose",
        ),
        pytest.param(
            reg(allowed_purposes=["two words"]),
            bad,
            "purpose `two words`",
            id="register-bad-purpose",
        ),
        pytest.param(
            reg(description="x" * 1001),
            bad,
            "`description` must be at most 1000",
            id="register-long-description",
        ),
        pytest.param(
            reg(id=target),
            "already_exists",
            f"agent `{target}` is already registered",
            id="register-duplicate",
        ),
        pytest.param(
            reg(id="scribe"),
            "already_exists",
            "agent `scribe` is already registered",
            id="register-duplicate-seed-agent",
        ),
        pytest.param(
            lambda c: c.get_agent("no-such-agent"),
            "not_found",
            "no agent `no-such-agent`",
            id="get-unknown",
        ),
        pytest.param(lambda c: c.get_agent(""), "not_found", "no agent ``", id="get-empty-id"),
        pytest.param(upd(), bad, "nothing to update", id="update-nothing"),
        pytest.param(
            upd(risk=101), bad, "`risk` must be an integer 0 to 100", id="update-risk-101"
        ),
        pytest.param(upd(risk=-1), bad, "`risk` must be an integer 0 to 100", id="update-risk-neg"),
        pytest.param(upd(owner=""), bad, "`owner` must name", id="update-empty-owner"),
        pytest.param(
            upd(allowed_purposes=[""], set_allowed_purposes=True),
            bad,
            "purpose `` is not a purpose name",
            id="update-empty-purpose",
        ),
        pytest.param(
            lambda c: c.update_agent(update(id="no-such-agent", risk=5)),
            "not_found",
            "no agent `no-such-agent`",
            id="update-unknown",
        ),
        pytest.param(
            lambda c: c.suspend_agent("no-such-agent"),
            "not_found",
            "no agent `no-such-agent`",
            id="suspend-unknown",
        ),
        pytest.param(
            lambda c: c.resume_agent("no-such-agent"),
            "not_found",
            "no agent `no-such-agent`",
            id="resume-unknown",
        ),
        pytest.param(
            lambda c: c.deregister_agent("no-such-agent"),
            "not_found",
            "no agent `no-such-agent`",
            id="deregister-unknown",
        ),
    ]


@pytest.mark.parametrize(("call", "code", "reason"), _bad_requests("adm-target-bad"))
def test_grpc_bad_input_is_refused_and_changes_nothing(
    stack: Stack, call: Callable[[AdminClient], object], code: str, reason: str
) -> None:
    _ensure(stack, "adm-target-bad")
    before = _snapshot(stack)
    with pytest.raises(AdminError) as refused:
        call(stack.admin)
    assert str(refused.value).startswith(f"{code}: "), str(refused.value)
    assert reason in str(refused.value), str(refused.value)
    assert _snapshot(stack) == before


def test_grpc_list_with_an_unknown_status_is_refused(stack: Stack) -> None:
    with pytest.raises(AdminError, match="^invalid_argument: "):
        stack.admin.list_agents(status="suspend")


def _ensure(stack: Stack, agent_id: str) -> None:
    try:
        stack.admin.get_agent(agent_id)
    except AdminError:
        stack.admin.register_agent(
            apb.RegisterAgentRequest(
                id=agent_id, owner="dr-alice", risk=10, allowed_purposes=[PURPOSE]
            )
        )


# The CLI -------------------------------------------------------------------------------


def _cli(stack: Stack, *args: str, token: str | None = None) -> Any:
    env = {"LASTHOP_ADMIN_URL": stack.admin_address}
    if token is not None:
        env["LASTHOP_ADMIN_TOKEN"] = token
    return run_cli("agents", *args, env=env)


EXIT_CODES = {"unauthenticated": 4, "permission_denied": 4, "not_found": 3}  # else usage, 2


def _assert_cli_refused(result: Any, code: str, reason: str) -> None:
    expected = EXIT_CODES.get(code, 2)
    assert result.returncode == expected, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith(f"lasthop: {code}: "), result.stderr
    assert reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("caller", REFUSED[1:])
def test_cli_refuses_a_refused_caller(stack: Stack, target: str, caller: str) -> None:
    token, code, reason = _refused(stack, caller)
    before = _snapshot(stack)
    _assert_cli_refused(_cli(stack, "suspend", target, token=token), code, reason)
    assert _snapshot(stack) == before


def test_cli_without_a_token_says_how_to_pass_one(stack: Stack, target: str) -> None:
    before = _snapshot(stack)
    result = _cli(stack, "deregister", target)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        "lasthop: no admin token: pass --admin-token-file FILE, or set "
        "LASTHOP_ADMIN_TOKEN_FILE or LASTHOP_ADMIN_TOKEN"
    )
    assert _snapshot(stack) == before


CLI_COMMANDS = [
    ["register", "adm-cli-new", "--owner", "dr-alice", "--risk", "10"],
    ["show", "{target}"],
    ["list"],
    ["update", "{target}", "--risk", "90"],
    ["suspend", "{target}"],
    ["resume", "{target}"],
    ["deregister", "{target}"],
]


@pytest.mark.parametrize("command", CLI_COMMANDS, ids=[c[0] for c in CLI_COMMANDS])
def test_cli_approver_cannot_touch_agents(stack: Stack, target: str, command: list[str]) -> None:
    token = stack.issuer.admin_token(sub="nurse-lead", scope="lasthop:approver")
    before = _snapshot(stack)
    args = [a.format(target=target) for a in command]
    _assert_cli_refused(_cli(stack, *args, token=token), "permission_denied", ADMIN_ONLY)
    assert _snapshot(stack) == before


@pytest.mark.parametrize(
    ("args", "code", "reason"),
    [
        pytest.param(
            ["register", "Bad_ID", "--owner", "dr-alice", "--risk", "5"],
            "invalid_argument",
            "id `Bad_ID` must be",
            id="register-bad-id",
        ),
        pytest.param(
            ["register", "adm-cli-x", "--owner", "", "--risk", "5"],
            "invalid_argument",
            "`owner` must name",
            id="register-empty-owner",
        ),
        pytest.param(
            ["register", "adm-cli-x", "--owner", "dr-alice", "--risk", "101"],
            "invalid_argument",
            "`risk` must be an integer 0 to 100",
            id="register-risk-101",
        ),
        pytest.param(
            ["register", "adm-cli-x", "--owner", "dr-alice", "--risk", "-1"],
            "invalid_argument",
            "`risk` must be an integer 0 to 100",
            id="register-risk-neg",
        ),
        pytest.param(
            ["register", "adm-cli-x", "--owner", "dr-alice", "--risk", "5", "--purpose", ""],
            "invalid_argument",
            "purpose `` is not a purpose name",
            id="register-empty-purpose",
        ),
        pytest.param(
            ["register", "scribe", "--owner", "dr-alice", "--risk", "5"],
            "already_exists",
            "agent `scribe` is already registered",
            id="register-duplicate",
        ),
        pytest.param(
            ["update", "{target}"], "invalid_argument", "nothing to update", id="update-nothing"
        ),
        pytest.param(
            ["update", "{target}", "--risk", "101"],
            "invalid_argument",
            "`risk` must be an integer 0 to 100",
            id="update-risk-101",
        ),
        pytest.param(
            ["show", "no-such-agent"], "not_found", "no agent `no-such-agent`", id="show-unknown"
        ),
        pytest.param(
            ["suspend", "no-such-agent"],
            "not_found",
            "no agent `no-such-agent`",
            id="suspend-unknown",
        ),
        pytest.param(
            ["resume", "no-such-agent"],
            "not_found",
            "no agent `no-such-agent`",
            id="resume-unknown",
        ),
        pytest.param(
            ["deregister", "no-such-agent"],
            "not_found",
            "no agent `no-such-agent`",
            id="deregister-unknown",
        ),
    ],
)
def test_cli_bad_input_exits_by_kind_and_changes_nothing(
    stack: Stack, target: str, args: list[str], code: str, reason: str
) -> None:
    before = _snapshot(stack)
    result = _cli(stack, *[a.format(target=target) for a in args], token=stack.issuer.admin_token())
    _assert_cli_refused(result, code, reason)
    assert _snapshot(stack) == before


def test_cli_risk_that_is_not_a_number_is_a_usage_error(stack: Stack) -> None:
    before = _snapshot(stack)
    result = _cli(
        stack,
        "register",
        "adm-cli-y",
        "--owner",
        "dr-alice",
        "--risk",
        "high",
        token=stack.issuer.admin_token(),
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "argument --risk: invalid int value: 'high'" in result.stderr
    assert _snapshot(stack) == before


# Roles: what an admin and an approver may do ----------------------------------------------


def _json(result: Any) -> Any:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_cli_admin_can_do_everything(stack: Stack) -> None:
    token = stack.issuer.admin_token(sub="ops-lead")
    agent = f"adm-life-{uuid.uuid4().hex[:6]}"

    def run(*args: str) -> Any:
        return _json(_cli(stack, *args, "--output", "json", token=token))

    [made] = run(
        "register",
        agent,
        "--owner",
        "dr-alice",
        "--risk",
        "35",
        "--purpose",
        PURPOSE,
        "--description",
        "lifecycle",
    )
    assert (made["id"], made["risk_tier"], made["status"], made["registered_by"]) == (
        agent,
        "medium",
        "active",
        "ops-lead",
    )
    assert [a["id"] for a in run("list", "--owner", "dr-alice", "--status", "active")].count(
        agent
    ) == 1
    [updated] = run("update", agent, "--risk", "80", "--owner", "dr-bea")
    assert (updated["risk"], updated["risk_tier"], updated["owner"]) == (80, "high", "dr-bea")
    assert run("show", agent)[0]["owner"] == "dr-bea"

    user = unique("u-adm-life")
    token_for_agent = stack.token(user, [agent])
    stack.grant(user, agent)
    assert_deny(stack.get(RECORDS, token_for_agent), 403, "policy_denied")  # no permit names it
    assert run("suspend", agent)[0]["status"] == "suspended"
    assert_deny(stack.get(RECORDS, token_for_agent), 403, "agent_suspended")
    assert agent in [a["id"] for a in run("list", "--status", "suspended")]
    assert run("resume", agent)[0]["status"] == "active"
    assert_deny(stack.get(RECORDS, token_for_agent), 403, "policy_denied")
    assert run("deregister", agent)[0]["id"] == agent
    assert_deny(stack.get(RECORDS, token_for_agent), 403, "agent_unregistered")
    assert stack.admin.list(agent=agent) == []
    assert agent not in [a["id"] for a in run("list")]


def test_cli_approver_can_issue_list_and_revoke_grants(stack: Stack) -> None:
    user = unique("u-approver-cli")  # an approver approves for themselves
    token = stack.issuer.admin_token(sub=user, scope="lasthop:approver")
    env = {"LASTHOP_ADMIN_URL": stack.admin_address, "LASTHOP_ADMIN_TOKEN": token}
    issued = _json(
        run_cli(
            "grants",
            "issue",
            "--agent",
            "scribe",
            "--user",
            user,
            "--action",
            "read",
            "--resource",
            'Patient::"p-1001"',
            "--purpose",
            PURPOSE,
            "--ttl",
            "5m",
            "--output",
            "json",
            env=env,
        )
    )
    assert issued["issued_by"] == user
    listed = _json(run_cli("grants", "list", "--user", user, "--output", "json", env=env))
    assert [g["id"] for g in listed] == [issued["id"]]
    shown = _json(run_cli("grants", "show", issued["id"], "--output", "json", env=env))
    assert [g["id"] for g in shown] == [issued["id"]]
    token_for_scribe = stack.token(user, ["scribe"])
    assert stack.get(RECORDS, token_for_scribe).status == 200
    revoked = run_cli("grants", "revoke", issued["id"], env=env)
    assert revoked.returncode == 0 and issued["id"] in revoked.stdout, revoked.stderr
    assert_deny(stack.get(RECORDS, token_for_scribe), 403, "no_grant")


def test_grpc_approver_is_refused_agents_but_not_grants(stack: Stack, target: str) -> None:
    token = stack.issuer.admin_token(sub="nurse-lead", scope="openid lasthop:approver")
    client = AdminClient(stack.admin_address, token)
    try:
        assert client.list(agent="scribe", user="nurse-lead") == []  # its own grants
        with pytest.raises(AdminError, match="^permission_denied: "):
            client.get_agent(target)
    finally:
        client.close()
