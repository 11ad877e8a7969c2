"""Decision receipts: what the upstream gets in `x-lasthop-receipt` on every allow.

A receipt binds a decision to the request it allowed. Its claims (JSON):

    jti             the decision id (the audit record's `decision_id`)
    iat, exp        when it was decided; `exp` is `audit.receipt_ttl_seconds` later
    iss             `lasthop`
    sub             the user on whose behalf the chain acted
    agent, chain    the current actor, and every agent first to last
    purpose, txn    the intent
    method, host, path   the request (path without its query)
    policy_version  the hash of the policy set that decided
    body_sha256     only when Envoy sent the whole body (`with_request_body`)
    tool            only for an MCP tool call: the tool (its arguments are in the body)

Receipts are signed in batches: with `audit.fsync = "always"` the audit writer
signs, with one Ed25519 signature, the root of a Merkle tree (RFC 9162) over the
receipts of the records it commits together (a check waits for that commit
anyway), and each receipt carries the path from its own leaf to that root. At
low load a batch is one receipt (no path); under load one signature covers the
whole group commit. With an interval a check does not wait for the writer, and
its receipt is signed alone, on the spot. A receipt is four base64url parts:

    header.claims.proof.signature
    header     {"alg":"EdDSA","kid":KID,"typ":"lasthop-receipt+merkle"}
    claims     the JSON above
    proof      size (4 bytes, big-endian), index (4 bytes), then the audit path: the
               32-byte sibling hashes from the leaf up
    signature  Ed25519 by KID over  "lasthop-receipt-batch" 0x00 || size (4 bytes) || root

    leaf = SHA-256(0x00 || claims bytes); node = SHA-256(0x01 || left || right)

To verify offline, with nothing but the JWKS: hash the claims into the leaf,
fold the path into a root (RFC 9162 section 2.1.3.2), check the signature over
that root and size, then the claims. `verify` does this; it also reads the
compact JWS receipts of Lasthop 0.1.0 (one EdDSA signature per receipt).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from authz.audit.signing import SigningKey, verify_signature
from authz.codec import b64url, b64url_decode
from authz.errors import ReceiptError
from authz.model import CheckInput, Decision

RECEIPT_TYPE = "lasthop-receipt+merkle"
JWS_RECEIPT_TYPE = "lasthop-receipt+jwt"  # Lasthop 0.1.0: one signature per receipt
ISSUER = "lasthop"
BATCH_DOMAIN = b"lasthop-receipt-batch\x00"
HASH_BYTES = 32
MAX_PATH = 32  # a tree of 2**32 leaves at most
REQUIRED = (
    "jti",
    "iat",
    "exp",
    "iss",
    "sub",
    "agent",
    "chain",
    "purpose",
    "txn",
    "method",
    "host",
    "path",
    "policy_version",
)


@dataclass(frozen=True, slots=True)
class Unsigned:
    """A receipt's claims, encoded, waiting for its batch's signature (`ReceiptSigner.sign`)."""

    signer: ReceiptSigner
    claims: bytes


class ReceiptSigner:
    def __init__(
        self, key: SigningKey, ttl_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self._ttl = ttl_seconds
        self._clock = clock
        header = {"alg": "EdDSA", "kid": key.kid, "typ": RECEIPT_TYPE}
        self._header = b64url(json.dumps(header, separators=(",", ":")).encode("ascii"))

    def claims(self, decision: Decision, req: CheckInput) -> Unsigned:
        """The claims of an allowed decision on `req`; the audit sink signs them."""
        chain, intent = decision.chain, decision.intent
        if chain is None or intent is None:
            raise ValueError("only an allowed decision, with its chain and intent, has a receipt")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "jti": decision.decision_id,
            "iat": now,
            "exp": now + self._ttl,
            "iss": ISSUER,
            "sub": chain.user,
            "agent": chain.actor,
            "chain": list(chain.agents),
            "purpose": intent.purpose,
            "txn": intent.txn,
            "method": req.method,
            "host": req.host,
            "path": req.path,
            "policy_version": decision.policy_version,
        }
        if req.body_sha256:
            claims["body_sha256"] = req.body_sha256
        route = decision.route
        if route is not None and route.mcp is not None and route.mcp.tool:
            claims["tool"] = route.mcp.tool
        return Unsigned(self, json.dumps(claims, separators=(",", ":")).encode("ascii"))

    def sign(self, batch: Sequence[Unsigned]) -> list[str]:
        """The receipts of `batch`, in order, under one signature over their Merkle root."""
        leaves = [leaf_hash(u.claims) for u in batch]
        root, paths = merkle_paths(leaves)
        signature = b64url(self._key.sign(batch_message(len(leaves), root)))
        size = len(leaves).to_bytes(4, "big")
        return [
            f"{self._header}.{b64url(u.claims)}."
            f"{b64url(size + index.to_bytes(4, 'big') + b''.join(path))}.{signature}"
            for index, (u, path) in enumerate(zip(batch, paths, strict=True))
        ]

    def mint(self, decision: Decision, req: CheckInput) -> str:
        """The receipt of one allowed decision, alone in its batch."""
        return self.sign([self.claims(decision, req)])[0]


# --- the Merkle tree (RFC 9162 section 2.1) ---------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def batch_message(size: int, root: bytes) -> bytes:
    """What the batch signature covers."""
    return BATCH_DOMAIN + size.to_bytes(4, "big") + root


def merkle_paths(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """(root, the audit path of every leaf): the tree hash MTH and PATH of RFC 9162."""
    if not leaves:
        raise ValueError("a batch holds at least one receipt")
    paths: list[list[bytes]] = [[] for _ in leaves]

    def tree(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo]
        split = lo + (1 << ((hi - lo - 1).bit_length() - 1))  # the largest power of 2 < n
        left, right = tree(lo, split), tree(split, hi)
        for i in range(lo, split):
            paths[i].append(right)
        for i in range(split, hi):
            paths[i].append(left)
        return _node(left, right)

    return tree(0, len(leaves)), paths


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that `path` leads to from `leaf` (RFC 9162 2.1.3.2); None if it cannot."""
    if not 0 <= index < size:
        return None
    fn, sn, node = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            node = _node(sibling, node)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            node = _node(node, sibling)
        fn, sn = fn >> 1, sn >> 1
    return node if sn == 0 else None


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """What the receipt must say about the request; empty fields are not checked."""

    method: str = ""
    path: str = ""
    host: str = ""
    body: bytes | None = None


def verify(
    receipt: str,
    keys: Mapping[str, Ed25519PublicKey],
    binding: Binding = Binding(),
    now: float | None = None,
) -> dict[str, Any]:
    """The receipt's claims, once signature and binding hold; ReceiptError otherwise.

    `now`: also refuse an expired receipt (what an upstream does on receipt);
    None: ignore `exp` (an auditor reading an old receipt).
    """
    parts = receipt.split(".")
    if len(parts) == 4:
        claims = _verify_batch(parts, keys)
    elif len(parts) == 3:
        claims = _verify_jws(receipt, keys)
    else:
        raise ReceiptError("malformed", "not a receipt: expected four base64url parts")
    if now is not None and now >= claims["exp"]:
        raise ReceiptError("expired", f"expired at {claims['exp']}, now is {int(now)}")
    _check_binding(claims, binding)
    return claims


def signer(receipt: str) -> str:
    """The `kid` a receipt names (read, not verified: call `verify` first)."""
    try:
        kid = _json_part(receipt.split(".")[0], "header").get("kid")
    except ReceiptError:
        return ""
    return kid if isinstance(kid, str) else ""


def _verify_batch(parts: list[str], keys: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    public = _key(_json_part(parts[0], "header"), keys, RECEIPT_TYPE)
    claims_bytes = _decoded(parts[1], "claims")
    size, index, path = _proof(_decoded(parts[2], "proof"))
    root = root_from_path(leaf_hash(claims_bytes), index, size, path)
    signature = _decoded(parts[3], "signature")
    if root is None or not verify_signature(public, signature, batch_message(size, root)):
        raise ReceiptError("bad_signature", "the signature does not verify")
    claims = _json_part(parts[1], "claims")
    missing = [name for name in REQUIRED if name not in claims]
    if missing:
        raise ReceiptError("malformed", f"claims lack {', '.join(f'`{m}`' for m in missing)}")
    if claims["iss"] != ISSUER:
        raise ReceiptError("malformed", f"`iss` is `{claims['iss']}`, not `{ISSUER}`")
    if not isinstance(claims["exp"], int) or isinstance(claims["exp"], bool):
        raise ReceiptError("malformed", "`exp` is not an integer")
    return claims


def _proof(raw: bytes) -> tuple[int, int, list[bytes]]:
    if len(raw) < 8 or (len(raw) - 8) % HASH_BYTES or (len(raw) - 8) // HASH_BYTES > MAX_PATH:
        raise ReceiptError("malformed", "the proof is not a size, an index and 32-byte hashes")
    path = [raw[i : i + HASH_BYTES] for i in range(8, len(raw), HASH_BYTES)]
    return int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:8], "big"), path


def _verify_jws(receipt: str, keys: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    """A Lasthop 0.1.0 receipt: a compact JWS signed on its own."""
    try:
        header = jwt.get_unverified_header(receipt)
    except jwt.PyJWTError as err:
        raise ReceiptError("malformed", f"not a compact JWS: {err}") from err
    public = _key(header, keys, JWS_RECEIPT_TYPE)
    try:
        claims: dict[str, Any] = jwt.decode(
            receipt,
            public,
            algorithms=["EdDSA"],
            issuer=ISSUER,
            options={"require": list(REQUIRED), "verify_exp": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError as err:
        raise ReceiptError("bad_signature", "the signature does not verify") from err
    except jwt.PyJWTError as err:
        raise ReceiptError("malformed", str(err)) from err
    return claims


def _key(
    header: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey], typ: str
) -> Ed25519PublicKey:
    """The key that signed a receipt whose header says EdDSA and `typ`."""
    if header.get("alg") != "EdDSA" or header.get("typ") != typ:
        raise ReceiptError(
            "malformed",
            f"header must have alg `EdDSA` and typ `{typ}`, "
            f"got `{json.dumps(header, sort_keys=True)}`",
        )
    kid = header.get("kid")
    public = keys.get(kid) if isinstance(kid, str) else None
    if public is None:
        raise ReceiptError("unknown_key", f"kid `{kid}` is not in the JWKS")
    return public


def _decoded(part: str, what: str) -> bytes:
    try:
        return b64url_decode(part)
    except ValueError as err:
        raise ReceiptError("malformed", f"the {what} is not base64url") from err


def _json_part(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_decoded(part, what))
    except ValueError as err:
        raise ReceiptError("malformed", f"the {what} is not JSON") from err
    if not isinstance(value, dict):
        raise ReceiptError("malformed", f"the {what} is not a JSON object")
    return value


def _check_binding(claims: Mapping[str, Any], binding: Binding) -> None:
    expected = {
        "method": binding.method.upper(),
        "path": binding.path.partition("?")[0],
        "host": binding.host,
    }
    for name, value in expected.items():
        if value and claims.get(name) != value:
            raise ReceiptError(
                "binding_mismatch", f"the receipt is for {name} `{claims.get(name)}`, not `{value}`"
            )
    if binding.body is not None:
        bound = claims.get("body_sha256")
        if bound is None:
            raise ReceiptError("binding_mismatch", "the receipt binds no body")
        if hashlib.sha256(binding.body).hexdigest() != bound:
            raise ReceiptError("binding_mismatch", "the body's SHA-256 is not the one bound")
