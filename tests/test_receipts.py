"""authz.receipts and the allow path: a signed receipt bound to the decision and the request."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from envoy.service.auth.v3 import external_auth_pb2 as pb

from authz.audit.receipts import Binding, ReceiptSigner, Unsigned, signer, verify
from authz.audit.records import AuditRecord, Committed, MemoryAudit, Record
from authz.audit.signing import SigningKey
from authz.codec import b64url, b64url_decode
from authz.dev.tokens import DemoIssuer
from authz.errors import ReceiptError
from authz.model import Chain, CheckInput, Decision, Intent
from authz.server import ext_authz
from authz.stores.embedded import EmbeddedGrantStore
from tests.audit_helpers import FakeClock, allowed
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def keys(key: SigningKey) -> dict[str, Ed25519PublicKey]:
    return {key.kid: key.private.public_key()}


def mint(key: SigningKey, body_sha256: str = "", ttl: int = 60) -> str:
    return ReceiptSigner(key, ttl, FakeClock(1_800_000_000)).mint(
        *allowed(7, body_sha256=body_sha256)
    )


def test_round_trip_binds_the_decision(key: SigningKey) -> None:
    claims = verify(
        mint(key),
        keys(key),
        Binding(method="get", path="/patients/p-1001/records?x=1", host="ehr.local"),
    )
    assert claims["jti"] == "d-7" and claims["sub"] == "dr-alice"
    assert claims["agent"] == "scribe" and claims["chain"] == ["orchestrator", "scribe"]
    assert (claims["purpose"], claims["txn"]) == (PURPOSE, "txn-7")
    assert claims["policy_version"] == "abc"
    assert claims["exp"] - claims["iat"] == 60
    assert "body_sha256" not in claims
    header = json.loads(b64url_decode(mint(key).split(".")[0]))
    assert header == {"alg": "EdDSA", "typ": "lasthop-receipt+merkle", "kid": key.kid}
    assert signer(mint(key)) == key.kid


@pytest.mark.parametrize(
    ("binding", "what"),
    [
        (Binding(path="/patients/p-1002/records"), "path"),
        (Binding(method="POST"), "method"),
        (Binding(host="evil.example"), "host"),
    ],
)
def test_a_changed_request_fails_the_binding(key: SigningKey, binding: Binding, what: str) -> None:
    with pytest.raises(ReceiptError, match=f"binding_mismatch: the receipt is for {what}"):
        verify(mint(key), keys(key), binding)


def test_body_binding(key: SigningKey) -> None:
    body = b"note text"
    receipt = mint(key, hashlib.sha256(body).hexdigest())
    assert verify(receipt, keys(key), Binding(body=body))["body_sha256"]
    with pytest.raises(ReceiptError, match="binding_mismatch"):
        verify(receipt, keys(key), Binding(body=b"other"))
    with pytest.raises(ReceiptError, match="binds no body"):
        verify(mint(key), keys(key), Binding(body=body))


def test_signature_key_and_expiry(key: SigningKey) -> None:
    receipt = mint(key)
    head, payload, proof, sig = receipt.split(".")
    with pytest.raises(ReceiptError, match="bad_signature"):
        verify(f"{head}.{payload}.{proof}.{sig[:-4]}AAAA", keys(key))
    other = SigningKey.generate()
    with pytest.raises(ReceiptError, match="unknown_key"):
        verify(receipt, keys(other))
    assert verify(receipt, keys(key))["exp"] == 1_800_000_060
    with pytest.raises(ReceiptError, match="expired"):
        verify(receipt, keys(key), now=1_800_000_060)
    with pytest.raises(ReceiptError, match="malformed"):
        verify("not-a-jws", keys(key))


def batch(key: SigningKey, size: int) -> list[str]:
    signer_ = ReceiptSigner(key, 60, FakeClock(1_800_000_000))
    return signer_.sign([signer_.claims(*allowed(n)) for n in range(size)])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_every_receipt_of_a_batch_verifies_under_its_one_signature(
    key: SigningKey, size: int
) -> None:
    receipts = batch(key, size)
    assert len({r.rsplit(".", 1)[1] for r in receipts}) == 1  # one signature for the batch
    assert [verify(r, keys(key))["jti"] for r in receipts] == [f"d-{n}" for n in range(size)]


def test_a_receipt_cannot_be_moved_or_renumbered_within_its_batch(key: SigningKey) -> None:
    receipts = batch(key, 5)
    head, claims, proof, sig = receipts[2].split(".")
    raw = b64url_decode(proof)
    other_claims = receipts[3].split(".")[1]
    renumbered = b64url(raw[:4] + (3).to_bytes(4, "big") + raw[8:])
    resized = b64url((6).to_bytes(4, "big") + raw[4:])
    for forged in (
        f"{head}.{other_claims}.{proof}.{sig}",  # another receipt's claims on this path
        f"{head}.{claims}.{renumbered}.{sig}",
        f"{head}.{claims}.{resized}.{sig}",
        f"{head}.{claims}.{b64url(raw[:-32])}.{sig}",  # a sibling dropped
        f"{head}.{claims}.{proof}.{batch(key, 4)[2].split('.')[3]}",  # another batch's root
    ):
        with pytest.raises(ReceiptError, match="bad_signature"):
            verify(forged, keys(key))
    with pytest.raises(ReceiptError, match="malformed: the proof"):
        verify(f"{head}.{claims}.{b64url(raw[:-1])}.{sig}", keys(key))


def test_a_receipt_from_lasthop_0_1_0_still_verifies(key: SigningKey) -> None:
    """0.1.0 signed each receipt on its own, as a compact JWS: old receipts stay verifiable."""
    made, req = allowed(4)
    claims = json.loads(b64url_decode(mint(key).split(".")[1]))
    old = jwt.encode(
        claims,
        key.private,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": "lasthop-receipt+jwt"},
    )
    assert verify(old, keys(key), Binding(method=req.method, path=req.path))["jti"] == "d-7"
    with pytest.raises(ReceiptError, match="bad_signature"):
        verify(old[:-4] + "AAAA", keys(key))


def test_a_token_of_another_type_is_not_a_receipt(key: SigningKey) -> None:
    forged = jwt.encode({"jti": "x"}, key.private, algorithm="EdDSA", headers={"kid": key.kid})
    with pytest.raises(ReceiptError, match="typ"):
        verify(forged, keys(key))


# --- through the pipeline and ext_authz --------------------------------------------------------


def test_an_allow_carries_a_receipt_and_a_deny_none(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock, key: SigningKey
) -> None:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    audit = MemoryAudit()
    pipeline = make_pipeline(store=store, audit=audit)
    pipeline.receipts = ReceiptSigner(key, 60, clock)
    token = issuer.access_token("dr-alice", ["orchestrator", "scribe"], purpose=PURPOSE)
    allowed = asyncio.run(pipeline.check(check_input(token, path="/patients/p-1001/records?a=b")))
    denied = asyncio.run(pipeline.check(check_input(issuer.access_token("dr-bob", ["scribe"]))))
    assert allowed.allowed and allowed.receipt and not denied.receipt
    claims = verify(
        allowed.receipt,
        keys(key),
        Binding(method="GET", path="/patients/p-1001/records", host="ehr.local"),
    )
    record = audit.records[0]
    assert isinstance(record, AuditRecord)
    assert claims["jti"] == allowed.decision_id == record.decision_id
    assert claims["chain"] == ["orchestrator", "scribe"]
    assert claims["policy_version"] == record.policy_version
    # the record says who is accountable for the agent and that the route is PHI
    assert (record.owner, record.phi, record.parents) == ("dr-alice", True, ['Patient::"p-1001"'])

    headers = {
        h.header.key: h.header.value
        for h in pb.CheckResponse.FromString(
            ext_authz.to_response(allowed, check_input(token))
        ).ok_response.headers
    }
    assert headers["x-lasthop-receipt"] == allowed.receipt


def test_a_long_receipt_is_not_cut(key: SigningKey) -> None:
    long_chain = allowed(chain=tuple(f"agent-{n:03d}-{'x' * 40}" for n in range(12)))
    receipt = ReceiptSigner(key, 60).mint(*long_chain)
    assert len(receipt) > 512
    allow = Decision(
        decision_id="d",
        allowed=True,
        status=200,
        reason="allowed",
        detail="",
        chain=Chain("dr-alice", ("scribe",)),
        intent=Intent(PURPOSE, "t", "x"),
        receipt=receipt,
    )
    response = pb.CheckResponse.FromString(ext_authz.to_response(allow, check_input(None)))
    sent = {h.header.key: h.header.value for h in response.ok_response.headers}
    assert sent["x-lasthop-receipt"] == receipt


def test_body_digest_only_for_a_whole_body() -> None:
    def request(partial: str | None, body: bytes) -> pb.CheckRequest:
        req = pb.CheckRequest()
        http = req.attributes.request.http
        http.method, http.path, http.raw_body = "POST", "/patients/p-1001/notes", body
        if partial is not None:
            http.headers["x-envoy-auth-partial-body"] = partial
        return req

    assert (
        ext_authz.to_input(request("false", b"note")).body_sha256
        == hashlib.sha256(b"note").hexdigest()
    )
    assert ext_authz.to_input(request("true", b"no")).body_sha256 == ""
    assert ext_authz.to_input(request(None, b"")).body_sha256 == ""


class BrokenClaims(ReceiptSigner):
    def claims(self, decision: Decision, req: CheckInput) -> Unsigned:
        raise RuntimeError("claims failed")


class BrokenSigner(ReceiptSigner):
    def sign(self, batch: Sequence[Unsigned]) -> list[str]:
        raise RuntimeError("signing failed")


class RaisingAudit(MemoryAudit):
    async def commit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        raise RuntimeError("sink bug")


def test_no_receipt_no_allow_and_a_raising_sink_fails_closed(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock, key: SigningKey
) -> None:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    audit = MemoryAudit()
    pipeline = make_pipeline(store=store, audit=audit)
    pipeline.receipts = BrokenClaims(key, 60)
    decision_ = asyncio.run(pipeline.check(check_input(token)))
    assert (decision_.allowed, decision_.status, decision_.reason) == (False, 503, "internal_error")
    record = audit.records[0]
    assert isinstance(record, AuditRecord) and record.decision == "deny"  # recorded as it ended
    pipeline.receipts = BrokenSigner(key, 60)  # the sink signs: it refuses, as if it were down
    decision_ = asyncio.run(pipeline.check(check_input(token)))
    assert (decision_.allowed, decision_.reason) == (False, "audit_unavailable")
    raising = make_pipeline(store=store, audit=RaisingAudit())
    decision_ = asyncio.run(raising.check(check_input(token)))
    assert (decision_.allowed, decision_.reason) == (False, "audit_unavailable")
