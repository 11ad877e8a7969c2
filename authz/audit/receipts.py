"""Signed decision receipts: what the upstream gets in `x-lasthop-receipt` on every allow.

A receipt is a compact JWS, `alg` EdDSA, `typ` `lasthop-receipt+jwt`, `kid`
the RFC 7638 thumbprint of Lasthop's key (published in the receipts JWKS).
Its claims bind the decision to the request it allowed:

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

`verify` checks the signature against a JWKS and, when asked, the binding to a
method, path, host and body; an auditor needs nothing but the receipt and the
JWKS file.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from authz.audit.signing import SigningKey
from authz.codec import b64url
from authz.errors import ReceiptError
from authz.model import CheckInput, Decision

RECEIPT_TYPE = "lasthop-receipt+jwt"
ISSUER = "lasthop"
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


class ReceiptSigner:
    def __init__(
        self, key: SigningKey, ttl_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self._ttl = ttl_seconds
        self._clock = clock
        header = {"alg": "EdDSA", "kid": key.kid, "typ": RECEIPT_TYPE}
        self._header = b64url(json.dumps(header, separators=(",", ":")).encode("ascii"))

    def mint(self, decision: Decision, req: CheckInput) -> str:
        """The receipt of an allowed decision on `req`.

        A compact JWS (RFC 7515) assembled directly: it is on the Check path, and the
        signature is most of its cost. `verify` reads it with pyjwt.
        """
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
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode("ascii"))
        signing_input = f"{self._header}.{payload}"
        return f"{signing_input}.{b64url(self._key.sign(signing_input.encode('ascii')))}"


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
    try:
        header = jwt.get_unverified_header(receipt)
    except jwt.PyJWTError as err:
        raise ReceiptError("malformed", f"not a compact JWS: {err}") from err
    if header.get("alg") != "EdDSA" or header.get("typ") != RECEIPT_TYPE:
        raise ReceiptError(
            "malformed",
            f"header must have alg `EdDSA` and typ `{RECEIPT_TYPE}`, "
            f"got `{json.dumps(header, sort_keys=True)}`",
        )
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise ReceiptError("unknown_key", f"kid `{kid}` is not in the JWKS")
    try:
        claims: dict[str, Any] = jwt.decode(
            receipt,
            key,
            algorithms=["EdDSA"],
            issuer=ISSUER,
            options={"require": list(REQUIRED), "verify_exp": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError as err:
        raise ReceiptError("bad_signature", "the signature does not verify") from err
    except jwt.PyJWTError as err:
        raise ReceiptError("malformed", str(err)) from err
    if now is not None and now >= claims["exp"]:
        raise ReceiptError("expired", f"expired at {claims['exp']}, now is {int(now)}")
    _check_binding(claims, binding)
    return claims


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
