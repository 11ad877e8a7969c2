"""Envoy's ext_authz protocol <-> Lasthop's decisions. Pure translation, no I/O.

- Headers are read from `header_map` (raw, one entry per header line) when Envoy
  sends it, else from `headers` (Envoy joins repeats with a comma there).
- An allow is `OkHttpResponse` with the `x-lasthop-*` identity headers set, and
  the signed `x-lasthop-receipt` when receipts are on, after removing every
  `x-lasthop-*` header the client sent (in any `-`/`_` spelling) and every
  method override header (`authz.check.headers` says why). It is encoded
  straight to bytes (`wire`); the identity headers of a chain and intent, and
  the usual list of headers to remove, are encoded once.
- When Envoy sends the request body (`with_request_body`), it goes to the
  pipeline as sent (`raw_body` with `pack_as_bytes`, else `body`), marked
  partial unless Envoy says `x-envoy-auth-partial-body: false`; the SHA-256 of
  a whole body is bound into the receipt. No such header: Envoy sent no body.
- The request id is Envoy's `x-request-id` (the sidecar config forwards it), else
  the CheckRequest's own `id`.
- The W3C `traceparent` the check continues: the one Envoy puts on the gRPC call
  (its ext_authz span, when Envoy traces), else the request's own (when the
  sidecar config forwards `traceparent`); an invalid one is ignored.
- A CheckRequest protobuf cannot decode (invalid UTF-8 in a string field, say)
  is decoded here, not by gRPC, so that it too gets a deny (400
  `malformed_request`) and an audit record rather than a gRPC error.
- A network CheckRequest (Envoy's network ext_authz, in front of a database)
  has no `request` attribute: it becomes a `CheckInput` with a `Connection`
  (the listener's principal, the TLS server name, the client's address) and
  the client certificate's principal as the peer. Its allow is an OK status
  with `dynamic_metadata` (decision id, agent, user, grant, database, and when
  the connection ends at the latest), which Envoy puts on the connection under
  `envoy.filters.network.ext_authz` for its access log; its deny is any other
  status, on which Envoy closes the connection.
- A deny is `DeniedHttpResponse` with its reason's status (401, 403, 503; 400
  or 413 for an MCP body or an undecodable request) and a JSON body;
  a 401 adds `www-authenticate`. A deny for want of a usable grant (`no_grant`,
  `grant_expired`, `task_mismatch`, `purpose_mismatch`, `grant_exhausted`)
  adds `needs`: the action, resource and purpose a grant would need, so the
  agent can request exactly that (`lasthop access request`) and nothing wider.
  The gRPC status is always OK: a gRPC error would reach Envoy's
  `failure_mode_allow`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as attributes
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2

from authz import codec
from authz.check import headers as request_headers
from authz.errors import MalformedRequest
from authz.model import CheckInput, Connection, Decision, split_target
from authz.reasons import Reason
from authz.server import wire

HEADER_PREFIX = "x-lasthop-"
RECEIPT_HEADER = "x-lasthop-receipt"
DECISION_ID_HEADER = "x-lasthop-decision-id"
IDENTITY_HEADERS = (
    "x-lasthop-user",
    "x-lasthop-agent",
    "x-lasthop-chain",
    "x-lasthop-purpose",
    "x-lasthop-txn",
)
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
MAX_HEADER_VALUE = 512
ENCODINGS = 4096  # distinct identities, and lists of headers to remove, kept encoded
_GRPC_CODE = {
    400: code_pb2.INVALID_ARGUMENT,  # an MCP body, or a CheckRequest, Lasthop cannot read
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    413: code_pb2.INVALID_ARGUMENT,  # an MCP body too large or cut
}
NEEDS_GRANT = frozenset(
    {
        Reason.NO_GRANT,
        Reason.GRANT_EXPIRED,
        Reason.TASK_MISMATCH,
        Reason.PURPOSE_MISMATCH,
        Reason.GRANT_EXHAUSTED,
    }
)
# What an undecodable CheckRequest is recorded as: nothing about it can be trusted.
UNREADABLE = CheckInput(method="", path="", host="", headers={})


def decode(raw: bytes) -> pb.CheckRequest:
    """The CheckRequest in `raw`; raises MalformedRequest if protobuf cannot decode it."""
    try:
        return pb.CheckRequest.FromString(raw)
    except DecodeError as err:
        raise MalformedRequest(f"undecodable CheckRequest: {err}") from None


def to_input(request: pb.CheckRequest, call_traceparent: str = "") -> CheckInput:
    """`call_traceparent`: the `traceparent` metadata of the gRPC call, if any."""
    if not request.attributes.HasField("request"):
        return _connection(request.attributes, call_traceparent)
    http = request.attributes.request.http
    headers: dict[str, list[str]] = {}
    if http.header_map.headers:
        for entry in http.header_map.headers:
            value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
            headers.setdefault(entry.key.lower(), []).append(value)
    else:
        for key, value in http.headers.items():
            headers[key.lower()] = [value]
    path, _ = split_target(http.path)
    body, partial = _body(http, headers)
    return CheckInput(
        method=http.method.upper(),
        path=path,
        host=http.host,
        headers=headers,
        peer_principal=request.attributes.source.principal,
        request_id=headers.get("x-request-id", [http.id])[0][:128],
        body_sha256=hashlib.sha256(body).hexdigest() if body is not None and not partial else "",
        body=body,
        body_partial=partial,
        traceparent=codec.traceparent(call_traceparent)
        or codec.traceparent(headers.get("traceparent", [""])[0]),
    )


def _connection(attrs: attributes.AttributeContext, call_traceparent: str) -> CheckInput:
    """A network CheckRequest: a new connection, known by its two certificates."""
    source = attrs.source.address.socket_address
    return CheckInput(
        method="",
        path="",
        host="",
        headers={},
        peer_principal=attrs.source.principal,
        connection=Connection(
            listener=attrs.destination.principal,
            server_name=attrs.tls_session.sni,
            source=f"{source.address}:{source.port_value}" if source.address else "",
        ),
        traceparent=codec.traceparent(call_traceparent),
    )


def _body(
    http: attributes.AttributeContext.HttpRequest, headers: dict[str, list[str]]
) -> tuple[bytes | None, bool]:
    """(the body Envoy sent, whether only part of it); (None, False) when it sends none."""
    said = headers.get(PARTIAL_BODY_HEADER)
    if said is None:
        return None, False
    body = http.raw_body if http.raw_body else http.body.encode("utf-8")
    return body, said != ["false"]


def to_response(decision: Decision, request: CheckInput, overrides: Iterable[str] = ()) -> bytes:
    """The serialised `CheckResponse` for `decision` on `request`. `overrides`: the method
    override headers an allow removes (from the settings)."""
    if decision.allowed:
        if request.connection is not None:
            return _allow_connection(decision)
        return _allow(decision, request, tuple(overrides))
    serialised: bytes = _deny(decision).SerializeToString()
    return serialised


def _allow(decision: Decision, request: CheckInput, overrides: tuple[str, ...]) -> bytes:
    chain, intent = decision.chain, decision.intent
    assert chain is not None and intent is not None
    body = _identity(chain.user, chain.agents, intent.purpose, intent.txn)
    body += wire.ok_header(DECISION_ID_HEADER, _header_safe(decision.decision_id))
    if decision.receipt:  # base64url by construction, and must not be cut at 512 characters
        body += wire.ok_header(RECEIPT_HEADER, decision.receipt)
    body += _removals(_spelled_as_ours(request.headers), bool(decision.receipt), overrides)
    return wire.STATUS_OK + wire.field(wire.RESPONSE_OK, body)


@functools.lru_cache(maxsize=ENCODINGS)
def _identity(user: str, agents: tuple[str, ...], purpose: str, txn: str) -> bytes:
    """The identity headers, encoded: user, agent, chain, purpose, txn."""
    values = (user, agents[-1] if agents else user, ",".join((user, *agents)), purpose, txn)
    return b"".join(
        wire.ok_header(name, _header_safe(value))
        for name, value in zip(IDENTITY_HEADERS, values, strict=True)
    )


def _spelled_as_ours(headers: Mapping[str, list[str]]) -> tuple[str, ...]:
    """The client's header names that read as Lasthop's own (`-` or `_`), in order."""
    return tuple(h for h in headers if h.replace("_", "-").startswith(HEADER_PREFIX))


@functools.lru_cache(maxsize=ENCODINGS)
def _removals(sent: tuple[str, ...], receipt: bool, overrides: tuple[str, ...]) -> bytes:
    """`headers_to_remove`, encoded (`authz.check.headers.to_remove` says which)."""
    ours = (*IDENTITY_HEADERS, DECISION_ID_HEADER, *((RECEIPT_HEADER,) if receipt else ()))
    names = request_headers.to_remove(sent, ours, overrides)
    return b"".join(wire.field(wire.OK_REMOVE, name.encode()) for name in names)


def connection_metadata(decision: Decision) -> dict[str, str | float]:
    """What an allowed connection carries in Envoy (its access log reads it)."""
    chain, route, grant = decision.chain, decision.route, decision.grant
    assert chain is not None and route is not None
    return {
        "decision_id": decision.decision_id,
        "agent": chain.actor,
        "user": chain.user,
        "grant": grant.id if grant else "",
        "database": str(route.resource),
        "grant_expires_at": grant.expires_at if grant else 0,
        "ends_at": round(decision.ends_at, 3),  # Envoy's max duration ends it by then
    }


def _allow_connection(decision: Decision) -> bytes:
    metadata = struct_pb2.Struct()
    metadata.update(connection_metadata(decision))
    ok = status_pb2.Status(code=code_pb2.OK)
    serialised: bytes = pb.CheckResponse(status=ok, dynamic_metadata=metadata).SerializeToString()
    return serialised


def _deny(decision: Decision) -> pb.CheckResponse:
    content: dict[str, object] = {
        "decision": "deny",
        "reason": decision.reason,
        "detail": decision.detail,
        "decision_id": decision.decision_id,
    }
    needs = grant_needed(decision)
    if needs:
        content["needs"] = needs
    body = json.dumps(content)
    headers = [
        _header("content-type", "application/json"),
        _header(DECISION_ID_HEADER, decision.decision_id),
    ]
    if decision.status == 401:
        headers.append(
            _header(
                "www-authenticate",
                f'Bearer error="invalid_token", error_description="{decision.reason}"',
            )
        )
    return pb.CheckResponse(
        status=status_pb2.Status(code=_GRPC_CODE.get(decision.status, code_pb2.UNAVAILABLE)),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=decision.status),
            headers=headers,
            body=body,
        ),
    )


def grant_needed(decision: Decision) -> dict[str, str] | None:
    """What a grant covering the denied request would hold, when a grant is what it lacked."""
    route, intent = decision.route, decision.intent
    if decision.reason not in NEEDS_GRANT or route is None or intent is None:
        return None
    return {"action": route.action, "resource": str(route.resource), "purpose": intent.purpose}


def internal_error_response() -> bytes:
    """The deny for a failure outside the pipeline: still an OK RPC, never a gRPC error."""
    return to_response(
        Decision(
            decision_id=codec.random_id(),
            allowed=False,
            status=503,
            reason=Reason.INTERNAL_ERROR,
            detail="internal error",
        ),
        UNREADABLE,
    )


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _header_safe(value: str) -> str:
    """Header values from token claims: printable ASCII only, so nothing splits a header."""
    if not (value.isascii() and value.isprintable()):
        value = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in value)
    return value[:MAX_HEADER_VALUE]
