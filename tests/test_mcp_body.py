"""check.mcp: an MCP body is read strictly; each way it can be wrong has its own reason."""

from __future__ import annotations

import json

import pytest

from authz.check import mcp
from authz.errors import LasthopError, RouteError, Unavailable
from authz.model import CheckInput, RpcMessage
from authz.reasons import Reason

CALL = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {"name": "get_medications", "arguments": {"patient_id": "p-1001"}},
}


def req(body: bytes | None, partial: bool = False, **headers: str) -> CheckInput:
    fields = {"method": "POST", "path": "/mcp", "host": "ehr", "headers": {}}
    fields["headers"] = {k.replace("_", "-"): [v] for k, v in headers.items()}
    if body is None or partial:
        return CheckInput(body=body, body_partial=partial, **fields)  # type: ignore[arg-type]
    return CheckInput.with_body(body, **fields)


def read(body: bytes | None, partial: bool = False, **headers: str) -> list[RpcMessage]:
    messages, _ = mcp.read(req(body, partial, **headers), 65_536, 16)
    return messages


def reason(body: bytes | None, partial: bool = False, **headers: str) -> tuple[str, int]:
    with pytest.raises(LasthopError) as info:
        read(body, partial, **headers)
    return str(info.value.reason), info.value.status


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def test_a_tool_call_is_read() -> None:
    assert read(dumps(CALL)) == [
        RpcMessage("tools/call", tool="get_medications", arguments={"patient_id": "p-1001"})
    ]
    assert (
        mcp.call_body("get_medications", {"patient_id": "p-1001"})
        == json.dumps({**CALL, "id": 1}, separators=(",", ":")).encode()
    )


def test_requests_notifications_responses_and_batches() -> None:
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    listing = {"jsonrpc": "2.0", "id": "a", "method": "tools/list", "params": {"_meta": {}}}
    response = {"jsonrpc": "2.0", "id": 3, "result": {}}
    messages, batch = mcp.read(req(dumps([note, listing, response])), 65_536, 16)
    assert batch
    assert messages == [
        RpcMessage("notifications/initialized", is_notification=True),
        RpcMessage("tools/list"),
        RpcMessage(""),
    ]
    assert mcp.read(req(dumps(listing)), 65_536, 16)[1] is False


def test_no_body_is_envoy_set_up_wrong_a_503() -> None:
    with pytest.raises(Unavailable) as info:
        read(None)
    assert (info.value.reason, info.value.status) == (Reason.MCP_BODY_MISSING, 503)


def test_a_partial_body_is_refused_whatever_it_holds() -> None:
    assert reason(dumps(CALL), partial=True) == ("mcp_body_partial", 413)


def test_the_size_bound_is_checked_before_parsing() -> None:
    body = dumps(CALL)
    with pytest.raises(RouteError) as info:
        mcp.read(req(body + b" " * 10), len(body) + 9, 16)
    assert (info.value.reason, info.value.status) == (Reason.MCP_BODY_TOO_LARGE, 413)
    assert mcp.read(req(body + b" " * 10), len(body) + 10, 16)[0][0].tool == "get_medications"
    with pytest.raises(RouteError) as info:  # not JSON, but too large is said first
        mcp.read(req(b"x" * 100), 99, 16)
    assert info.value.reason == Reason.MCP_BODY_TOO_LARGE


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xff" + dumps(CALL), "mcp_invalid_encoding"),  # not UTF-8
        (b"\xef\xbb\xbf" + dumps(CALL), "mcp_invalid_encoding"),  # a BOM
        (dumps(CALL).replace(b"p-1001", b"\\ud800"), "mcp_invalid_encoding"),  # lone surrogate
        (dumps(CALL).replace(b"p-1001", b"\\udc00x"), "mcp_invalid_encoding"),
        (dumps(CALL).replace(b'"patient_id"', b'"\\ud800"'), "mcp_invalid_encoding"),  # in a key
        ("\u00e9".encode("utf-16"), "mcp_invalid_encoding"),
        (b"", "mcp_not_json"),
        (b"{", "mcp_not_json"),
        (dumps(CALL) + b"{}", "mcp_not_json"),  # two documents
        (b'{"jsonrpc": "2.0", "id": NaN, "method": "ping"}', "mcp_not_json"),
        (b"[" * 30_000 + b"]" * 30_000, "mcp_too_deep"),  # json's RecursionError
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "mcp_too_deep"),
        (b"[" * 17 + b"]" * 17, "mcp_too_deep"),  # over max_depth, under the recursion limit
        (b'{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}', "mcp_duplicate_member"),
    ],
)
def test_what_is_not_strict_json(body: bytes, expected: str) -> None:
    assert reason(body)[0] == expected
    assert reason(body)[1] == 400


def test_a_duplicate_tool_name_is_refused_not_resolved() -> None:
    """Regression: `json` keeps the last `name`, another server may keep the first."""
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_claims",'
        b'"name":"get_patient_record","arguments":{"claim_id":"c-1"}}}'
    )
    assert reason(body) == ("mcp_duplicate_member", 400)


def test_a_valid_surrogate_pair_is_fine() -> None:
    body = dumps(CALL).replace(b"p-1001", b"\\ud83d\\ude00")
    assert read(body)[0].arguments == {"patient_id": "\U0001f600"}


def message(**changes: object) -> bytes:
    doc = {**CALL, **changes}
    return dumps({k: v for k, v in doc.items() if v is not None})


@pytest.mark.parametrize(
    "body",
    [
        dumps([]),  # an empty batch
        dumps("tools/call"),
        dumps([1]),
        message(jsonrpc="1.0"),
        message(jsonrpc=None),
        message(method=""),
        message(method=3),
        message(id=None, params={"name": "x"}),  # a tool call with no id
        message(id=True),
        message(id=1.5),
        message(id={"a": 1}),
        message(params=[]),
        message(extra=1),
        message(params={"name": "get_medications", "arguments": [], "x": 1}),
        message(params={"name": "get_medications", "arguments": []}),
        message(params={"name": 3}),
        message(params={"arguments": {}}),
        message(params={"name": "get_medications", "task": {}}),
        dumps({"jsonrpc": "2.0", "id": 1}),  # neither request nor response
        dumps({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}),
        dumps({"jsonrpc": "2.0", "id": None, "result": {}}),
    ],
)
def test_what_is_not_a_json_rpc_message(body: bytes) -> None:
    assert reason(body) == ("mcp_invalid_message", 400)


def test_routing_headers_must_say_what_the_body_says() -> None:
    body = dumps(CALL)
    assert read(body, mcp_method="tools/call", mcp_name="get_medications")
    assert read(body, mcp_name="=?base64?Z2V0X21lZGljYXRpb25z?=")  # MCP's encoded form
    for name, value in (
        ("mcp_method", "tools/list"),
        ("mcp_name", "get_claims"),
        ("mcp_name", "=?base64?Z2V0X2NsYWltcw==?="),  # get_claims, encoded
        ("mcp_name", "=?base64?!!?="),
    ):
        assert reason(body, False, **{name: value}) == ("mcp_header_mismatch", 400), value
    twice = CheckInput.with_body(
        body, method="POST", path="/mcp", host="h", headers={"mcp-method": ["tools/call"] * 2}
    )
    with pytest.raises(RouteError) as info:
        mcp.read(twice, 65_536, 16)
    assert info.value.reason == Reason.MCP_HEADER_MISMATCH
