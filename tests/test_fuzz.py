"""Property-based fuzzing (Hypothesis) of everything that reads hostile input.

Issue 11 asked for it after deep JSON, lone surrogates, undecodable protobuf
and `$`-anchored ids each got past a parser. The properties:

- the token parser: any text, any three base64url parts, any JSON (deep,
  odd, with surrogates), any claims signed with the real key: a claim set
  or a `TokenError` with a 401 reason, never another exception;
- the Txn-Token reader: an `Intent` or 401 `invalid_txn_token`, nothing else;
- the CheckRequest translation: any bytes on the wire, any CheckRequest
  fields: a decision with a reason from the `Reason` table, an OK RPC, and
  never an allow (there is no valid signature to be had);
- never an allow without a valid signature: claims that would be allowed,
  under a signature that is not the issuer's (tampered, or another key);
- the admin API's validators and the identifier parsers: a value, or the
  one refusal their contract names.

Bounded: a fixed number of examples each (40 where a case signs or runs
Cedar, 150 for the pure parsers), derandomized so CI runs the same cases
every time: a few seconds in all. `LASTHOP_FUZZ_EXAMPLES=5000` runs
more (and random) locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as pb
from google.rpc import code_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz import config, spiffe
from authz.access.issue import GrantRequest, new_grant
from authz.check import identity
from authz.check.intent import IntentReader
from authz.check.pipeline import Pipeline
from authz.codec import b64url_decode
from authz.dev.tokens import DemoIssuer
from authz.errors import GrantRequestError, RouteError, TokenError
from authz.model import PURPOSE as PURPOSE_NAME
from authz.model import USER_ID, Agent, EntityRef, TokenClaims
from authz.policy import routes
from authz.reasons import Reason
from authz.server import ext_authz
from authz.server.front import AuthorizationService
from authz.stores.embedded import EmbeddedGrantStore
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant, keys_for, rules
from tests.test_ext_authz import CallContext
from tests.test_tokens_adversarial import ATTACKER_KEY, b64, raw_token

EXAMPLES = int(os.environ.get("LASTHOP_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 40,
    derandomize=not EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CHEAP = settings(FUZZ, max_examples=EXAMPLES or 150)  # the pure parsers: no crypto, no Cedar
REASONS = {str(r) for r in Reason}
STATUS = {str(r): r.status for r in Reason}
TOKEN_REASONS = {str(r) for r in Reason if r.phase == "identity"}

# --- strategies ---------------------------------------------------------------------------------

# every code point, surrogates included: json.dumps escapes them as `\udxxx`
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | ANY_TEXT
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)
CLEAN_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)  # encodable
CLEAN_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | CLEAN_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(CLEAN_TEXT, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
B64URL = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60)


@st.composite
def json_text(draw: st.DrawFn) -> bytes:
    """JSON-ish bytes: real JSON of any shape, deep nesting, or bytes that merely look close."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return json.dumps(draw(JSON_VALUE), allow_nan=True).encode()
    if choice == 1:
        depth = draw(st.integers(1, 3000))
        return b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    if choice == 2:
        return draw(st.binary(max_size=80))
    claims = draw(st.dictionaries(ANY_TEXT, JSON_VALUE, max_size=6))
    return json.dumps(claims).encode("utf-8", "surrogatepass")


@st.composite
def compact_tokens(draw: st.DrawFn) -> str:
    shape = draw(st.integers(0, 2))
    if shape == 0:
        return draw(ANY_TEXT)
    if shape == 1:
        return ".".join(draw(st.lists(B64URL, min_size=0, max_size=5)))
    return ".".join(b64(draw(json_text())) for _ in range(2)) + "." + draw(B64URL)


# --- helpers ----------------------------------------------------------------------------------

ISSUER = DemoIssuer("ES256", kid="fuzz-es256")  # a key made for this module, never reused
KEYS = keys_for(ISSUER)
HEADER = json.dumps({"alg": "ES256", "kid": ISSUER.kid, "typ": "at+jwt"}).encode()
TXN_HEADER = json.dumps({"alg": "ES256", "kid": ISSUER.kid, "typ": "txntoken+jwt"}).encode()


@pytest.fixture
def pipeline(make_pipeline: PipelineFactory) -> Pipeline:
    """The in-process pipeline of the shipped example, trusting this module's issuer."""
    built = make_pipeline()
    built.verifier._keys = KEYS
    built.intent._keys = KEYS
    return built


def now() -> int:
    return int(Clock().now)


def claims_of(extra: dict[str, Any]) -> dict[str, Any]:
    t = now()
    base: dict[str, Any] = {
        "iss": "https://idp.example.org",
        "aud": "ehr-api",
        "sub": "dr-alice",
        "iat": t,
        "exp": t + 600,
        "act": {"sub": "scribe"},
        "client_id": "scribe",
        "purp": PURPOSE,
    }
    return {**base, **extra}


def decide(pipeline: Pipeline, headers: dict[str, list[str]]) -> Any:
    return asyncio.run(pipeline.check(check_input(None, headers=headers)))


def refused_with_a_reason(decision: Any, statuses: set[int]) -> None:
    assert not decision.allowed, decision
    assert decision.status in statuses, decision
    assert str(decision.reason) in REASONS, decision


# --- the token parser --------------------------------------------------------------------------


@FUZZ
@given(token=compact_tokens())
def test_any_token_text_is_claims_or_a_token_error(token: str) -> None:
    try:
        identity.verify(token, KEYS, rules(), now())
    except TokenError as err:
        assert str(err.reason) in TOKEN_REASONS
        assert err.status == 401


@FUZZ
@given(header=json_text(), payload=json_text())
def test_any_json_signed_by_the_issuer_is_claims_or_a_token_error(
    header: bytes, payload: bytes
) -> None:
    """Signed with the real key, so the parser's every later check sees the input too."""
    for head in (header, HEADER):
        token = raw_token(head, payload, ISSUER)
        try:
            claims = identity.verify(token, KEYS, rules(), now())
        except TokenError as err:
            assert str(err.reason) in TOKEN_REASONS
        else:
            assert isinstance(claims, dict) and isinstance(claims["sub"], str)


@FUZZ
@given(
    extra=st.dictionaries(st.sampled_from(sorted(claims_of({}))) | ANY_TEXT, JSON_VALUE, max_size=5)
)
def test_any_signed_claims_give_a_decision_with_a_reason(
    pipeline: Pipeline, extra: dict[str, Any]
) -> None:
    """Whatever the issuer signs, the pipeline decides, with a reason, and never raises."""
    payload = json.dumps(claims_of(extra), allow_nan=True).encode()
    decision = decide(pipeline, {"authorization": [f"Bearer {raw_token(HEADER, payload, ISSUER)}"]})
    forbid_reasons = {info.reason for info in pipeline.bundle.policies.values()}
    assert str(decision.reason) in REASONS | forbid_reasons, decision
    assert decision.reason != Reason.INTERNAL_ERROR, decision
    if decision.allowed:
        assert decision.chain is not None and decision.chain.actor == "scribe"


# --- never an allow without a valid signature --------------------------------------------------


@FUZZ
@given(
    flip=st.integers(0, 63),
    bits=st.integers(1, 255),
    forge=st.booleans(),
    extra=CLEAN_JSON,
)
def test_no_allow_without_the_issuers_signature(
    pipeline: Pipeline,
    clock: Clock,
    flip: int,
    bits: int,
    forge: bool,
    extra: Any,
) -> None:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    pipeline.store = store
    payload = json.dumps(claims_of({"ext": extra}))  # any claim value, same decision
    good = raw_token(HEADER, payload.encode(), ISSUER)
    control = decide(pipeline, {"authorization": [f"Bearer {good}"]})
    assert control.allowed, control  # the same claims, properly signed, are allowed
    if forge:
        token = raw_token(HEADER, payload.encode(), ISSUER, key=ATTACKER_KEY)
    else:
        head, body, signature = good.split(".")
        raw = bytearray(b64url_decode(signature))
        raw[flip % len(raw)] ^= bits
        token = f"{head}.{body}.{b64(bytes(raw))}"
    decision = decide(pipeline, {"authorization": [f"Bearer {token}"]})
    refused_with_a_reason(decision, {401})


# --- the Txn-Token reader ---------------------------------------------------------------------


@FUZZ
@given(value=compact_tokens() | st.builds(lambda p: raw_token(TXN_HEADER, p, ISSUER), json_text()))
def test_any_txn_token_is_an_intent_or_invalid_txn_token(value: str) -> None:
    reader = IntentReader(KEYS, rules(identity.TXN_TOKEN_TYPES), lambda: float(now()))
    claims = TokenClaims(
        subject="dr-alice",
        issuer="https://idp.example.org",
        client_id="scribe",
        act=None,
        has_act=False,
        purpose=PURPOSE,
        txn="t",
        expires_at=now() + 60,
    )
    try:
        intent = asyncio.run(reader.read(claims, [value]))
    except TokenError as err:
        assert err.reason == Reason.INVALID_TXN_TOKEN
        assert err.status == 401
    else:
        assert intent.source == "txn-token" and intent.txn


# --- the CheckRequest translation ------------------------------------------------------------


HEADER_NAMES = st.sampled_from(
    [
        "authorization",
        "txn-token",
        "x-lasthop-user",
        "x_lasthop_user",
        "x-http-method-override",
        "host",
    ]
) | st.text(max_size=12)


@st.composite
def check_requests(draw: st.DrawFn) -> pb.CheckRequest:
    message = pb.CheckRequest()
    http = message.attributes.request.http
    http.method = draw(st.sampled_from(["GET", "POST", "get", "DELETE", ""]) | st.text(max_size=8))
    http.path = draw(
        st.sampled_from(["/patients/p-1001/records", "/claims/c-1", "/", ""]) | st.text(max_size=40)
    )
    http.host = draw(st.text(max_size=20))
    http.id = draw(st.text(max_size=10))
    for _ in range(draw(st.integers(0, 4))):
        entry = http.header_map.headers.add()
        entry.key = draw(HEADER_NAMES)
        entry.raw_value = draw(st.binary(max_size=60) | st.just(b"Bearer a.b.c"))
    if draw(st.booleans()):
        http.headers.update(draw(st.dictionaries(HEADER_NAMES, st.text(max_size=30), max_size=3)))
    http.raw_body = draw(st.binary(max_size=40))
    message.attributes.source.principal = draw(st.text(max_size=40))
    return message


def servicer_check(service: AuthorizationService, raw: bytes) -> pb.CheckResponse:
    async def call() -> bytes:
        return await service.Check(raw, context=CallContext())

    return pb.CheckResponse.FromString(asyncio.run(call()))


def assert_denied_ok_rpc(resp: pb.CheckResponse) -> dict[str, Any]:
    assert resp.WhichOneof("http_response") == "denied_response", resp
    assert resp.status.code != code_pb2.OK
    body: dict[str, Any] = json.loads(resp.denied_response.body)
    assert body["decision"] == "deny" and body["reason"] in REASONS, body
    assert resp.denied_response.status.code == STATUS[body["reason"]]
    return body


@FUZZ
@given(message=check_requests())
def test_any_check_request_is_translated_and_denied_with_a_reason(
    pipeline: Pipeline, message: pb.CheckRequest
) -> None:
    check = ext_authz.to_input(message)  # pure translation: never raises
    assert check.method == check.method.upper()
    raw = message.SerializeToString()
    body = assert_denied_ok_rpc(servicer_check(AuthorizationService(pipeline), raw))
    assert body["reason"] != "internal_error", body


@CHEAP
@given(raw=st.binary(max_size=200))
def test_any_bytes_on_the_wire_get_an_ok_rpc_and_a_deny(pipeline: Pipeline, raw: bytes) -> None:
    body = assert_denied_ok_rpc(servicer_check(AuthorizationService(pipeline), raw))
    assert body["reason"] != "internal_error", body


# --- the admin API's validators and the id parsers --------------------------------------------


IDISH = (
    st.sampled_from(["scribe", "dr-alice", "clinical-documentation", 'Patient::"p-1"', ""])
    | ANY_TEXT
)


@CHEAP
@given(
    agent=IDISH,
    user=IDISH,
    actions=st.lists(IDISH, max_size=3),
    resources=st.lists(IDISH | st.builds(lambda s: f'Patient::"{s}"', ANY_TEXT), max_size=3),
    purpose=IDISH,
    ttl=st.integers(-10, 10_000),
    max_uses=st.integers(-3, 5),
    status=st.sampled_from(["active", "suspended", "deregistered"]),
)
def test_a_grant_request_is_a_well_formed_grant_or_a_named_refusal(
    agent: str, user: str, actions: list[str], resources: list[str], purpose: str,
    ttl: int, max_uses: int, status: str,
) -> None:  # fmt: skip
    known = {"scribe": Agent(id="scribe", owner="dr-alice", risk=20, status=status)}
    req = GrantRequest(agent, user, tuple(actions), tuple(resources), purpose, ttl, max_uses)
    try:
        issued = new_grant(req, "ops", now(), known, frozenset({"read", "write"}), 3600)
    except GrantRequestError as err:
        assert str(err)
        return
    assert issued.agent == "scribe" and status == "active"
    assert USER_ID.fullmatch(issued.user) and PURPOSE_NAME.fullmatch(issued.purpose)
    for text in issued.resources:
        assert str(EntityRef.parse(text)) == text


@CHEAP
@given(
    id=IDISH, owner=IDISH, risk=st.integers(-5, 105), status=IDISH,
    purposes=st.lists(IDISH, max_size=3), spiffe_id=IDISH | st.just("spiffe://td/sa/x"),
)  # fmt: skip
def test_an_agent_is_valid_or_a_value_error(
    id: str, owner: str, risk: int, status: str, purposes: list[str], spiffe_id: str
) -> None:
    agent = Agent(id, owner, risk, status, allowed_purposes=tuple(purposes), spiffe_id=spiffe_id)
    try:
        checked = agent.check()
    except ValueError:
        return
    assert Agent.from_json(checked.to_json()) == checked  # what is accepted round-trips


@CHEAP
@given(text=ANY_TEXT | st.builds(lambda t, i: f'{t}::"{i}"', ANY_TEXT, ANY_TEXT))
def test_an_entity_reference_parses_whole_or_not_at_all(text: str) -> None:
    try:
        ref = EntityRef.parse(text)
    except ValueError:
        return
    assert str(ref) == text or EntityRef.parse(str(ref)) == ref
    assert "\n" not in ref.id


@CHEAP
@given(text=ANY_TEXT | st.builds(lambda p: "spiffe://" + p, ANY_TEXT))
def test_a_spiffe_id_parses_strictly_and_prints_back(text: str) -> None:
    try:
        parsed = spiffe.parse(text)
    except ValueError:
        return
    assert str(parsed) == text
    assert not text.endswith("/") and "//" not in text[len("spiffe://") :]


@CHEAP
@given(text=ANY_TEXT)
def test_paths_and_durations_are_parsed_or_refused(text: str) -> None:
    try:
        segments = routes.split_path(text)
    except RouteError as err:
        assert err.reason == Reason.INVALID_PATH
    else:
        assert not any(s in (".", "..") for s in segments)
    with contextlib.suppress(ValueError):
        assert config.parse_duration(text) > 0
