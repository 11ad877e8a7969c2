"""Issue 11: hostile input that used to end in a 503, a gRPC error or a quiet acceptance.

Each test names the item it pins; each failed before the fix and gives, now,
a clean refusal with a specific reason (and a positive control beside it):

1. JSON nested deeply in a token header, payload or txn-token: `RecursionError`
   in the JSON parser, a 503 `internal_error` and a traceback per request;
   now 401 `malformed_token` / `invalid_txn_token`, no log line.
2. An unpaired UTF-16 surrogate (`"dr-alice\\ud800"`) in a signed claim used as
   an id: a 503 (Redis key encoding, Cedar's JSON); now 401 `invalid_encoding`.
3. A CheckRequest protobuf cannot decode: a gRPC error, no audit record; now
   an OK RPC with a 400 `malformed_request` deny, recorded.
4. Identifiers matched with `$`, which lets a trailing newline through.
9. `bearer` in lower case: the scheme is case-insensitive (RFC 9110 11.1).

Items 5 and 6 (method overrides, underscore headers) are in `test_ext_authz.py`
and through Envoy in `tests/integration/test_hostile_headers.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as pb
from google.rpc import code_pb2

from authz.audit.records import AuditRecord, MemoryAudit
from authz.check import identity
from authz.check.pipeline import Pipeline
from authz.dev.tokens import DemoIssuer
from authz.model import EntityRef
from authz.policy import routes
from authz.policy.templates import EntityTemplate
from authz.server.front import AuthorizationService
from authz.stores.embedded import EmbeddedGrantStore
from tests.conftest import Clock, PipelineFactory, grant
from tests.test_ext_authz import CallContext
from tests.test_tokens_adversarial import (
    ALLOWED,
    access_claims,
    access_token,
    bearer,
    claims_at,
    decide,
    dumps,
    header_for,
    raw_token,
    summary,
    txn_token,
)

# 2,500 nested arrays fit in 7 KiB, under the 8 KiB cap: deeper than the parser recurses
DEEP = "[" * 2500 + "]" * 2500


@pytest.fixture
def now(clock: Clock) -> int:
    clock.now = float(int(clock.now))
    return int(clock.now)


@pytest.fixture
def granted(make_pipeline: PipelineFactory, clock: Clock, now: int) -> Pipeline:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=now)))
    return make_pipeline(store=store)


def nested(objects: int) -> Any:
    """`objects` JSON objects, each inside the one before."""
    value: Any = "leaf"
    for _ in range(objects):
        value = {"n": value}
    return value


# --- 1. deep nesting --------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["header", "payload"])
def test_deeply_nested_token_json_is_malformed_not_a_503(
    granted: Pipeline,
    issuer: DemoIssuer,
    now: int,
    part: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    header = json.dumps(header_for(issuer))
    payload = json.dumps(access_claims(now))
    control = raw_token(header.encode(), payload.encode(), issuer)
    assert summary(decide(granted, bearer(control))) == ALLOWED
    if part == "header":
        header = header[:-1] + ', "x": ' + DEEP + "}"
    else:
        payload = payload[:-1] + ', "x": ' + DEEP + "}"
    tok = raw_token(header.encode(), payload.encode(), issuer)
    assert len(tok) <= identity.MAX_TOKEN_BYTES
    with caplog.at_level(logging.DEBUG):
        decision = decide(granted, bearer(tok))
    assert summary(decision) == (False, 401, "malformed_token")
    assert "nests JSON too deeply" in decision.detail
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_nesting_is_capped_at_a_fixed_depth_below_the_recursion_limit(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    """32 levels pass, 33 are refused, whatever the interpreter's recursion limit."""
    limit = identity.MAX_JSON_DEPTH
    ok = access_token(issuer, now, ext=nested(limit - 1))  # with the claims object: limit
    assert summary(decide(granted, bearer(ok))) == ALLOWED
    deep = access_token(issuer, now, ext=nested(limit))
    decision = decide(granted, bearer(deep))
    assert summary(decision) == (False, 401, "malformed_token")
    assert f"deeper than {limit} levels" in decision.detail


def test_deeply_nested_txn_token_is_invalid_txn_token(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    access = access_token(issuer, now)
    good = txn_token(issuer, now)
    assert summary(decide(granted, bearer(access, {"txn-token": [good]}))) == ALLOWED
    header = dumps(header_for(issuer, {"typ": "txntoken+jwt"}))
    payload = json.dumps(claims_at(now, {"txn": "t", "scope": "clinical-documentation"}))
    deep = raw_token(header, (payload[:-1] + ', "tctx": ' + DEEP + "}").encode(), issuer)
    decision = decide(granted, bearer(access, {"txn-token": [deep]}))
    assert summary(decision) == (False, 401, "invalid_txn_token")
    assert "malformed_token" in decision.detail


# --- 2. unpaired surrogates -----------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "dr-alice\ud800"},
        {"sub": "\udc00dr-alice"},
        {"act": {"sub": "scribe\ud800"}},
        {"act": {"sub": "scribe", "act": {"sub": "orchestrator\udfff"}}},
        {"txn": "txn-\ud800"},
        {"client_id": "scribe\ud800"},
        {"purp": "clinical-documentation\ud800"},
        {"note\ud800": "a member name"},
        {"aud": ["ehr-api", "x\ud800"]},
    ],
    ids=repr,
)
def test_unpaired_surrogate_in_a_claim_is_invalid_encoding(
    granted: Pipeline, issuer: DemoIssuer, now: int, claims: dict[str, Any]
) -> None:
    header = dumps(header_for(issuer))
    assert summary(decide(granted, bearer(access_token(issuer, now)))) == ALLOWED
    payload = json.dumps(access_claims(now, None, claims)).encode("ascii")  # `\ud800` escapes
    assert b"\\ud" in payload
    decision = decide(granted, bearer(raw_token(header, payload, issuer)))
    assert summary(decision) == (False, 401, "invalid_encoding")
    assert "unpaired UTF-16 surrogate" in decision.detail


def test_paired_surrogates_and_other_escapes_are_text(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    """The control: an escaped emoji (a surrogate pair) and `\\u00e9` are fine."""
    header = dumps(header_for(issuer))
    payload = json.dumps(access_claims(now, None, {"name": "caf\u00e9 \U0001f600"}))
    assert "\\ud83d\\ude00" in payload
    decision = decide(granted, bearer(raw_token(header, payload.encode("ascii"), issuer)))
    assert summary(decision) == ALLOWED


def test_unpaired_surrogate_in_a_txn_token_is_invalid_txn_token(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    access = access_token(issuer, now)
    bad = txn_token(issuer, now, txn="txn-\ud800")
    decision = decide(granted, bearer(access, {"txn-token": [bad]}))
    assert summary(decision) == (False, 401, "invalid_txn_token")
    assert "invalid_encoding" in decision.detail


# --- 3. an undecodable CheckRequest -----------------------------------------------------------


def undecodable() -> bytes:
    """A CheckRequest whose path holds invalid UTF-8: protobuf refuses to decode it."""
    message = pb.CheckRequest()
    message.attributes.request.http.path = "/XX"
    raw: bytes = message.SerializeToString()
    bad = raw.replace(b"/XX", b"/\xff\xfe")
    with pytest.raises(Exception, match="bad UTF-8"):
        pb.CheckRequest.FromString(bad)
    return bad


def test_undecodable_check_request_is_an_ok_rpc_with_a_recorded_deny(
    make_pipeline: PipelineFactory,
) -> None:
    audit = MemoryAudit()
    service = AuthorizationService(make_pipeline(audit=audit))

    async def check(raw: bytes) -> pb.CheckResponse:
        answer = await service.Check(raw, context=CallContext())
        return pb.CheckResponse.FromString(answer)

    resp = asyncio.run(check(undecodable()))
    assert resp.WhichOneof("http_response") == "denied_response"
    assert resp.status.code == code_pb2.INVALID_ARGUMENT
    assert resp.denied_response.status.code == 400
    body = json.loads(resp.denied_response.body)
    assert (body["decision"], body["reason"]) == ("deny", "malformed_request")
    [record] = audit.records
    assert isinstance(record, AuditRecord)
    assert (record.decision, record.reason, record.decision_id) == (
        "deny",
        "malformed_request",
        body["decision_id"],
    )
    # the control: the same bytes, made valid, are decoded and decided as usual
    good = asyncio.run(check(undecodable().replace(b"/\xff\xfe", b"/ab")))
    assert json.loads(good.denied_response.body)["reason"] == "missing_token"


# --- 4. identifiers matched whole -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ['Patient::"p-1001"\n', 'Patient::"p-1001"\r\n', 'Patient::"p-1\n001"', 'Patient::"p\x00"'],
    ids=repr,
)
def test_entity_reference_with_a_newline_is_refused(text: str) -> None:
    assert EntityRef.parse('Patient::"p-1001"') == EntityRef("Patient", "p-1001")
    with pytest.raises(ValueError, match="is not a Cedar entity reference"):
        EntityRef.parse(text)


def test_route_template_and_parameter_are_matched_whole(tmp_path: Any) -> None:
    table = tmp_path / "routes.toml"
    table.write_text(
        '[[route]]\nmethod = "GET"\npath = "/claims/{claim}\\n"\naction = "read"\n'
        "resource = 'Claim::\"{claim}\"'\n"
    )
    with pytest.raises(Exception, match="control characters"):
        routes.load(table)
    ok = routes.Route(
        method="GET",
        template="/claims/{claim}",
        segments=("claims", "{claim}"),
        action="read",
        resource=EntityTemplate("Claim", "{claim}"),
        parents=(),
        phi=True,
    )
    assert ok.match(["claims", "c-77"]) is not None
    assert ok.match(["claims", "c-77\n"]) is None


# --- 9. the bearer scheme in any case -----------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr", "Bearer"])
def test_bearer_scheme_is_case_insensitive(
    granted: Pipeline, issuer: DemoIssuer, now: int, scheme: str
) -> None:
    tok = access_token(issuer, now)
    decision = decide(granted, {"authorization": [f"{scheme} {tok}"]})
    assert summary(decision) == ALLOWED


@pytest.mark.parametrize("framing", ["Bearer{t}", "Bear {t}", "bearerx {t}", "Basic {t}"])
def test_only_the_scheme_case_is_relaxed(
    granted: Pipeline, issuer: DemoIssuer, now: int, framing: str
) -> None:
    tok = access_token(issuer, now)
    decision = decide(granted, {"authorization": [framing.format(t=tok)]})
    assert summary(decision) == (False, 401, "malformed_authorization")
