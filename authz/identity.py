"""Bearer token verification (RFC 9068 access tokens, RFC 8725 hygiene).

Rules, each refused with its own reason code (all 401):

framing   exactly one `authorization` header, exactly `Bearer <token>`
          -> missing_token, malformed_authorization
size      at most 8 KiB of token -> token_too_large
shape     three base64url parts, strict UTF-8 JSON objects, no duplicate members
          -> malformed_token, invalid_encoding, duplicate_member
header    `typ` at+jwt, application/at+jwt or JWT -> invalid_token_type
          `alg` in the allow-list, never none or HMAC -> algorithm_not_allowed
          no `crit`, no `b64` (we implement no extension) -> unsupported_critical_header
          no embedded or remote keys (`jwk`, `jku`, `x5u`, `x5c`) -> embedded_key_refused
          `kid` names one of the issuer's keys -> unknown_key
          that key is bound to the same `alg` -> key_algorithm_mismatch
signature -> bad_signature
claims    `iss` exact -> invalid_issuer; `aud` holds one of ours -> invalid_audience
          `exp`, `iat` present integers -> missing_claim, invalid_claim
          with leeway: -> token_expired, token_issued_in_future, token_not_yet_valid
          exp - iat within the maximum lifetime -> token_lifetime_too_long
          `sub` a non-empty string -> missing_claim
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from authz.errors import TokenError
from authz.jwks import KeySource
from authz.model import TokenClaims

MAX_TOKEN_BYTES = 8 * 1024
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
TXN_TOKEN_TYPES = frozenset({"txntoken+jwt", "application/txntoken+jwt"})
_FORBIDDEN_HEADERS = ("jwk", "jku", "x5u", "x5c")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_BEARER = re.compile(r"^Bearer ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$")


def bearer_token(values: list[str]) -> str:
    """The token from the `authorization` header values. Exactly one, exactly `Bearer <jwt>`."""
    if not values:
        raise TokenError("missing_token", "no `authorization` header; send `Bearer <token>`")
    if len(values) > 1:
        raise TokenError("malformed_authorization", "more than one `authorization` header")
    value = values[0]
    if len(value) > MAX_TOKEN_BYTES + len("Bearer "):
        raise TokenError("token_too_large", f"token longer than {MAX_TOKEN_BYTES} bytes")
    match = _BEARER.fullmatch(value)
    if not match:
        raise TokenError("malformed_authorization", "expected exactly `Bearer <jwt>`")
    return match.group(1)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class IdentityRules:
    issuers: frozenset[str]
    audiences: frozenset[str]
    algorithms: frozenset[str]
    types: frozenset[str]
    leeway: int
    max_lifetime: int


def verify(token: str, keys: KeySource, rules: IdentityRules, now: float) -> dict[str, Any]:
    """Verify signature and registered claims; return the claim set."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("token_too_large", f"token longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts):
        raise TokenError("malformed_token", "not a compact JWS of three base64url parts")
    header = _json_part(parts[0], "header")
    key = _check_header(header, keys, rules)
    claims = _json_part(parts[1], "payload")
    signature = _b64decode(parts[2], "signature")
    if not key.verify(f"{parts[0]}.{parts[1]}".encode("ascii"), signature):
        raise TokenError("bad_signature", f"signature does not verify with key `{key.kid}`")
    _check_claims(claims, rules, now)
    return claims


def _b64decode(part: str, what: str) -> bytes:
    if len(part) % 4 == 1:
        raise TokenError("malformed_token", f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as err:
        raise TokenError("malformed_token", f"{what} is not base64url") from err


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise TokenError("duplicate_member", f"JSON member `{name}` appears twice")
        result[name] = value
    return result


def _json_part(part: str, what: str) -> dict[str, Any]:
    raw = _b64decode(part, what)
    try:
        text = raw.decode("utf-8")  # strict: json.loads(bytes) would accept UTF-16 and -32
    except UnicodeDecodeError as err:
        raise TokenError("invalid_encoding", f"{what} is not UTF-8") from err
    if text.startswith("\ufeff"):
        raise TokenError("invalid_encoding", f"{what} starts with a byte order mark")
    if "\x00" in text:  # UTF-16/32 without a BOM decodes as UTF-8 full of NULs
        raise TokenError("invalid_encoding", f"{what} is not UTF-8 (it holds NUL bytes)")
    try:
        value = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_no_constant)
    except ValueError as err:
        raise TokenError("malformed_token", f"{what} is not JSON") from err
    if not isinstance(value, dict):
        raise TokenError("malformed_token", f"{what} is not a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"`{name}` is not JSON")


def _check_header(header: dict[str, Any], keys: KeySource, rules: IdentityRules) -> Any:
    typ = header.get("typ", "JWT")  # RFC 7519: typ is optional; absent reads as JWT
    if not isinstance(typ, str) or typ.lower() not in rules.types:
        raise TokenError("invalid_token_type", f"`typ` must be one of {sorted(rules.types)}")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in rules.algorithms:
        raise TokenError("algorithm_not_allowed", f"`alg` `{alg}` is not in the allow-list")
    if "crit" in header or "b64" in header:
        raise TokenError("unsupported_critical_header", "`crit`/`b64` extensions are not supported")
    for name in _FORBIDDEN_HEADERS:
        if name in header:
            raise TokenError("embedded_key_refused", f"header `{name}` is never trusted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("unknown_key", "header has no `kid`")
    key = keys.get(kid)
    if key is None:
        raise TokenError("unknown_key", "`kid` names no key in the issuer's JWKS")
    if key.algorithm != alg:
        raise TokenError(
            "key_algorithm_mismatch", f"key is bound to `{key.algorithm}`, not `{alg}`"
        )
    return key


def _int_claim(claims: dict[str, Any], name: str, required: bool) -> int | None:
    value = claims.get(name)
    if value is None:
        if required or name in claims:
            raise TokenError("missing_claim", f"claim `{name}` is required")
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenError("invalid_claim", f"claim `{name}` must be an integer NumericDate")
    return value


def _check_claims(claims: dict[str, Any], rules: IdentityRules, now: float) -> None:
    iss = claims.get("iss")
    if not isinstance(iss, str) or iss not in rules.issuers:
        raise TokenError("invalid_issuer", "`iss` is not the configured issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise TokenError("invalid_audience", "`aud` must be a string or a list of strings")
    if not rules.audiences.intersection(audiences):
        raise TokenError("invalid_audience", "`aud` does not name this service")
    exp = _int_claim(claims, "exp", required=True)
    iat = _int_claim(claims, "iat", required=True)
    nbf = _int_claim(claims, "nbf", required=False)
    assert exp is not None and iat is not None
    if exp <= now - rules.leeway:
        raise TokenError("token_expired", "`exp` has passed")
    if iat > now + rules.leeway:
        raise TokenError("token_issued_in_future", "`iat` is in the future")
    if nbf is not None and nbf > now + rules.leeway:
        raise TokenError("token_not_yet_valid", "`nbf` is in the future")
    if exp - iat > rules.max_lifetime:
        raise TokenError(
            "token_lifetime_too_long", f"exp - iat exceeds the {rules.max_lifetime} s maximum"
        )
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenError("missing_claim", "claim `sub` must be a non-empty string")


def _optional_str(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name, "")
    if not isinstance(value, str):
        raise TokenError("invalid_claim", f"claim `{name}` must be a string")
    return value


class AccessTokenVerifier:
    """Verifies the bearer token of a check; the identity phase of the pipeline.

    Agents present the same token many times, so a verified token is kept
    (up to CACHE_ENTRIES) and reused while it is unexpired and the key set
    is the one that verified it. Every other claim check is time-free and
    was passed at verification, so expiry is the only one to repeat. A
    refused token is never cached: it is refused again in full.
    """

    CACHE_ENTRIES = 10_000

    def __init__(self, keys: KeySource, rules: IdentityRules, clock: Callable[[], float]):
        self._keys = keys
        self._rules = rules
        self._clock = clock
        self._cache: dict[str, tuple[int, TokenClaims]] = {}

    @property
    def key_generation(self) -> int:
        return self._keys.generation

    def verify(self, token: str) -> TokenClaims:
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None:
            generation, claims = hit
            if generation == self._keys.generation and claims.expires_at > now - self._rules.leeway:
                return claims
            del self._cache[token]
        verified = self._verify(token, now)
        if len(self._cache) >= self.CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache[token] = (self._keys.generation, verified)
        return verified

    def _verify(self, token: str, now: float) -> TokenClaims:
        claims = verify(token, self._keys, self._rules, now)
        client_id = _optional_str(claims, "client_id") or _optional_str(claims, "azp")
        return TokenClaims(
            subject=claims["sub"],
            issuer=claims["iss"],
            client_id=client_id,
            act=claims["act"] if "act" in claims else None,
            has_act="act" in claims,
            purpose=_optional_str(claims, "purp"),
            txn=_optional_str(claims, "txn"),
            expires_at=claims["exp"],
            token_digest=token_digest(token),
            raw=claims,
        )
