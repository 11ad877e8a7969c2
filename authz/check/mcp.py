"""The body of a POST to an MCP endpoint -> its JSON-RPC messages, or a specific refusal.

Lasthop decides on the bytes Envoy will forward, so it parses them itself, and
strictly: whatever it cannot read exactly as the server will is refused.

    body      Envoy sent all of it (`with_request_body`, `allow_partial_message: false`):
              none at all is `mcp_body_missing` (a 503: Envoy is set up wrong),
              part of it `mcp_body_partial`; at most the endpoint's
              `max_body_bytes` (`mcp_body_too_large`), checked before parsing
    JSON      strict UTF-8 (`mcp_invalid_encoding`), one document (`mcp_not_json`),
              at most `max_depth` deep (`mcp_too_deep`), no member twice
              (`mcp_duplicate_member`): see `codec.strict_json`
    JSON-RPC  each message a 2.0 request, notification or response with no other
              members; a request's `id` a string or an integer; `params` an
              object; a batch a non-empty array (`mcp_invalid_message`)
    tools/call  `params` holds `name` (a string), `arguments` (an object, or
              absent) and `_meta`, nothing else (`mcp_invalid_message`)
    headers   `mcp-method` and `mcp-name`, which MCP clients send so proxies can
              route without the body, say what the body says (`mcp_header_mismatch`)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from authz.codec import JsonError, printable, strict_json
from authz.errors import RouteError, Unavailable
from authz.model import CheckInput, RpcMessage
from authz.policy.mcp import TOOLS_CALL
from authz.reasons import Reason

METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
_JSON_REASONS = {
    "encoding": Reason.MCP_INVALID_ENCODING,
    "syntax": Reason.MCP_NOT_JSON,
    "depth": Reason.MCP_TOO_DEEP,
    "duplicate": Reason.MCP_DUPLICATE_MEMBER,
}
_REQUEST_KEYS = frozenset({"jsonrpc", "id", "method", "params"})
_RESPONSE_KEYS = (frozenset({"jsonrpc", "id", "result"}), frozenset({"jsonrpc", "id", "error"}))
_CALL_KEYS = frozenset({"name", "arguments", "_meta"})
_BASE64_HEADER = re.compile(r"=\?base64\?([A-Za-z0-9+/=]*)\?=")


def read(req: CheckInput, max_body_bytes: int, max_depth: int) -> tuple[list[RpcMessage], bool]:
    """(messages, is a batch) from the request's body, or RouteError / Unavailable."""
    body = _body(req, max_body_bytes)
    try:
        document = strict_json(body, max_depth)
    except JsonError as err:
        raise RouteError(_JSON_REASONS[err.kind], f"the body: {err}") from None
    batch = isinstance(document, list)
    items = document if batch else [document]
    if not items:
        raise _invalid("an empty batch")
    messages = [_message(item, index if batch else None) for index, item in enumerate(items)]
    _check_headers(req.headers, messages)
    return messages, batch


def _body(req: CheckInput, max_body_bytes: int) -> bytes:
    if req.body is None:
        raise Unavailable(
            Reason.MCP_BODY_MISSING,
            "Envoy sent no request body: set `with_request_body` on the MCP route's ext_authz",
        )
    if req.body_partial:
        raise RouteError(
            Reason.MCP_BODY_PARTIAL,
            "Envoy sent only the start of the body: set `allow_partial_message: false`",
        )
    if len(req.body) > max_body_bytes:
        raise RouteError(
            Reason.MCP_BODY_TOO_LARGE,
            f"the body is {len(req.body)} bytes, more than the {max_body_bytes} allowed",
        )
    return req.body


def _message(item: Any, index: int | None) -> RpcMessage:
    where = "the message" if index is None else f"message {index + 1} of the batch"
    if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
        raise _invalid(f"{where} is not a JSON-RPC 2.0 object")
    keys = item.keys()
    if "method" not in item:
        if keys not in _RESPONSE_KEYS or not _is_id(item["id"]):
            raise _invalid(f"{where} is neither a request nor a response")
        return RpcMessage(method="")
    method, params = item["method"], item.get("params", {})
    if not keys <= _REQUEST_KEYS or not isinstance(method, str) or not method:
        raise _invalid(f"{where}: a request has `jsonrpc`, `method`, `id` and `params` only")
    if "id" in item and not _is_id(item["id"]):
        raise _invalid(f"{where}: `id` must be a string or an integer")
    if not isinstance(params, dict):
        raise _invalid(f"{where}: `params` must be an object")
    if method != TOOLS_CALL:
        return RpcMessage(method=method, is_notification="id" not in item)
    return _call(params, where, "id" not in item)


def _call(params: dict[str, Any], where: str, is_notification: bool) -> RpcMessage:
    name, arguments = params.get("name"), params.get("arguments", {})
    if not params.keys() <= _CALL_KEYS:
        unknown = sorted(params.keys() - _CALL_KEYS)[0]
        raise _invalid(f"{where}: `tools/call` takes no `{printable(unknown)}` in `params`")
    if is_notification:
        raise _invalid(f"{where}: a `tools/call` needs an `id`")
    if not isinstance(name, str) or not isinstance(arguments, dict):
        raise _invalid(f"{where}: `params.name` must be a string, `params.arguments` an object")
    return RpcMessage(method=TOOLS_CALL, tool=name, arguments=arguments)


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _check_headers(headers: dict[str, list[str]], messages: list[RpcMessage]) -> None:
    """What a proxy or the server may route on must be what Lasthop decided on."""
    for header in (METHOD_HEADER, NAME_HEADER):
        values = headers.get(header)
        if values is None:
            continue
        if header == METHOD_HEADER:
            said = {m.method for m in messages}
        else:
            said = {m.tool for m in messages if m.method == TOOLS_CALL}
        if len(values) != 1 or said != {_header_value(values[0])}:
            raise RouteError(
                Reason.MCP_HEADER_MISMATCH,
                f"`{header}: {printable(', '.join(values))}` is not what the body says",
            )


def _header_value(value: str) -> str:
    """MCP sends a value that is not plain ASCII as `=?base64?...?=`."""
    match = _BASE64_HEADER.fullmatch(value.strip())
    if match is None:
        return value.strip()
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return value  # never equal to a parsed name, so refused as a mismatch


def _invalid(detail: str) -> RouteError:
    return RouteError(Reason.MCP_INVALID_MESSAGE, detail)


def call_body(tool: str, arguments: dict[str, Any], request_id: int = 1) -> bytes:
    """The JSON-RPC body of a `tools/call`, as an MCP client sends it (CLI, scenarios, tests)."""
    message = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": TOOLS_CALL,
        "params": {"name": tool, "arguments": arguments},
    }
    return json.dumps(message, separators=(",", ":")).encode("utf-8")
