"""Bearer token verification (RFC 9068 access tokens, RFC 8725 hygiene).

Rules, each refused with its own reason code (all 401):

framing   exactly one `authorization` header, exactly `Bearer <token>`; the scheme is
          case-insensitive (RFC 9110 11.1) -> missing_token, malformed_authorization
size      at most 8 KiB of token -> token_too_large
shape     three base64url parts, JSON objects nested at most 32 deep, no duplicate members
          -> malformed_token, duplicate_member
text      strict UTF-8, no BOM, no NUL, no unpaired UTF-16 surrogate escaped into a
          string (`"\\ud800"` decodes to text no later layer can encode) -> invalid_encoding
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

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from authz.check.keys import KeySource
from authz.codec import b64url_decode
from authz.errors import TokenError
from authz.model import TokenClaims
from authz.reasons import Reason
from authz.stores.cache import BoundedCache

T = TypeVar("T")
MAX_TOKEN_BYTES = 8 * 1024
CACHE_ENTRIES = 10_000
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
TXN_TOKEN_TYPES = frozenset({"txntoken+jwt", "application/txntoken+jwt"})
_FORBIDDEN_HEADERS = ("jwk", "jku", "x5u", "x5c")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i:bearer) ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)")
MAX_JSON_DEPTH = 32  # objects and arrays; real tokens nest a few levels (`act` is bounded apart)


def bearer_token(values: list[str]) -> str:
    """The token from the `authorization` header values. Exactly one, exactly `Bearer <jwt>`."""
    if not values:
        raise TokenError(Reason.MISSING_TOKEN, "no `authorization` header; send `Bearer <token>`")
    if len(values) > 1:
        raise TokenError(Reason.MALFORMED_AUTHORIZATION, "more than one `authorization` header")
    value = values[0]
    if len(value) > MAX_TOKEN_BYTES + len("Bearer "):
        raise TokenError(Reason.TOKEN_TOO_LARGE, f"token longer than {MAX_TOKEN_BYTES} bytes")
    match = _BEARER.fullmatch(value)
    if not match:
        raise TokenError(Reason.MALFORMED_AUTHORIZATION, "expected exactly `Bearer <jwt>`")
    return match.group(1)


async def verified(keys: KeySource, verify: Callable[[], T]) -> T:
    """`verify()`; when the token names a kid the set lacks, again after a reload (the IdP
    may have rotated its key). The key source rate-limits those reloads."""
    try:
        return verify()
    except TokenError as err:
        if err.reason != Reason.UNKNOWN_KEY or not await keys.refresh_unknown():
            raise
    return verify()


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
        raise TokenError(Reason.TOKEN_TOO_LARGE, f"token longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts):
        raise TokenError(Reason.MALFORMED_TOKEN, "not a compact JWS of three base64url parts")
    header = _json_part(parts[0], "header")
    key = _check_header(header, keys, rules)
    claims = _json_part(parts[1], "payload")
    signature = _b64decode(parts[2], "signature")
    if not key.verify(f"{parts[0]}.{parts[1]}".encode("ascii"), signature):
        raise TokenError(Reason.BAD_SIGNATURE, f"signature does not verify with key `{key.kid}`")
    _check_claims(claims, rules, now)
    return claims


def _b64decode(part: str, what: str) -> bytes:
    try:
        return b64url_decode(part)
    except ValueError as err:
        raise TokenError(Reason.MALFORMED_TOKEN, f"{what} is not base64url") from err


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise TokenError(Reason.DUPLICATE_MEMBER, f"JSON member `{name}` appears twice")
        result[name] = value
    return result


def _json_part(part: str, what: str) -> dict[str, Any]:
    raw = _b64decode(part, what)
    try:
        text = raw.decode("utf-8")  # strict: json.loads(bytes) would accept UTF-16 and -32
    except UnicodeDecodeError as err:
        raise TokenError(Reason.INVALID_ENCODING, f"{what} is not UTF-8") from err
    if text.startswith("\ufeff"):
        raise TokenError(Reason.INVALID_ENCODING, f"{what} starts with a byte order mark")
    if "\x00" in text:  # UTF-16/32 without a BOM decodes as UTF-8 full of NULs
        raise TokenError(Reason.INVALID_ENCODING, f"{what} is not UTF-8 (it holds NUL bytes)")
    try:
        value = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_no_constant)
    except ValueError as err:
        raise TokenError(Reason.MALFORMED_TOKEN, f"{what} is not JSON") from err
    except RecursionError as err:  # not a ValueError: json gives up on deep nesting this way
        raise TokenError(Reason.MALFORMED_TOKEN, f"{what} nests JSON too deeply") from err
    if not isinstance(value, dict):
        raise TokenError(Reason.MALFORMED_TOKEN, f"{what} is not a JSON object")
    _check_shape(value, what, escapes="\\u" in text)
    return value


def _check_shape(value: dict[str, Any], what: str, escapes: bool) -> None:
    """At most MAX_JSON_DEPTH levels; with `\\u` escapes in the text, no string (member
    names included) holding an unpaired surrogate. Iterative: the depth is the input's."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise TokenError(
                Reason.MALFORMED_TOKEN, f"{what} nests JSON deeper than {MAX_JSON_DEPTH} levels"
            )
        items = list(node.items()) if isinstance(node, dict) else [(None, v) for v in node]
        for name, item in items:
            if escapes and (not _encodable(name) or not _encodable(item)):
                raise TokenError(
                    Reason.INVALID_ENCODING, f"{what} holds an unpaired UTF-16 surrogate"
                )
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))


def _encodable(text: Any) -> bool:
    """False only for a string UTF-8 cannot encode (a lone surrogate from a `\\u` escape)."""
    if not isinstance(text, str) or text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"`{name}` is not JSON")


def _check_header(header: dict[str, Any], keys: KeySource, rules: IdentityRules) -> Any:
    typ = header.get("typ", "JWT")  # RFC 7519: typ is optional; absent reads as JWT
    if not isinstance(typ, str) or typ.lower() not in rules.types:
        raise TokenError(Reason.INVALID_TOKEN_TYPE, f"`typ` must be one of {sorted(rules.types)}")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in rules.algorithms:
        raise TokenError(Reason.ALGORITHM_NOT_ALLOWED, f"`alg` `{alg}` is not in the allow-list")
    if "crit" in header or "b64" in header:
        raise TokenError(
            Reason.UNSUPPORTED_CRITICAL_HEADER, "`crit`/`b64` extensions are not supported"
        )
    for name in _FORBIDDEN_HEADERS:
        if name in header:
            raise TokenError(Reason.EMBEDDED_KEY_REFUSED, f"header `{name}` is never trusted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError(Reason.UNKNOWN_KEY, "header has no `kid`")
    key = keys.get(kid)
    if key is None:
        raise TokenError(Reason.UNKNOWN_KEY, "`kid` names no key in the issuer's JWKS")
    if key.algorithm != alg:
        raise TokenError(
            Reason.KEY_ALGORITHM_MISMATCH, f"key is bound to `{key.algorithm}`, not `{alg}`"
        )
    return key


def _int_claim(claims: dict[str, Any], name: str, required: bool) -> int | None:
    value = claims.get(name)
    if value is None:
        if required or name in claims:
            raise TokenError(Reason.MISSING_CLAIM, f"claim `{name}` is required")
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenError(Reason.INVALID_CLAIM, f"claim `{name}` must be an integer NumericDate")
    return value


def _check_claims(claims: dict[str, Any], rules: IdentityRules, now: float) -> None:
    iss = claims.get("iss")
    if not isinstance(iss, str) or iss not in rules.issuers:
        raise TokenError(Reason.INVALID_ISSUER, "`iss` is not the configured issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise TokenError(Reason.INVALID_AUDIENCE, "`aud` must be a string or a list of strings")
    if not rules.audiences.intersection(audiences):
        raise TokenError(Reason.INVALID_AUDIENCE, "`aud` does not name this service")
    exp = _int_claim(claims, "exp", required=True)
    iat = _int_claim(claims, "iat", required=True)
    nbf = _int_claim(claims, "nbf", required=False)
    assert exp is not None and iat is not None
    if exp <= now - rules.leeway:
        raise TokenError(Reason.TOKEN_EXPIRED, "`exp` has passed")
    if iat > now + rules.leeway:
        raise TokenError(Reason.TOKEN_ISSUED_IN_FUTURE, "`iat` is in the future")
    if nbf is not None and nbf > now + rules.leeway:
        raise TokenError(Reason.TOKEN_NOT_YET_VALID, "`nbf` is in the future")
    if exp - iat > rules.max_lifetime:
        raise TokenError(
            Reason.TOKEN_LIFETIME_TOO_LONG, f"exp - iat exceeds the {rules.max_lifetime} s maximum"
        )
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenError(Reason.MISSING_CLAIM, "claim `sub` must be a non-empty string")


def _optional_str(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name, "")
    if not isinstance(value, str):
        raise TokenError(Reason.INVALID_CLAIM, f"claim `{name}` must be a string")
    return value


class AccessTokenVerifier:
    """Verifies the bearer token of a check; the identity phase of the pipeline.

    Agents present the same token many times, so a verified token is kept
    (up to CACHE_ENTRIES) and reused while it is unexpired and the key set
    is the one that verified it. Every other claim check is time-free and
    was passed at verification, so expiry is the only one to repeat. A
    refused token is never cached: it is refused again in full.
    """

    def __init__(self, keys: KeySource, rules: IdentityRules, clock: Callable[[], float]):
        self._keys = keys
        self._rules = rules
        self._clock = clock
        # (token, key generation) -> claims, until the token's `exp` plus leeway
        self._verified: BoundedCache[tuple[str, int], TokenClaims] = BoundedCache(
            CACHE_ENTRIES, clock=clock
        )

    @property
    def key_generation(self) -> int:
        return self._keys.generation

    def forget(self) -> None:
        """Drop every verified token (benchmarks of the uncached path)."""
        self._verified.clear()

    def __len__(self) -> int:
        """Verified tokens held (`lasthop_cache_entries{cache="tokens"}`)."""
        return len(self._verified)

    async def verify_current(self, token: str) -> TokenClaims:
        """`verify`, against the issuer's current keys (reloaded for an unknown kid)."""
        return await verified(self._keys, lambda: self.verify(token))

    def verify(self, token: str) -> TokenClaims:
        key = (token, self._keys.generation)
        claims = self._verified.get(key)
        if claims is None:
            claims = self._verify(token, self._clock())
            self._verified.put(key, claims, expires_at=claims.expires_at + self._rules.leeway)
        return claims

    def _verify(self, token: str, now: float) -> TokenClaims:
        claims = verify(token, self._keys, self._rules, now)
        client_id = _optional_str(claims, "client_id") or _optional_str(claims, "azp")
        return TokenClaims(
            subject=claims["sub"],
            issuer=claims["iss"],
            client_id=client_id,
            act=claims.get("act"),
            has_act="act" in claims,
            purpose=_optional_str(claims, "purp"),
            txn=_optional_str(claims, "txn"),
            expires_at=claims["exp"],
            issued_at=claims["iat"],
            jti=jti if isinstance(jti := claims.get("jti"), str) else "",  # hygiene only
        )
