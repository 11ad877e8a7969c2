"""authz.server.ext_authz: CheckRequest -> CheckInput, Decision -> CheckResponse; the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as attrs
from envoy.service.auth.v3 import external_auth_pb2 as pb
from google.rpc import code_pb2, status_pb2

from authz.check import headers as request_headers
from authz.check.pipeline import Pipeline
from authz.dev.tokens import DemoIssuer
from authz.model import Chain, CheckInput, Connection, Decision, EntityRef, Intent, RouteMatch
from authz.server import ext_authz
from authz.server.front import AuthorizationService, ThreadedAuthorizationService
from authz.stores.embedded import EmbeddedGrantStore
from tests.conftest import PURPOSE, Clock, PipelineFactory, grant

OURS = [
    "x-lasthop-user",
    "x-lasthop-agent",
    "x-lasthop-chain",
    "x-lasthop-purpose",
    "x-lasthop-txn",
    "x-lasthop-decision-id",
]


def check_request(
    *,
    method: str = "GET",
    path: str = "/patients/p-1001/records",
    host: str = "ehr.local",
    headers: dict[str, str] | None = None,
    header_map: list[tuple[str, str | bytes]] | None = None,
    principal: str = "",
    request_id: str = "req-1",
) -> pb.CheckRequest:
    http = attrs.AttributeContext.HttpRequest(
        id=request_id, method=method, path=path, host=host, headers=headers or {}
    )
    for key, value in header_map or []:
        if isinstance(value, bytes):
            http.header_map.headers.add(key=key, raw_value=value)
        else:
            http.header_map.headers.add(key=key, value=value)
    return pb.CheckRequest(
        attributes=attrs.AttributeContext(
            source=attrs.AttributeContext.Peer(principal=principal),
            request=attrs.AttributeContext.Request(http=http),
        )
    )


# --- to_input -------------------------------------------------------------------------------


def test_to_input_from_header_map_raw_values() -> None:
    req = check_request(
        method="post",
        path="/patients/p-1001/notes?draft=1",
        host="ehr.example:8443",
        header_map=[
            ("Authorization", b"Bearer one"),
            ("authorization", b"Bearer two"),
            ("X-Lasthop-User", b"mallory"),
            ("txn-token", b"t.t.t"),
            ("x-plain", "from value"),
            ("x-bin", b"caf\xc3\xa9 \xff"),
        ],
        # `headers` is ignored when `header_map` is present
        headers={"authorization": "Bearer ignored"},
        principal="spiffe://hospital/ns/agents/sa/scribe",
        request_id="abc-123",
    )
    check = ext_authz.to_input(req)
    assert check == CheckInput(
        method="POST",
        path="/patients/p-1001/notes",  # the query string is dropped here, once
        host="ehr.example:8443",
        headers={
            "authorization": ["Bearer one", "Bearer two"],
            "x-lasthop-user": ["mallory"],
            "txn-token": ["t.t.t"],
            "x-plain": ["from value"],
            "x-bin": ["caf\u00e9 \ufffd"],
        },
        peer_principal="spiffe://hospital/ns/agents/sa/scribe",
        request_id="abc-123",
    )


def test_to_input_headers_map_fallback() -> None:
    req = check_request(
        method="get",
        headers={
            "Authorization": "Bearer a, Bearer b",
            "Host": "ehr.local",
            "x-lasthop-agent": "x",
        },
    )
    check = ext_authz.to_input(req)
    assert check.method == "GET"
    assert check.headers == {
        "authorization": ["Bearer a, Bearer b"],
        "host": ["ehr.local"],
        "x-lasthop-agent": ["x"],
    }
    assert check.peer_principal == ""


def test_to_input_with_nothing() -> None:
    """No `request` attribute is a network CheckRequest: a connection with no certificates,
    which the pipeline refuses (`invalid_peer`)."""
    check = ext_authz.to_input(pb.CheckRequest())
    assert check == CheckInput(
        method="", path="", host="", headers={}, connection=Connection("", "", "")
    )


# --- to_response: allow ---------------------------------------------------------------------


def allow(
    user: str = "dr-alice",
    agents: tuple[str, ...] = ("orchestrator", "scribe"),
    purpose: str = PURPOSE,
    txn: str = "txn-42",
) -> Decision:
    return Decision(
        decision_id="d-1",
        allowed=True,
        status=200,
        reason="allowed",
        detail="allowed",
        chain=Chain(user=user, agents=agents),
        intent=Intent(purpose, txn, "access-token"),
        route=RouteMatch(
            "read",
            EntityRef("Records", "p-1001"),
            (EntityRef("Patient", "p-1001"),),
            "/patients/{patient}/records",
            True,
        ),
        policies=("scribe-read-records",),
    )


def respond(
    decision: Decision, request: CheckInput, overrides: tuple[str, ...] = ()
) -> pb.CheckResponse:
    """What Envoy reads: `to_response` answers the serialised message."""
    return pb.CheckResponse.FromString(ext_authz.to_response(decision, request, overrides))


def input_with(headers: dict[str, list[str]]) -> CheckInput:
    return CheckInput(
        method="GET", path="/patients/p-1001/records", host="ehr.local", headers=headers
    )


def ok_headers(resp: pb.CheckResponse) -> dict[str, str]:
    out: dict[str, str] = {}
    for option in resp.ok_response.headers:
        assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        assert option.header.key not in out
        out[option.header.key] = option.header.value
    return out


def test_allow_response() -> None:
    resp = respond(allow(), input_with({"authorization": ["Bearer x"]}))
    assert resp.status.code == code_pb2.OK
    assert resp.WhichOneof("http_response") == "ok_response"
    assert ok_headers(resp) == {
        "x-lasthop-user": "dr-alice",
        "x-lasthop-agent": "scribe",
        "x-lasthop-chain": "dr-alice,orchestrator,scribe",
        "x-lasthop-purpose": PURPOSE,
        "x-lasthop-txn": "txn-42",
        "x-lasthop-decision-id": "d-1",
    }
    # the underscore spelling of each, which CGI/WSGI upstreams read as the same header
    assert list(resp.ok_response.headers_to_remove) == underscored(resp)


def underscored(resp: pb.CheckResponse) -> list[str]:
    return sorted(name.replace("-", "_") for name in ok_headers(resp))


def test_allow_removes_the_clients_other_lasthop_headers() -> None:
    headers = {
        "authorization": ["Bearer x"],
        "x-lasthop-role": ["admin"],
        "x-lasthop-user": ["mallory"],
        "x-lasthop-grant": ["g-1"],
        "x-lasthopper": ["not ours"],
        "x-other": ["keep"],
    }
    resp = respond(allow(), input_with(headers))
    assert list(resp.ok_response.headers_to_remove) == sorted(
        ["x-lasthop-grant", "x-lasthop-role", *underscored(resp)]
    )
    # the spoofed user is overwritten, not appended
    assert ok_headers(resp)["x-lasthop-user"] == "dr-alice"


def test_allow_when_the_user_acts_directly() -> None:
    resp = respond(allow(agents=()), input_with({}))
    headers = ok_headers(resp)
    assert headers["x-lasthop-agent"] == "dr-alice"
    assert headers["x-lasthop-chain"] == "dr-alice"


@pytest.mark.parametrize("field", ["user", "purpose", "txn"])
@pytest.mark.parametrize(
    ("evil", "safe"),
    [
        ("a\r\nx-injected: 1", "a??x-injected: 1"),
        ("a\nb", "a?b"),
        ("a\rb", "a?b"),
        ("a\x00b", "a?b"),
        ("a\tb", "a?b"),
        ("a\x7fb", "a?b"),
        ("caf\u00e9", "caf?"),
        ("a\u2028b", "a?b"),
        ("a\x85b", "a?b"),
        ("plain value-1.2_3", "plain value-1.2_3"),
    ],
)
def test_allow_header_values_cannot_split(field: str, evil: str, safe: str) -> None:
    resp = respond(allow(**{field: evil}), input_with({}))  # type: ignore[arg-type]
    headers = ok_headers(resp)
    for value in headers.values():
        assert all(0x20 <= ord(c) < 0x7F for c in value), repr(value)
    assert headers[f"x-lasthop-{field}"] == safe


def test_allow_header_value_is_capped() -> None:
    resp = respond(allow(txn="t" * 5000), input_with({}))
    assert ok_headers(resp)["x-lasthop-txn"] == "t" * 512


def test_allow_chain_agent_names_are_sanitised() -> None:
    resp = respond(allow(agents=("orch\r\nestrator", "scribe")), input_with({}))
    assert ok_headers(resp)["x-lasthop-chain"] == "dr-alice,orch??estrator,scribe"


def built_with_protobuf(
    decision: Decision, request: CheckInput, overrides: tuple[str, ...]
) -> pb.CheckResponse:
    """The allow response as protobuf objects would build it: what `wire` must equal."""
    assert decision.chain is not None and decision.intent is not None
    chain, intent = decision.chain, decision.intent
    values = [
        chain.user,
        chain.actor,
        ",".join((chain.user, *chain.agents)),
        intent.purpose,
        intent.txn,
        decision.decision_id,
    ]
    safe = ["".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in v)[:512] for v in values]
    headers = dict(zip(OURS, safe, strict=True))
    if decision.receipt:
        headers["x-lasthop-receipt"] = decision.receipt
    return pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=pb.OkHttpResponse(
            headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=k, value=v),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
                for k, v in headers.items()
            ],
            headers_to_remove=request_headers.to_remove(request.headers, headers, overrides),
        ),
    )


@pytest.mark.parametrize(
    "decision",
    [
        allow(),
        allow(agents=()),
        allow(user="caf\u00e9\r\n", txn="t" * 700, purpose="p" * 200),
        replace(allow(), receipt="r" * 2000, decision_id="0123456789abcdef" * 2),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-lasthop-receipt": ["forged"], "x_lasthop_zz": ["1"], "x-lasthop-agent": ["m"]},
    ],
)
@pytest.mark.parametrize("overrides", [(), ("x-http-method-override", "x-method-override")])
def test_the_allow_bytes_are_what_protobuf_would_send(
    decision: Decision, headers: dict[str, list[str]], overrides: tuple[str, ...]
) -> None:
    request = input_with(headers)
    expected = built_with_protobuf(decision, request, overrides)
    assert ext_authz.to_response(decision, request, overrides) == expected.SerializeToString()
    assert respond(decision, request, overrides) == expected


# --- to_response: deny ----------------------------------------------------------------------


def deny(status: int, reason: str) -> Decision:
    return Decision(
        decision_id="d-9", allowed=False, status=status, reason=reason, detail=f"detail of {reason}"
    )


@pytest.mark.parametrize(
    ("status", "reason", "grpc_code"),
    [
        (401, "token_invalid", code_pb2.UNAUTHENTICATED),
        (401, "token_missing", code_pb2.UNAUTHENTICATED),
        (403, "no_grant", code_pb2.PERMISSION_DENIED),
        (403, "billing_not_clinical", code_pb2.PERMISSION_DENIED),
        (503, "store_unavailable", code_pb2.UNAVAILABLE),
        (503, "internal_error", code_pb2.UNAVAILABLE),
    ],
)
def test_deny_response(status: int, reason: str, grpc_code: int) -> None:
    resp = respond(deny(status, reason), input_with({"x-lasthop-role": ["a"]}))
    assert resp.status.code == grpc_code
    assert resp.status.code != code_pb2.OK
    assert resp.WhichOneof("http_response") == "denied_response"
    denied = resp.denied_response
    assert denied.status.code == status
    assert json.loads(denied.body) == {
        "decision": "deny",
        "reason": reason,
        "detail": f"detail of {reason}",
        "decision_id": "d-9",
    }
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers["content-type"] == "application/json"
    assert headers["x-lasthop-decision-id"] == "d-9"
    if status == 401:
        assert headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert reason in headers["www-authenticate"]
    else:
        assert "www-authenticate" not in headers
    # a deny never carries identity headers
    assert not any(k in headers for k in OURS if k != "x-lasthop-decision-id")


def test_deny_body_escapes_detail() -> None:
    decision = Decision(
        decision_id="d",
        allowed=False,
        status=403,
        reason="no_route",
        detail='no route for `GET /a"b\n`',
    )
    body = respond(decision, input_with({})).denied_response.body
    assert "\n" not in body
    assert json.loads(body)["detail"] == 'no route for `GET /a"b\n`'


# --- the servicer never turns an exception into a gRPC error ---------------------------------


class CallContext:
    """The one thing Check reads from its gRPC context: the call's metadata."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


FRONTS = ["aio", "threads"]


@contextlib.contextmanager
def loop_in_a_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """The event loop the threaded front hands uncached checks to, as `serve` runs it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def servicer_check(
    pipeline: Pipeline,
    request: pb.CheckRequest,
    front: str = "aio",
    metadata: tuple[tuple[str, str], ...] = (),
) -> pb.CheckResponse:
    """What Envoy gets from `front`'s Check."""
    raw, context = request.SerializeToString(), CallContext(metadata)
    if front == "aio":
        answer = asyncio.run(AuthorizationService(pipeline).Check(raw, context))
    else:
        with loop_in_a_thread() as loop:
            answer = ThreadedAuthorizationService(pipeline, loop).Check(raw, context)
    return pb.CheckResponse.FromString(answer)


def bearer_request(token: str) -> pb.CheckRequest:
    return check_request(header_map=[("authorization", f"Bearer {token}".encode())])


@pytest.mark.parametrize("front", FRONTS)
def test_servicer_allows_end_to_end(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock, front: str
) -> None:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    resp = servicer_check(make_pipeline(store=store), bearer_request(token), front)
    assert resp.status.code == code_pb2.OK
    assert ok_headers(resp)["x-lasthop-agent"] == "scribe"


@pytest.mark.parametrize("front", FRONTS)
def test_servicer_denies_without_a_token(make_pipeline: PipelineFactory, front: str) -> None:
    resp = servicer_check(make_pipeline(), check_request(), front)
    assert resp.denied_response.status.code == 401


@pytest.mark.parametrize("front", FRONTS)
def test_unexpected_exception_inside_the_pipeline_is_denied_503(
    make_pipeline: PipelineFactory,
    issuer: DemoIssuer,
    monkeypatch: pytest.MonkeyPatch,
    front: str,
) -> None:
    pipeline = make_pipeline()

    def boom(token: str) -> Any:
        raise RuntimeError("bug in the verifier")

    monkeypatch.setattr(pipeline.verifier, "verify", boom)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    resp = servicer_check(pipeline, bearer_request(token), front)
    assert resp.status.code != code_pb2.OK
    assert resp.WhichOneof("http_response") == "denied_response"
    assert resp.denied_response.status.code == 503
    body = json.loads(resp.denied_response.body)
    assert (body["decision"], body["reason"]) == ("deny", "internal_error")
    assert "bug in the verifier" not in resp.denied_response.body


class ExplodingAudit:
    def emit(self, record: object) -> bool:
        raise RuntimeError("audit sink bug")


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("where", ["check", "audit"])
def test_exception_escaping_check_is_still_a_deny(
    make_pipeline: PipelineFactory,
    issuer: DemoIssuer,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    front: str,
) -> None:
    """Whatever check() raises, Envoy gets a 503 deny, never a gRPC error (failure_mode_allow)."""
    if where == "audit":
        pipeline = make_pipeline(audit=ExplodingAudit())
    else:
        pipeline = make_pipeline()

        async def broken(req: CheckInput) -> Decision:
            raise RuntimeError("pipeline bug")

        monkeypatch.setattr(pipeline, "check", broken)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    resp = servicer_check(pipeline, bearer_request(token), front)
    assert resp.status.code != code_pb2.OK
    assert resp.denied_response.status.code == 503
    expected = "audit_unavailable" if where == "audit" else "internal_error"
    assert json.loads(resp.denied_response.body)["reason"] == expected


# --- trace context ----------------------------------------------------------------------------

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ENVOY_SPAN = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"


def test_the_trace_context_envoy_puts_on_the_call_comes_first() -> None:
    request = check_request(headers={"traceparent": TRACEPARENT})
    assert ext_authz.to_input(request).traceparent == TRACEPARENT
    assert ext_authz.to_input(request, ENVOY_SPAN).traceparent == ENVOY_SPAN
    assert ext_authz.to_input(request, "not-a-traceparent").traceparent == TRACEPARENT
    bad = check_request(headers={"traceparent": "00-zz-00-01"})
    assert ext_authz.to_input(bad).traceparent == ""


def test_the_request_id_is_envoys_x_request_id_when_forwarded() -> None:
    request = check_request(headers={"x-request-id": "6b7d44c6-034c-949c"}, request_id="42")
    assert ext_authz.to_input(request).request_id == "6b7d44c6-034c-949c"
    assert ext_authz.to_input(check_request(request_id="42")).request_id == "42"
