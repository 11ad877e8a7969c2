"""policy.mcp: the route table's MCP endpoints map a tool call to an action and a resource."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from authz.errors import PolicyLoadError, RouteError
from authz.model import EntityRef, RpcMessage, ToolCall
from authz.policy import routes
from authz.policy.mcp import McpEndpoint, arguments_digest
from tests.conftest import POLICIES

ACTIONS = frozenset({"read", "write", "connect"})


@pytest.fixture(scope="module")
def endpoint() -> McpEndpoint:
    return routes.load(POLICIES / "routes.toml", ACTIONS).mcp["/mcp"]


def call(tool: str, **arguments: Any) -> RpcMessage:
    return RpcMessage("tools/call", tool=tool, arguments=arguments)


def refused(endpoint: McpEndpoint, *messages: RpcMessage, batch: bool = False) -> str:
    with pytest.raises(RouteError) as info:
        endpoint.resolve(list(messages), batch)
    return str(info.value.reason)


def test_a_tool_call_is_its_action_on_the_named_argument(endpoint: McpEndpoint) -> None:
    match = endpoint.resolve([call("get_medications", patient_id="p-1001")], False)
    assert (match.action, match.resource, match.parents, match.phi) == (
        "read",
        EntityRef("Medications", "p-1001"),
        (EntityRef("Patient", "p-1001"),),
        True,
    )
    canonical = b'{"patient_id":"p-1001"}'
    assert match.mcp == ToolCall(
        "tools/call",
        "get_medications",
        {"patient_id": "p-1001"},
        hashlib.sha256(canonical).hexdigest(),
    )
    assert match.template == "/mcp tools/call get_medications"


def test_the_digest_is_of_the_canonical_arguments() -> None:
    one = arguments_digest({"b": 1, "a": "\u00e9"})
    assert one == arguments_digest(json.loads('{ "a" : "\\u00e9", "b" : 1 }'))
    assert one != arguments_digest({"b": 2, "a": "\u00e9"})


def test_each_shipped_tool(endpoint: McpEndpoint) -> None:
    def target(message: RpcMessage) -> tuple[str, str]:
        match = endpoint.resolve([message], False)
        return match.action, str(match.resource)

    assert target(call("get_patient_record", patient_id="p-1")) == ("read", 'Records::"p-1"')
    assert target(call("write_note", patient_id="p-1", text="BP ok")) == ("write", 'Notes::"p-1"')
    assert target(call("get_claims", claim_id="c-9")) == ("read", 'Claim::"c-9"')
    assert target(call("get_medications", patient_id="p-1", history_days=30)) == (
        "read",
        'Medications::"p-1"',
    )


def test_a_tool_not_in_the_table(endpoint: McpEndpoint) -> None:
    assert refused(endpoint, call("export_all_patients")) == "mcp_unknown_tool"
    assert refused(endpoint, call("Get_Medications", patient_id="p-1")) == "mcp_unknown_tool"


@pytest.mark.parametrize(
    "arguments",
    [
        {},  # the required id is missing
        {"patient_id": "p-1001", "include": "all"},  # not declared
        {"patient_id": "../p-1002"},  # an id is one safe segment
        {"patient_id": ".hidden"},
        {"patient_id": 'p"1'},
        {"patient_id": "p" * 129},
        {"patient_id": 1001},
        {"patient_id": ["p-1001"]},
        {"patient_id": {"__entity": {"type": "Patient", "id": "p-1002"}}},
        {"patient_id": "p-1", "history_days": "30"},
        {"patient_id": "p-1", "history_days": True},
        {"patient_id": "p-1", "history_days": 1 << 63},
        {"patient_id": "p-1", "history_days": 1.5},
    ],
)
def test_arguments_must_be_the_declared_shape(
    endpoint: McpEndpoint, arguments: dict[str, Any]
) -> None:
    assert refused(endpoint, call("get_medications", **arguments)) == "mcp_invalid_arguments"


def test_a_string_argument_takes_any_string_but_nothing_else(endpoint: McpEndpoint) -> None:
    note = call("write_note", patient_id="p-1", text='He said "stop" \u00e9')
    assert endpoint.resolve([note], False).mcp is not None
    assert refused(endpoint, call("write_note", patient_id="p-1", text=None)) == (
        "mcp_invalid_arguments"
    )


def test_other_methods_follow_their_rules(endpoint: McpEndpoint) -> None:
    for method in ("initialize", "tools/list", "ping", "server/discover", "notifications/cancel"):
        match = endpoint.resolve([RpcMessage(method)], False)
        assert (match.action, str(match.resource), match.phi) == (
            "connect",
            'McpServer::"ehr"',
            False,
        )
        assert match.mcp == ToolCall(method)
    assert refused(endpoint, RpcMessage("resources/read")) == "mcp_method_not_allowed"
    assert refused(endpoint, RpcMessage("notifications")) == "mcp_method_not_allowed"
    assert refused(endpoint, RpcMessage("")) == "mcp_method_not_allowed"  # a response


def test_a_batch_is_decided_as_a_whole_only_when_it_can_be(endpoint: McpEndpoint) -> None:
    both = [RpcMessage("notifications/initialized", True), RpcMessage("tools/list")]
    match = endpoint.resolve(both, True)
    assert match.action == "connect" and match.mcp == ToolCall("batch")
    with_call = [RpcMessage("tools/list"), call("get_claims", claim_id="c-1")]
    assert refused(endpoint, *with_call, batch=True) == "mcp_batch_refused"
    assert refused(endpoint, call("get_claims", claim_id="c-1"), batch=True) == (
        "mcp_batch_refused"
    )
    assert refused(endpoint, RpcMessage("tools/list"), RpcMessage("x/y"), batch=True) == (
        "mcp_method_not_allowed"
    )


TABLE = """
[[mcp]]
path = "/mcp"
[[mcp.method]]
methods = ["initialize"]
action = "connect"
resource = 'McpServer::"a"'
phi = false
[[mcp.method]]
methods = ["tools/list"]
action = "connect"
resource = 'McpServer::"b"'
phi = false
[[mcp.tool]]
name = "get"
action = "read"
resource = 'Records::"{id}"'
arguments = { id = "id", flag = "boolean?" }
"""


def load(tmp_path: Path, text: str) -> routes.RouteTable:
    path = tmp_path / "routes.toml"
    path.write_text(text)
    return routes.load(path, ACTIONS)


def test_a_batch_over_two_resources_is_refused(tmp_path: Path) -> None:
    endpoint = load(tmp_path, TABLE).mcp["/mcp"]
    pair = [RpcMessage("initialize"), RpcMessage("tools/list")]
    assert refused(endpoint, *pair, batch=True) == "mcp_batch_refused"
    flag = endpoint.resolve([call("get", id="r", flag=False)], False)
    assert flag.mcp is not None and flag.mcp.arguments == {"id": "r", "flag": False}
    assert refused(endpoint, call("get", id="r", flag=0)) == "mcp_invalid_arguments"


def test_only_a_post_goes_to_the_endpoint(tmp_path: Path) -> None:
    table = load(tmp_path, TABLE)
    assert table.mcp_endpoint("POST", "/mcp") is table.mcp["/mcp"]
    assert table.mcp_endpoint("GET", "/mcp") is None
    assert table.mcp_endpoint("POST", "/mcp/") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('path = "/mcp"', 'path = "/mcp/{x}"'), "`path` must be a fixed path"),
        (('path = "/mcp"', 'path = "/a/../mcp"'), "path `/a/../mcp`"),
        (('path = "/mcp"', 'path = "/mcp"\nmax_body_bytes = 0'), "`max_body_bytes` must be"),
        (('path = "/mcp"', 'path = "/mcp"\nmax_depth = 65'), "`max_depth` must be"),
        (('path = "/mcp"', 'path = "/mcp"\nbody_limit = 1'), "unknown keys ['body_limit']"),
        (('methods = ["initialize"]', 'methods = ["tools/call"]'), "declare `[[mcp.tool]]`"),
        (('methods = ["initialize"]', 'methods = ["tools/*/x"]'), "is not a method"),
        (('methods = ["initialize"]', "methods = []"), "non-empty list"),
        (('methods = ["tools/list"]', 'methods = ["initialize"]'), "has a rule already"),
        (('name = "get"', 'name = "get me"'), "`name` must be"),
        (('flag = "boolean?"', 'flag = "float"'), "kind must be one of"),
        (('"{id}"', '"{flag}"'), "uses unknown parameters ['flag']"),  # optional: not an id
        (('action = "read"', 'action = "erase"'), "action `erase` is not declared"),
        (("resource = 'McpServer::\"a\"'", "resource = 'McpServer::\"{x}\"'"), "methods take"),
        (("[[mcp.tool]]", "[[mcp.tools]]"), "unknown keys ['tools']"),
    ],
)
def test_a_bad_endpoint_stops_loading_and_names_it(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(PolicyLoadError) as info:
        load(tmp_path, TABLE.replace(*change, 1))
    assert "mcp endpoint 1" in str(info.value)
    assert message in str(info.value)


def test_a_tool_declared_twice_and_a_post_route_on_the_endpoint(tmp_path: Path) -> None:
    tool = TABLE[TABLE.index("[[mcp.tool]]") :]
    with pytest.raises(PolicyLoadError, match="tool `get` is declared twice"):
        load(tmp_path, TABLE + tool)
    route = '[[route]]\nmethod = "POST"\npath = "/mcp"\naction = "read"\nresource = \'R::"x"\'\n'
    with pytest.raises(PolicyLoadError, match="both a route and an MCP endpoint"):
        load(tmp_path, route + TABLE)
    with pytest.raises(PolicyLoadError, match="declared twice"):
        load(tmp_path, TABLE + TABLE)
