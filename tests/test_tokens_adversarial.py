"""Adversarial bearer tokens: RFC 8725 (JWT BCP) and the known JWT attack classes.

Every attack is refused with its own reason code (`TokenError.reason` when the
verifier is called directly, `Decision.reason` through the pipeline), and every
attack sits beside a positive control: the same construction without the attack,
which is accepted. A control that fails makes the test fail, so no case can pass
because the token was broken for some unrelated reason.

Tokens are built by hand (base64url header, payload, signature) so that the
attacks pyjwt refuses to produce (`alg: none`, HMAC with a public key, duplicate
members, UTF-16 JSON, NaN ...) can be sent.

Attack classes:

- `alg: none` in any case, with and without a signature       RFC 8725 2.1, 3.1
- algorithm confusion: HMAC keyed with the RSA public key     RFC 8725 2.1, 3.1, 3.2
- embedded and remote keys: `jwk`, `jku`, `x5u`, `x5c`        RFC 8725 3.10 (CVE-2018-0114)
- `kid` injection (traversal, SQL, empty, wrong type) and a
  key used with an algorithm it is not bound to               RFC 8725 3.1, 3.10
- `crit` and `b64: false` (RFC 7797) extensions               RFC 7515 4.1.11
- explicit typing and cross-JWT confusion (`typ`)             RFC 8725 3.11, 3.12; RFC 9068 4
- registered claim types and time checks                      RFC 7519 4.1.4-4.1.6
- audience and issuer look-alikes                             RFC 8725 3.8, 3.9
- parser differentials: duplicate members, UTF-16/32, BOM,
  non-object JSON, NaN/Infinity, non-canonical shapes          RFC 8725 2.6, 3.7; RFC 8259 8.1
- signature tampering, key substitution, zero signatures      RFC 8725 3.3, 3.4 (CVE-2022-21449)
- token size                                                  DoS hygiene
- bearer framing of the `authorization` header                RFC 6750 2.1
- `act` abuse and impersonation                               RFC 8693 4.1, 4.4
- the `txn-token` header                                      draft-ietf-oauth-transaction-tokens
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, get_default_algorithms

from authz.check import identity
from authz.check.delegation import act_claim
from authz.check.identity import MAX_TOKEN_BYTES, IdentityRules
from authz.check.keys import KeySource, StaticKeys
from authz.check.pipeline import Pipeline
from authz.dev.tokens import AUDIENCE, ISSUER, DemoIssuer
from authz.errors import TokenError
from authz.model import Decision, Intent
from authz.policy.load import PolicyBundle
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant, keys_for, rules

ES_KID = "test-es256"  # the kids conftest gives its issuers
RS_KID = "test-rs256"
LEEWAY = 30  # conftest rules()
MAX_LIFETIME = 3600  # conftest rules()
ACCEPTED = "accepted"


class _Drop:
    """An override value that removes the member."""

    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()

ATTACKER_KEY = ec.generate_private_key(ec.SECP256R1())
ATTACKER_JWK = json.loads(ECAlgorithm.to_jwk(ATTACKER_KEY.public_key()))


# --- building tokens by hand ----------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def merged(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    result = dict(base)
    for name, value in (overrides or {}).items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def header_for(signer: DemoIssuer, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return merged({"alg": signer.algorithm, "typ": "at+jwt", "kid": signer.kid}, overrides)


def claims_at(now: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return merged(
        {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "dr-alice",
            "iat": now,
            "exp": now + 600,
            "jti": "jti-1",
        },
        overrides,
    )


def sign(signing_input: str, key: Any, alg: str) -> str:
    return b64(get_default_algorithms()[alg].sign(signing_input.encode("ascii"), key))


def raw_token(header: bytes, payload: bytes, signer: DemoIssuer, key: Any = None) -> str:
    """`header` and `payload` are the exact JSON bytes; signed with `signer`'s algorithm."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    return f"{signing_input}.{sign(signing_input, key or signer.private_key, signer.algorithm)}"


def token(
    signer: DemoIssuer,
    now: int,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    key: Any = None,
) -> str:
    return raw_token(dumps(header_for(signer, header)), dumps(claims_at(now, claims)), signer, key)


def outcome(tok: str, keys: KeySource, now: int, with_rules: IdentityRules | None = None) -> str:
    """`accepted`, or the reason code the verifier refused the token with."""
    try:
        identity.verify(tok, keys, with_rules or rules(), now)
    except TokenError as err:
        assert err.status == 401
        return err.reason
    return ACCEPTED


@pytest.fixture(scope="module")
def keys(issuer: DemoIssuer, rs_issuer: DemoIssuer) -> StaticKeys:
    assert (issuer.kid, rs_issuer.kid) == (ES_KID, RS_KID)
    return keys_for(issuer, rs_issuer)


@pytest.fixture
def now(clock: Clock) -> int:
    clock.now = float(int(clock.now))  # whole seconds, so boundaries are exact
    return int(clock.now)


# --- alg: none --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["empty", "issuer-signature", "junk"])
@pytest.mark.parametrize("with_kid", [True, False])
def test_alg_none_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, alg: str, signature: str, with_kid: bool
) -> None:
    control = token(issuer, now)
    assert outcome(control, keys, now) == ACCEPTED
    _, payload, real_sig = control.split(".")
    header = b64(dumps(header_for(issuer, {"alg": alg, "kid": ES_KID if with_kid else DROP})))
    sig = {"empty": "", "issuer-signature": real_sig, "junk": "AAAA"}[signature]
    assert outcome(f"{header}.{payload}.{sig}", keys, now) == "algorithm_not_allowed"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_without_a_signature_part_is_malformed(
    issuer: DemoIssuer, keys: StaticKeys, now: int, alg: str
) -> None:
    control = token(issuer, now)
    assert outcome(control, keys, now) == ACCEPTED
    payload = control.split(".")[1]
    header = b64(dumps(header_for(issuer, {"alg": alg})))
    assert outcome(f"{header}.{payload}", keys, now) == "malformed_token"


@pytest.mark.parametrize(
    "alg",
    [
        "es256",
        "Es256",
        "rs256",
        "ES256 ",
        "",
        None,
        256,
        ["ES256"],
        {"ES256": True},
        "ES384",
        "PS256",
        "HS256",
    ],
)
def test_alg_outside_the_allow_list_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, alg: Any
) -> None:
    assert outcome(token(issuer, now, {"alg": "ES256"}), keys, now) == ACCEPTED
    assert outcome(token(issuer, now, {"alg": alg}), keys, now) == "algorithm_not_allowed"


def test_missing_alg_is_refused(issuer: DemoIssuer, keys: StaticKeys, now: int) -> None:
    assert outcome(token(issuer, now), keys, now) == ACCEPTED
    assert outcome(token(issuer, now, {"alg": DROP}), keys, now) == "algorithm_not_allowed"


# --- RS256 -> HS256 confusion -------------------------------------------------------------


def public_key_secrets(rs_issuer: DemoIssuer) -> dict[str, bytes]:
    """Every byte form of the RSA public key an attacker might use as an HMAC secret."""
    public = rs_issuer.private_key.public_key()
    spki_pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return {
        "spki-pem": spki_pem,
        "spki-pem-no-trailing-newline": spki_pem.rstrip(b"\n"),
        "pkcs1-pem": public.public_bytes(Encoding.PEM, PublicFormat.PKCS1),
        "spki-der": public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        "jwk-json": json.dumps(rs_issuer.public_jwk).encode(),
        "jwks-json": json.dumps({"keys": [rs_issuer.public_jwk]}).encode(),
        "jwk-n": rs_issuer.public_jwk["n"].encode(),
        "empty": b"",
    }


def hmac_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes, alg: str) -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{b64(dumps(header))}.{b64(dumps(claims))}"
    mac = hmac.new(secret, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64(mac)}"


SECRET_KINDS = [
    "spki-pem",
    "spki-pem-no-trailing-newline",
    "pkcs1-pem",
    "spki-der",
    "jwk-json",
    "jwks-json",
    "jwk-n",
    "empty",
]


@pytest.mark.parametrize("secret_kind", SECRET_KINDS)
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_keyed_with_the_rsa_public_key_is_refused(
    rs_issuer: DemoIssuer, keys: StaticKeys, now: int, secret_kind: str, alg: str
) -> None:
    assert outcome(token(rs_issuer, now), keys, now) == ACCEPTED
    secret = public_key_secrets(rs_issuer)[secret_kind]
    attack = hmac_token(header_for(rs_issuer, {"alg": alg}), claims_at(now), secret, alg)
    assert outcome(attack, keys, now) == "algorithm_not_allowed"


@pytest.mark.parametrize("secret_kind", ["spki-pem", "jwk-json"])
def test_hmac_stays_refused_even_if_the_allow_list_names_it(
    rs_issuer: DemoIssuer, keys: StaticKeys, now: int, secret_kind: str
) -> None:
    # Defence in depth: config refuses HS* and none, but were they allowed, no
    # key of ours is bound to them (oct keys are refused at load), so the kid fails.
    lax = dataclasses.replace(rules(), algorithms=frozenset({"RS256", "ES256", "HS256", "none"}))
    assert outcome(token(rs_issuer, now), keys, now, lax) == ACCEPTED
    secret = public_key_secrets(rs_issuer)[secret_kind]
    attack = hmac_token(header_for(rs_issuer, {"alg": "HS256"}), claims_at(now), secret, "HS256")
    assert outcome(attack, keys, now, lax) == "key_algorithm_mismatch"
    unsigned = token(rs_issuer, now).rsplit(".", 2)
    none_header = b64(dumps(header_for(rs_issuer, {"alg": "none"})))
    assert outcome(f"{none_header}.{unsigned[1]}.", keys, now, lax) == "key_algorithm_mismatch"


# --- embedded and remote keys -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("jwk", ATTACKER_JWK),
        ("jwk", {**ATTACKER_JWK, "kid": ES_KID}),
        ("jku", "https://attacker.example/.well-known/jwks.json"),
        ("jku", "https://idp.example.org/.well-known/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("x5c", ["MIIBszCCAVmgAwIBAgIUattacker"]),
        ("x5c", []),
    ],
    ids=[
        "jwk-attacker",
        "jwk-attacker-our-kid",
        "jku-attacker",
        "jku-issuer-host",
        "x5u",
        "x5c",
        "x5c-empty",
    ],
)
@pytest.mark.parametrize("signed_by", ["attacker", "issuer"])
@pytest.mark.parametrize("with_kid", [True, False])
def test_embedded_or_remote_key_is_refused(
    issuer: DemoIssuer,
    keys: StaticKeys,
    now: int,
    name: str,
    value: Any,
    signed_by: str,
    with_kid: bool,
) -> None:
    kid = ES_KID if with_kid else DROP
    assert outcome(token(issuer, now, {"kid": kid}), keys, now) == (
        ACCEPTED if with_kid else "unknown_key"
    )
    assert outcome(token(issuer, now), keys, now) == ACCEPTED
    key = ATTACKER_KEY if signed_by == "attacker" else None
    attack = token(issuer, now, {name: value, "kid": kid}, key=key)
    assert outcome(attack, keys, now) == "embedded_key_refused"


def test_our_own_public_jwk_embedded_is_still_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int
) -> None:
    assert outcome(token(issuer, now), keys, now) == ACCEPTED
    attack = token(issuer, now, {"jwk": issuer.public_jwk})  # a genuine signature
    assert outcome(attack, keys, now) == "embedded_key_refused"


# --- kid injection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kid",
    [
        "unknown-key",
        "../../dev/null",
        "/dev/null",
        "../../../../../../etc/passwd",
        "' OR '1'='1",
        "x' UNION SELECT 'secret' -- ",
        "test-es256' --",
        "|cat /etc/passwd",
        "https://attacker.example/key.pem",
        "",
        DROP,
        None,
        0,
        1,
        True,
        ["test-es256"],
        {"kid": "test-es256"},
        "test-es256 ",
        " test-es256",
        "TEST-ES256",
        "test-es256\x00",
        "test-rs256/../test-es256",
    ],
    ids=repr,
)
@pytest.mark.parametrize("signed_by", ["attacker", "issuer"])
def test_kid_injection_names_no_key(
    issuer: DemoIssuer, keys: StaticKeys, now: int, kid: Any, signed_by: str
) -> None:
    key = ATTACKER_KEY if signed_by == "attacker" else None
    assert outcome(token(issuer, now, {"kid": ES_KID}), keys, now) == ACCEPTED
    assert outcome(token(issuer, now, {"kid": kid}, key=key), keys, now) == "unknown_key"


@pytest.mark.parametrize(
    "header_alg, kid, signer_name",
    [
        ("RS256", ES_KID, "rs"),  # an RS256 signature checked against our ES256 key
        ("ES256", RS_KID, "es"),
        ("EdDSA", ES_KID, "es"),
        ("EdDSA", RS_KID, "rs"),
    ],
)
def test_key_used_with_another_algorithm_is_refused(
    issuer: DemoIssuer,
    rs_issuer: DemoIssuer,
    keys: StaticKeys,
    now: int,
    header_alg: str,
    kid: str,
    signer_name: str,
) -> None:
    signer = rs_issuer if signer_name == "rs" else issuer
    assert outcome(token(signer, now), keys, now) == ACCEPTED
    attack = token(signer, now, {"alg": header_alg, "kid": kid})
    assert outcome(attack, keys, now) == "key_algorithm_mismatch"


# --- crit and b64 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extension",
    [
        {"crit": ["exp"]},
        {"crit": ["b64"], "b64": False},
        {"b64": False},
        {"b64": True},
        {"crit": []},
        {"crit": "b64"},
        {"crit": ["https://example.org/ext"], "https://example.org/ext": 1},
    ],
    ids=[
        "crit-exp",
        "crit-b64-false",
        "b64-false",
        "b64-true",
        "crit-empty",
        "crit-string",
        "crit-private",
    ],
)
def test_critical_extensions_are_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, extension: dict[str, Any]
) -> None:
    assert outcome(token(issuer, now), keys, now) == ACCEPTED
    assert outcome(token(issuer, now, extension), keys, now) == "unsupported_critical_header"


def test_rfc7797_unencoded_payload_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int
) -> None:
    assert outcome(token(issuer, now), keys, now) == ACCEPTED
    header = b64(dumps(header_for(issuer, {"b64": False, "crit": ["b64"]})))
    payload = "unencoded-payload"  # RFC 7797 signs the payload as is
    signing_input = f"{header}.{payload}"
    attack = f"{signing_input}.{sign(signing_input, issuer.private_key, 'ES256')}"
    assert outcome(attack, keys, now) == "unsupported_critical_header"


# --- typ: explicit typing and cross-JWT confusion ----------------------------------------------


@pytest.mark.parametrize(
    "typ", ["at+jwt", "application/at+jwt", "JWT", "jwt", "AT+JWT", "Application/AT+JWT", DROP]
)
def test_access_token_types_are_accepted(
    issuer: DemoIssuer, keys: StaticKeys, now: int, typ: Any
) -> None:
    assert outcome(token(issuer, now, {"typ": typ}), keys, now) == ACCEPTED


@pytest.mark.parametrize(
    "typ",
    [
        "id_token",
        "txntoken+jwt",
        "application/txntoken+jwt",
        "dpop+jwt",
        "secevent+jwt",
        "logout+jwt",
        "JOSE",
        "JWS",
        "at+jwt ",
        " at+jwt",
        "at+jwt; charset=utf-8",
        "",
        None,
        1,
        True,
        ["at+jwt"],
        {"typ": "at+jwt"},
    ],
    ids=lambda v: repr(v),
)
def test_other_token_types_are_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, typ: Any
) -> None:
    assert outcome(token(issuer, now, {"typ": "at+jwt"}), keys, now) == ACCEPTED
    assert outcome(token(issuer, now, {"typ": typ}), keys, now) == "invalid_token_type"


# --- registered claims: types and times ------------------------------------------------------


@pytest.mark.parametrize("name", ["exp", "iat", "nbf"])
@pytest.mark.parametrize(
    "kind", ["string", "float", "fraction", "true", "false", "list", "object", "overflow-float"]
)
def test_numeric_date_of_the_wrong_type_is_invalid(
    issuer: DemoIssuer, keys: StaticKeys, now: int, name: str, kind: str
) -> None:
    good = {"exp": now + 600, "iat": now, "nbf": now}[name]
    assert outcome(token(issuer, now, claims={name: good}), keys, now) == ACCEPTED
    bad = {
        "string": str(good),
        "float": float(good),
        "fraction": good + 0.5,
        "true": True,
        "false": False,
        "list": [good],
        "object": {"t": good},
        "overflow-float": float("inf"),
    }[kind]
    if kind == "overflow-float":  # JSON 1e999 reads as a float infinity
        payload = dumps(claims_at(now, {name: 0})).replace(
            f'"{name}":0'.encode(), f'"{name}":1e999'.encode()
        )
        attack = raw_token(dumps(header_for(issuer)), payload, issuer)
    else:
        attack = token(issuer, now, claims={name: bad})
    assert outcome(attack, keys, now) == "invalid_claim"


@pytest.mark.parametrize("name", ["exp", "iat", "nbf"])
def test_null_numeric_date_is_missing(
    issuer: DemoIssuer, keys: StaticKeys, now: int, name: str
) -> None:
    good = {"exp": now + 600, "iat": now, "nbf": now}[name]
    assert outcome(token(issuer, now, claims={name: good}), keys, now) == ACCEPTED
    assert outcome(token(issuer, now, claims={name: None}), keys, now) == "missing_claim"


@pytest.mark.parametrize("name", ["exp", "iat"])
def test_required_time_claim_absent_is_missing(
    issuer: DemoIssuer, keys: StaticKeys, now: int, name: str
) -> None:
    assert outcome(token(issuer, now, claims={"nbf": DROP}), keys, now) == ACCEPTED  # nbf optional
    assert outcome(token(issuer, now, claims={name: DROP}), keys, now) == "missing_claim"


@pytest.mark.parametrize("sub", [DROP, None, "", 7, ["dr-alice"], {"sub": "dr-alice"}], ids=repr)
def test_subject_must_be_a_non_empty_string(
    issuer: DemoIssuer, keys: StaticKeys, now: int, sub: Any
) -> None:
    assert outcome(token(issuer, now, claims={"sub": "dr-alice"}), keys, now) == ACCEPTED
    assert outcome(token(issuer, now, claims={"sub": sub}), keys, now) == "missing_claim"


@pytest.mark.parametrize(
    "offset, expected",
    [
        (-LEEWAY - 1, "token_expired"),
        (-LEEWAY, "token_expired"),  # exp must be strictly after now - leeway
        (-LEEWAY + 1, ACCEPTED),
        (-1, ACCEPTED),
        (0, ACCEPTED),
    ],
)
def test_expiry_honours_the_leeway(
    issuer: DemoIssuer, keys: StaticKeys, now: int, offset: int, expected: str
) -> None:
    claims = {"iat": now - 600, "exp": now + offset}
    assert outcome(token(issuer, now, claims=claims), keys, now) == expected


def test_long_expired_token_is_refused(issuer: DemoIssuer, keys: StaticKeys, now: int) -> None:
    assert outcome(token(issuer, now), keys, now) == ACCEPTED
    old = token(issuer, now - 86400)  # the same token, minted a day ago
    assert outcome(old, keys, now) == "token_expired"


@pytest.mark.parametrize(
    "offset, expected",
    [
        (LEEWAY + 1, "token_issued_in_future"),
        (3600, "token_issued_in_future"),
        (LEEWAY, ACCEPTED),
        (0, ACCEPTED),
    ],
)
def test_iat_in_the_future_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, offset: int, expected: str
) -> None:
    claims = {"iat": now + offset, "exp": now + offset + 600}
    assert outcome(token(issuer, now, claims=claims), keys, now) == expected


@pytest.mark.parametrize(
    "offset, expected",
    [
        (LEEWAY + 1, "token_not_yet_valid"),
        (300, "token_not_yet_valid"),
        (LEEWAY, ACCEPTED),
        (0, ACCEPTED),
        (-600, ACCEPTED),
    ],
)
def test_nbf_in_the_future_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, offset: int, expected: str
) -> None:
    assert outcome(token(issuer, now, claims={"nbf": now + offset}), keys, now) == expected


@pytest.mark.parametrize(
    "iat, exp, expected",
    [
        (0, MAX_LIFETIME, ACCEPTED),
        (0, MAX_LIFETIME + 1, "token_lifetime_too_long"),
        (0, 10**12, "token_lifetime_too_long"),
        (0, 2**63, "token_lifetime_too_long"),
        (-(10**12), 600, "token_lifetime_too_long"),  # an ancient iat stretches the lifetime too
    ],
)
def test_lifetime_over_the_maximum_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, iat: int, exp: int, expected: str
) -> None:
    claims = {"iat": now + iat, "exp": now + exp}
    assert outcome(token(issuer, now, claims=claims), keys, now) == expected


# --- audience and issuer ------------------------------------------------------------------


@pytest.mark.parametrize("aud", [AUDIENCE, [AUDIENCE], ["other-api", AUDIENCE]], ids=repr)
def test_our_audience_is_accepted(issuer: DemoIssuer, keys: StaticKeys, now: int, aud: Any) -> None:
    assert outcome(token(issuer, now, claims={"aud": aud}), keys, now) == ACCEPTED


@pytest.mark.parametrize(
    "aud",
    [
        "ehr-api ",
        " ehr-api",
        "EHR-API",
        "Ehr-Api",
        "ehr-api.evil",
        "ehr-api/",
        "ehr_api",
        "ehr-api\x00",
        "https://ehr-api",
        ["other"],
        [],
        ["EHR-API"],
        [AUDIENCE, 5],
        [[AUDIENCE]],
        5,
        0,
        True,
        {AUDIENCE: True},
        {"aud": AUDIENCE},
        None,
        DROP,
        "ehr-api,other",
        "",
    ],
    ids=repr,
)
def test_audience_look_alikes_are_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, aud: Any
) -> None:
    assert outcome(token(issuer, now, claims={"aud": AUDIENCE}), keys, now) == ACCEPTED
    assert outcome(token(issuer, now, claims={"aud": aud}), keys, now) == "invalid_audience"


@pytest.mark.parametrize(
    "iss",
    [
        "https://idp.example.org/",
        "https://idp.example.org.evil.com",
        "HTTPS://idp.example.org",
        "https://IDP.example.org",
        "http://idp.example.org",
        " https://idp.example.org",
        "https://idp.example.org ",
        "https://idp.example.org:443",
        "https://idp.example.org/.",
        "https://idp.example.org#",
        "https://evil.com/https://idp.example.org",
        "https://idp.example.org\x00",
        [ISSUER],
        {"iss": ISSUER},
        1,
        None,
        DROP,
        "",
    ],
    ids=repr,
)
def test_issuer_look_alikes_are_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, iss: Any
) -> None:
    assert outcome(token(issuer, now, claims={"iss": ISSUER}), keys, now) == ACCEPTED
    assert outcome(token(issuer, now, claims={"iss": iss}), keys, now) == "invalid_issuer"


# --- parser differentials -----------------------------------------------------------------


def with_member(doc: bytes, member: bytes, first: bool) -> bytes:
    """`doc` (a JSON object) with `member` inserted first or last."""
    assert doc.startswith(b"{") and doc.endswith(b"}")
    return b"{" + member + b"," + doc[1:] if first else doc[:-1] + b"," + member + b"}"


@pytest.mark.parametrize(
    "member",
    [
        b'"alg":"none"',
        b'"alg":"HS256"',
        b'"alg":"ES256"',
        b'"kid":"../../dev/null"',
        b'"typ":"id_token"',
    ],
)
@pytest.mark.parametrize("first", [True, False], ids=["first", "last"])
def test_duplicate_header_member_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, member: bytes, first: bool
) -> None:
    header, payload = dumps(header_for(issuer)), dumps(claims_at(now))
    assert outcome(raw_token(header, payload, issuer), keys, now) == ACCEPTED
    attack = raw_token(with_member(header, member, first), payload, issuer)
    assert outcome(attack, keys, now) == "duplicate_member"


@pytest.mark.parametrize(
    "member",
    [
        b'"sub":"ops-admin"',
        b'"sub":"dr-alice"',
        b'"aud":"other-api"',
        b'"iss":"https://evil.example"',
        b'"exp":9999999999',
    ],
)
@pytest.mark.parametrize("first", [True, False], ids=["first", "last"])
def test_duplicate_payload_member_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, member: bytes, first: bool
) -> None:
    header, payload = dumps(header_for(issuer)), dumps(claims_at(now))
    assert outcome(raw_token(header, payload, issuer), keys, now) == ACCEPTED
    attack = raw_token(header, with_member(payload, member, first), issuer)
    assert outcome(attack, keys, now) == "duplicate_member"


def test_duplicate_member_nested_in_act_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int
) -> None:
    header = dumps(header_for(issuer))
    control = dumps(claims_at(now, {"act": {"sub": "scribe"}}))
    assert outcome(raw_token(header, control, issuer), keys, now) == ACCEPTED
    attack = control.replace(b'{"sub":"scribe"}', b'{"sub":"scribe","sub":"orchestrator"}')
    assert attack != control
    assert outcome(raw_token(header, attack, issuer), keys, now) == "duplicate_member"


ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "utf-8-sig"]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("part", ["header", "payload"])
def test_json_not_in_plain_utf8_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, encoding: str, part: str
) -> None:
    header_text = json.dumps(header_for(issuer))
    payload_text = json.dumps(claims_at(now))
    control = raw_token(header_text.encode("utf-8"), payload_text.encode("utf-8"), issuer)
    assert outcome(control, keys, now) == ACCEPTED
    if part == "header":
        attack = raw_token(header_text.encode(encoding), payload_text.encode("utf-8"), issuer)
    else:
        attack = raw_token(header_text.encode("utf-8"), payload_text.encode(encoding), issuer)
    assert outcome(attack, keys, now) == "invalid_encoding"


@pytest.mark.parametrize(
    "bad_bytes",
    [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80"],
    ids=["ff", "overlong-slash", "utf8-surrogate", "truncated", "5-byte"],
)
def test_invalid_utf8_inside_a_string_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, bad_bytes: bytes
) -> None:
    header = dumps(header_for(issuer))
    control = dumps(claims_at(now, {"jti": "jti-1"}))
    assert outcome(raw_token(header, control, issuer), keys, now) == ACCEPTED
    attack = control.replace(b'"jti-1"', b'"jti-' + bad_bytes + b'"')
    assert outcome(raw_token(header, attack, issuer), keys, now) == "invalid_encoding"


@pytest.mark.parametrize("part", ["header", "payload"])
@pytest.mark.parametrize(
    "shape",
    [
        "array",
        "string",
        "number",
        "null",
        "true",
        "array-of-object",
        "trailing-garbage",
        "two-objects",
        "empty",
        "single-quotes",
    ],
)
def test_json_that_is_not_one_object_is_malformed(
    issuer: DemoIssuer, keys: StaticKeys, now: int, part: str, shape: str
) -> None:
    header, payload = dumps(header_for(issuer)), dumps(claims_at(now))
    assert outcome(raw_token(header, payload, issuer), keys, now) == ACCEPTED
    doc = header if part == "header" else payload
    bad = {
        "array": b"[" + doc + b"]",
        "string": json.dumps(doc.decode()).encode(),
        "number": b"1",
        "null": b"null",
        "true": b"true",
        "array-of-object": b"[" + doc + b"," + doc + b"]",
        "trailing-garbage": doc + b"x",
        "two-objects": doc + doc,
        "empty": b"",
        "single-quotes": doc.replace(b'"', b"'"),
    }[shape]
    attack = raw_token(bad, payload, issuer) if part == "header" else raw_token(header, bad, issuer)
    assert outcome(attack, keys, now) == "malformed_token"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
@pytest.mark.parametrize("name", ["exp", "iat", "nbf"])
def test_nan_and_infinity_literals_are_malformed(
    issuer: DemoIssuer, keys: StaticKeys, now: int, literal: bytes, name: str
) -> None:
    header = dumps(header_for(issuer))
    control = dumps(claims_at(now, {name: 0}))
    assert b'"%s":0' % name.encode() in control
    fixed = control.replace(b'"%s":0' % name.encode(), b'"%s":%d' % (name.encode(), now))
    assert outcome(raw_token(header, fixed, issuer), keys, now) == ACCEPTED
    attack = control.replace(b'"%s":0' % name.encode(), b'"%s":' % name.encode() + literal)
    assert outcome(raw_token(header, attack, issuer), keys, now) == "malformed_token"


@pytest.mark.parametrize(
    "mangle",
    [
        "two-parts",
        "four-parts",
        "five-parts-jwe",
        "empty",
        "dots-only",
        "padded",
        "standard-b64-alphabet",
        "space-inside",
        "leading-space",
        "trailing-space",
        "trailing-newline",
        "newline-in-header",
        "tab",
        "non-ascii",
        "length-1-mod-4",
    ],
)
def test_non_compact_shapes_are_malformed(
    issuer: DemoIssuer, keys: StaticKeys, now: int, mangle: str
) -> None:
    control = token(issuer, now)
    assert outcome(control, keys, now) == ACCEPTED
    h, p, s = control.split(".")
    attack = {
        "two-parts": f"{h}.{p}",
        "four-parts": f"{h}.{p}.{s}.{s}",
        "five-parts-jwe": f"{h}.{p}.{s}.{s}.{s}",
        "empty": "",
        "dots-only": "..",
        "padded": f"{h}.{p}.{s}==",
        "standard-b64-alphabet": f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}+/",
        "space-inside": f"{h}.{p[:10]} {p[10:]}.{s}",
        "leading-space": f" {control}",
        "trailing-space": f"{control} ",
        "trailing-newline": f"{control}\n",
        "newline-in-header": f"{h}\n.{p}.{s}",
        "tab": f"{h}.{p}\t.{s}",
        "non-ascii": f"{h}.{p}é.{s}",
        "length-1-mod-4": f"{h}.{p}.{s}{'A' * ((1 - len(s)) % 4)}",
    }[mangle]
    assert outcome(attack, keys, now) == "malformed_token"


# --- signatures ------------------------------------------------------------------------------


def test_tampered_payload_keeps_no_signature(
    issuer: DemoIssuer, keys: StaticKeys, now: int
) -> None:
    control = token(issuer, now, claims={"sub": "dr-alice"})
    assert outcome(control, keys, now) == ACCEPTED
    h, _, s = control.split(".")
    for change in (
        {"sub": "ops-admin"},
        {"exp": now + 3000},
        {"act": {"sub": "scribe"}},
        {"scope": "lasthop:admin"},
    ):
        forged_payload = b64(dumps(claims_at(now, {"sub": "dr-alice", **change})))
        assert outcome(f"{h}.{forged_payload}.{s}", keys, now) == "bad_signature", change


def test_tampered_header_keeps_no_signature(issuer: DemoIssuer, keys: StaticKeys, now: int) -> None:
    control = token(issuer, now)
    assert outcome(control, keys, now) == ACCEPTED
    _, p, s = control.split(".")
    other_header = b64(dumps(header_for(issuer, {"typ": "JWT"})))
    assert outcome(f"{other_header}.{p}.{s}", keys, now) == "bad_signature"


@pytest.mark.parametrize(
    "signature",
    [
        "empty",
        "truncated",
        "bit-flip",
        "zeros",
        "r-zero-s-zero-der",
        "other-token",
        "attacker-key",
        "doubled",
    ],
)
def test_es256_signature_that_does_not_verify_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int, signature: str
) -> None:
    control = token(issuer, now)
    assert outcome(control, keys, now) == ACCEPTED
    h, p, s = control.split(".")
    raw = base64.urlsafe_b64decode(s + "==")
    flipped = bytes([raw[0] ^ 0x01]) + raw[1:]
    other = token(issuer, now, claims={"sub": "ops-admin"}).split(".")[2]
    attacker = sign(f"{h}.{p}", ATTACKER_KEY, "ES256")  # another ES256 key, our kid
    bad = {
        "empty": "",
        "truncated": s[:-4],
        "bit-flip": b64(flipped),
        "zeros": b64(bytes(64)),  # r = s = 0: CVE-2022-21449, "psychic signatures"
        "r-zero-s-zero-der": b64(b"\x30\x06\x02\x01\x00\x02\x01\x00"),
        "other-token": other,
        "attacker-key": attacker,
        "doubled": b64(raw + raw),
    }[signature]
    assert outcome(f"{h}.{p}.{bad}", keys, now) == "bad_signature"


@pytest.mark.parametrize("signature", ["empty", "zeros", "bit-flip", "es256-key"])
def test_rs256_signature_that_does_not_verify_is_refused(
    issuer: DemoIssuer, rs_issuer: DemoIssuer, keys: StaticKeys, now: int, signature: str
) -> None:
    control = token(rs_issuer, now)
    assert outcome(control, keys, now) == ACCEPTED
    h, p, s = control.split(".")
    raw = base64.urlsafe_b64decode(s + "==")
    bad = {
        "empty": "",
        "zeros": b64(bytes(len(raw))),
        "bit-flip": b64(raw[:-1] + bytes([raw[-1] ^ 0x80])),
        "es256-key": sign(f"{h}.{p}", issuer.private_key, "ES256"),
    }[signature]
    assert outcome(f"{h}.{p}.{bad}", keys, now) == "bad_signature"


def test_token_from_a_look_alike_issuer_key_is_refused(keys: StaticKeys, now: int) -> None:
    # Another issuer with the same kid: a rogue IdP or a rotated-out key.
    rogue = DemoIssuer("ES256", kid=ES_KID)
    own = keys_for(rogue)
    assert outcome(token(rogue, now), own, now) == ACCEPTED
    assert outcome(token(rogue, now), keys, now) == "bad_signature"


# --- size ------------------------------------------------------------------------------


def token_of_length(signer: DemoIssuer, now: int, length: int) -> str:
    """A valid token exactly `length` characters long, padded with a private claim."""
    base = len(token(signer, now, claims={"pad": ""}))
    start = max(0, (length - base) * 3 // 4 - 8)
    for pad in range(start, start + 16):
        for typ in ("at+jwt", "JWT", "application/at+jwt", "jwt"):
            candidate = token(signer, now, {"typ": typ}, claims={"pad": "x" * pad})
            if len(candidate) == length:
                return candidate
    raise AssertionError(f"cannot build a token of exactly {length} characters")


def test_token_at_the_size_limit_is_accepted_and_one_over_is_refused(
    issuer: DemoIssuer, keys: StaticKeys, now: int
) -> None:
    at_limit = token_of_length(issuer, now, MAX_TOKEN_BYTES)
    assert outcome(at_limit, keys, now) == ACCEPTED
    over = token_of_length(issuer, now, MAX_TOKEN_BYTES + 1)
    assert outcome(over, keys, now) == "token_too_large"


@pytest.mark.parametrize("length", [MAX_TOKEN_BYTES + 1, 64 * 1024, 1024 * 1024])
def test_oversized_token_is_refused_before_parsing(
    issuer: DemoIssuer, keys: StaticKeys, now: int, length: int
) -> None:
    assert outcome(token(issuer, now), keys, now) == ACCEPTED
    # Not even base64: size is checked first, so no work is spent on a huge token.
    assert outcome("A" * length, keys, now) == "token_too_large"


# --- through the pipeline ---------------------------------------------------------------


def decide(pipeline: Pipeline, headers: dict[str, list[str]], peer: str = "") -> Decision:
    return asyncio.run(pipeline.check(check_input(None, headers=headers, peer=peer)))


def bearer(tok: str, extra: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    return {"authorization": [f"Bearer {tok}"], **(extra or {})}


def access_claims(
    now: int, agents: list[str] | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A pipeline access token's claims: dr-alice, via `agents` (default: the scribe)."""
    chain = ["scribe"] if agents is None else agents
    claims: dict[str, Any] = {"purp": PURPOSE, "txn": "txn-0001"}
    if chain:
        claims["act"] = act_claim(chain)
        claims["client_id"] = chain[-1]
    return claims_at(now, {**claims, **(overrides or {})})


def access_token(
    issuer: DemoIssuer, now: int, agents: list[str] | None = None, **overrides: Any
) -> str:
    return raw_token(
        dumps(header_for(issuer)), dumps(access_claims(now, agents, overrides)), issuer
    )


@pytest.fixture
def granted(make_pipeline: PipelineFactory, clock: Clock, now: int) -> Pipeline:
    """A pipeline whose store holds the scribe's grant for dr-alice's p-1001 records."""
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=now)))
    return make_pipeline(store=store)


def summary(d: Decision) -> tuple[bool, int, str]:
    return d.allowed, d.status, d.reason


ALLOWED = (True, 200, "allowed")


def test_pipeline_control_allows_the_scribe(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    decision = decide(granted, bearer(access_token(issuer, now)))
    assert summary(decision) == ALLOWED, decision
    assert decision.chain is not None and decision.chain.render() == "dr-alice -> scribe"


@pytest.mark.parametrize("alg", ["none", "NONE", "HS256"])
def test_pipeline_refuses_unsigned_and_hmac_tokens(
    granted: Pipeline, issuer: DemoIssuer, rs_issuer: DemoIssuer, now: int, alg: str
) -> None:
    assert summary(decide(granted, bearer(access_token(issuer, now)))) == ALLOWED
    header = header_for(rs_issuer, {"alg": alg})
    pem = public_key_secrets(rs_issuer)["spki-pem"]
    tok = hmac_token(header, access_claims(now), pem, "HS256")
    assert summary(decide(granted, bearer(tok))) == (False, 401, "algorithm_not_allowed")


def test_txn_token_presented_as_the_access_token_is_refused(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    assert summary(decide(granted, bearer(access_token(issuer, now)))) == ALLOWED
    tok = raw_token(
        dumps(header_for(issuer, {"typ": "txntoken+jwt"})), dumps(access_claims(now)), issuer
    )
    assert summary(decide(granted, bearer(tok))) == (False, 401, "invalid_token_type")


# bearer framing (RFC 6750 2.1): exactly one header, exactly `Bearer <jwt>` (the scheme in
# any case, RFC 9110 11.1: tests/test_hostile_input.py)


@pytest.mark.parametrize(
    "framing",
    [
        "Bearer  {t}",
        " Bearer {t}",
        "Bearer {t} ",
        "Bearer\t{t}",
        "Bearer {t} extra",
        "Bearer {t},Bearer {t}",
        "Bearer {t}\n",
        "Bearer\n{t}",
        "Basic ZHItYWxpY2U6cGFzc3dvcmQ=",
        "DPoP {t}",
        "{t}",
        "Bearer",
        "Bearer ",
        "",
        "Bearer a.b",
        "Bearer a.b.c.d",
        "Bearer a..c",
        "Bearer {t}=",
    ],
    ids=repr,
)
def test_bearer_framing_is_exact(
    granted: Pipeline, issuer: DemoIssuer, now: int, framing: str
) -> None:
    tok = access_token(issuer, now)
    assert summary(decide(granted, bearer(tok))) == ALLOWED
    headers = {"authorization": [framing.format(t=tok)]}
    assert summary(decide(granted, headers)) == (False, 401, "malformed_authorization")


def test_two_authorization_headers_are_refused(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    tok = access_token(issuer, now)
    assert summary(decide(granted, bearer(tok))) == ALLOWED
    for values in ([f"Bearer {tok}", f"Bearer {tok}"], [f"Bearer {tok}", "Basic eDp5"]):
        decision = decide(granted, {"authorization": values})
        assert summary(decision) == (False, 401, "malformed_authorization"), values


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": []}, {"x-authorization": ["Bearer a.b.c"]}], ids=repr
)
def test_missing_authorization_header_is_missing_token(
    granted: Pipeline, issuer: DemoIssuer, now: int, headers: dict[str, list[str]]
) -> None:
    assert summary(decide(granted, bearer(access_token(issuer, now)))) == ALLOWED
    assert summary(decide(granted, headers)) == (False, 401, "missing_token")


def test_oversized_bearer_header_is_refused(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    assert summary(decide(granted, bearer(access_token(issuer, now)))) == ALLOWED
    huge = token_of_length(issuer, now, MAX_TOKEN_BYTES + 1)
    assert summary(decide(granted, bearer(huge))) == (False, 401, "token_too_large")


# act abuse (RFC 8693 4.1): the chain, its depth, its registry, and who presents it


@pytest.mark.parametrize(
    "act",
    [
        "scribe",
        ["scribe"],
        [{"sub": "scribe"}],
        7,
        True,
        {},
        {"sub": ""},
        {"sub": 7},
        {"sub": None},
        {"sub": ["scribe"]},
        {"sub": {"sub": "scribe"}},
        {"client_id": "scribe"},
        {"sub": "scribe", "act": "orchestrator"},
        {"sub": "scribe", "act": {}},
        {"sub": "scribe", "act": {"sub": ""}},
        {"sub": "scribe", "act": [{"sub": "orchestrator"}]},
    ],
    ids=repr,
)
def test_act_that_is_not_an_actor_object_is_invalid(
    granted: Pipeline, issuer: DemoIssuer, now: int, act: Any
) -> None:
    assert summary(decide(granted, bearer(access_token(issuer, now)))) == ALLOWED
    tok = access_token(issuer, now, act=act)
    assert summary(decide(granted, bearer(tok))) == (False, 401, "invalid_act")


@pytest.mark.parametrize("act", [None, {"sub": "scribe", "act": None}], ids=repr)
def test_null_act_is_invalid(granted: Pipeline, issuer: DemoIssuer, now: int, act: Any) -> None:
    # RFC 8693 4.1: `act` is a JSON object; JSON null is not one. A null `act`
    # must not read as "no delegation" (top level) or "end of chain" (nested).
    assert summary(decide(granted, bearer(access_token(issuer, now)))) == ALLOWED
    tok = access_token(issuer, now, act=act)
    assert summary(decide(granted, bearer(tok))) == (False, 401, "invalid_act")


@pytest.mark.parametrize(
    "act",
    [
        {"sub": "dr-alice"},
        {"sub": "scribe", "act": {"sub": "dr-alice"}},
        {"sub": "scribe", "act": {"sub": "scribe"}},
        {"sub": "scribe", "act": {"sub": "orchestrator", "act": {"sub": "scribe"}}},
        {"sub": "scribe", "act": {"sub": "orchestrator", "act": {"sub": "orchestrator"}}},
    ],
    ids=["actor-is-user", "first-agent-is-user", "actor-twice", "actor-loops-back", "inner-repeat"],
)
def test_cycles_in_the_chain_are_refused(
    granted: Pipeline, issuer: DemoIssuer, now: int, act: dict[str, Any]
) -> None:
    control = access_token(issuer, now, act=act_claim(["orchestrator", "scribe"]))
    assert summary(decide(granted, bearer(control))) == ALLOWED
    tok = access_token(issuer, now, act=act, client_id=act["sub"])
    assert summary(decide(granted, bearer(tok))) == (False, 403, "delegation_cycle")


def test_chain_at_the_depth_limit_is_allowed_and_one_more_is_refused(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, now: int, bundle: PolicyBundle
) -> None:
    four = ["billing-bot", "med-reconciler", "orchestrator", "scribe"]  # max_chain_depth 4
    # every hop must be allowed the purpose (agent-purpose-must-be-allowed), so here they are
    agents = {
        name: dataclasses.replace(agent, allowed_purposes=(PURPOSE,)) if name in four[:2] else agent
        for name, agent in bundle.agents.items()
    }
    store = EmbeddedGrantStore(Clock())
    asyncio.run(store.put(grant(now=now)))
    granted = make_pipeline(store=store, registry=SeededRegistry(agents))
    decision = decide(granted, bearer(access_token(issuer, now, four)))
    assert summary(decision) == ALLOWED
    assert decision.chain is not None and decision.chain.agents == tuple(four)
    five = ["planner", *four]
    assert summary(decide(granted, bearer(access_token(issuer, now, five)))) == (
        False,
        403,
        "chain_too_deep",
    )


@pytest.mark.parametrize(
    "agents",
    [
        ["ghost-agent"],
        ["ghost-agent", "scribe"],
        ["orchestrator", "ghost-agent", "scribe"],
        ["Scribe"],
        ["scribe "],
    ],
    ids=repr,
)
def test_unregistered_agent_anywhere_in_the_chain_is_refused(
    granted: Pipeline, issuer: DemoIssuer, now: int, agents: list[str]
) -> None:
    assert (
        summary(decide(granted, bearer(access_token(issuer, now, ["orchestrator", "scribe"]))))
        == ALLOWED
    )
    assert summary(decide(granted, bearer(access_token(issuer, now, agents)))) == (
        False,
        403,
        "agent_unregistered",
    )


@pytest.mark.parametrize(
    "agents",
    [
        ["chart-exporter"],
        ["chart-exporter", "scribe"],
        ["orchestrator", "chart-exporter", "scribe"],
    ],
    ids=repr,
)
def test_suspended_agent_anywhere_in_the_chain_is_refused(
    granted: Pipeline, issuer: DemoIssuer, now: int, agents: list[str]
) -> None:
    assert (
        summary(decide(granted, bearer(access_token(issuer, now, ["orchestrator", "scribe"]))))
        == ALLOWED
    )
    assert summary(decide(granted, bearer(access_token(issuer, now, agents)))) == (
        False,
        403,
        "agent_suspended",
    )


@pytest.mark.parametrize("presenter", ["client_id", "azp"])
@pytest.mark.parametrize("agent", ["scribe", "orchestrator", "chart-exporter"])
def test_agent_presenting_a_users_token_is_impersonation(
    granted: Pipeline, issuer: DemoIssuer, now: int, presenter: str, agent: str
) -> None:
    # The user's own token (no act), presented by a web client that is not an agent:
    # the user acts, and has no grant of their own.
    control = access_token(issuer, now, [], **{presenter: "ehr-portal"})
    decision = decide(granted, bearer(control))
    assert summary(decision) == (False, 403, "no_grant")
    assert decision.chain is not None and decision.chain.agents == ()
    tok = access_token(issuer, now, [], **{presenter: agent})
    assert summary(decide(granted, bearer(tok))) == (False, 403, "impersonation")


@pytest.mark.parametrize("presenter", ["client_id", "azp"])
@pytest.mark.parametrize("client", ["orchestrator", "dr-alice", "ehr-portal", "Scribe"])
def test_presenter_other_than_the_current_actor_is_impersonation(
    granted: Pipeline, issuer: DemoIssuer, now: int, presenter: str, client: str
) -> None:
    agents = ["orchestrator", "scribe"]
    control = access_token(issuer, now, agents, **{"client_id": DROP, presenter: "scribe"})
    assert summary(decide(granted, bearer(control))) == ALLOWED
    tok = access_token(issuer, now, agents, **{"client_id": DROP, presenter: client})
    assert summary(decide(granted, bearer(tok))) == (False, 403, "impersonation")


def test_no_presenter_claim_leaves_the_actor_to_the_chain(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    decision = decide(granted, bearer(access_token(issuer, now, client_id=DROP)))
    assert summary(decision) == ALLOWED
    assert decision.client_id == ""


@pytest.mark.parametrize("name", ["client_id", "azp"])
@pytest.mark.parametrize("value", [7, ["scribe"], {"id": "scribe"}, True], ids=repr)
def test_presenter_claim_of_the_wrong_type_is_invalid(
    granted: Pipeline, issuer: DemoIssuer, now: int, name: str, value: Any
) -> None:
    good: dict[str, Any] = {"client_id": DROP, name: "scribe"}
    assert summary(decide(granted, bearer(access_token(issuer, now, **good)))) == ALLOWED
    tok = access_token(issuer, now, **{"client_id": DROP, name: value})
    assert summary(decide(granted, bearer(tok))) == (False, 401, "invalid_claim")


def test_may_act_is_not_delegation(granted: Pipeline, issuer: DemoIssuer, now: int) -> None:
    may_act = {"sub": "scribe"}
    # may_act with the agent as client: the agent claims a delegation that never happened.
    tok = access_token(issuer, now, [], may_act=may_act, client_id="scribe")
    assert summary(decide(granted, bearer(tok))) == (False, 403, "impersonation")
    # may_act alone: the user acts (and holds no grant), never the scribe.
    decision = decide(granted, bearer(access_token(issuer, now, [], may_act=may_act)))
    assert summary(decision) == (False, 403, "no_grant")
    assert decision.chain is not None
    assert (decision.chain.agents, decision.chain.actor) == ((), "dr-alice")
    # control: the real delegation is allowed
    assert summary(decide(granted, bearer(access_token(issuer, now, ["scribe"])))) == ALLOWED


def comparable(d: Decision) -> tuple[Any, ...]:
    return (
        d.allowed,
        d.status,
        d.reason,
        d.chain,
        d.intent,
        d.route,
        d.grant,
        d.policies,
        d.client_id,
    )


NESTED_NOISE: list[dict[str, Any]] = [
    {"aud": "other-api"},
    {"scope": "lasthop:admin"},
    {"client_id": "orchestrator"},
    {"azp": "billing-bot"},
    {"purp": "billing"},
    {"txn": "txn-evil"},
    {"iss": "https://evil"},
    {"may_act": {"sub": "billing-bot"}},
    {"exp": 1},
    {"sub_profile": "admin"},
    {"client_id": "orchestrator", "purp": "billing", "scope": "lasthop:admin", "aud": "other-api"},
]


@pytest.mark.parametrize("noise", NESTED_NOISE, ids=repr)
@pytest.mark.parametrize("depth", ["actor", "first-agent"])
@pytest.mark.parametrize("with_grant", [True, False], ids=["granted", "no-grant"])
def test_claims_nested_inside_act_change_nothing(
    make_pipeline: PipelineFactory,
    clock: Clock,
    issuer: DemoIssuer,
    now: int,
    noise: dict[str, Any],
    depth: str,
    with_grant: bool,
) -> None:
    store = EmbeddedGrantStore(clock)
    if with_grant:
        asyncio.run(store.put(grant(now=now)))
    pipeline = make_pipeline(store=store)
    plain = {"sub": "scribe", "act": {"sub": "orchestrator"}}
    noisy = (
        {"sub": "scribe", **noise, "act": {"sub": "orchestrator"}}
        if depth == "actor"
        else {"sub": "scribe", "act": {"sub": "orchestrator", **noise}}
    )
    base = decide(pipeline, bearer(access_token(issuer, now, act=plain)))
    assert summary(base) == (ALLOWED if with_grant else (False, 403, "no_grant"))
    other = decide(pipeline, bearer(access_token(issuer, now, act=noisy)))
    assert comparable(other) == comparable(base)


# txn-token header (draft-ietf-oauth-transaction-tokens)


def txn_token(
    issuer: DemoIssuer, now: int, header: dict[str, Any] | None = None, **claims: Any
) -> str:
    base = {
        "txn": "txn-from-header",
        "scope": PURPOSE,
        "jti": "txn-jti-1",
        "tctx": {"patient": "p-1001"},
        "req_wl": "ehr-gateway",
    }
    return token(issuer, now, {"typ": "txntoken+jwt", **(header or {})}, {**base, **claims})


def test_valid_txn_token_sets_the_intent(granted: Pipeline, issuer: DemoIssuer, now: int) -> None:
    # The access token's own purpose would not match the grant; the txn-token's does.
    access = access_token(issuer, now, purp="billing", txn="txn-from-token")
    assert summary(decide(granted, bearer(access))) == (False, 403, "purpose_mismatch")
    decision = decide(granted, bearer(access, {"txn-token": [txn_token(issuer, now)]}))
    assert summary(decision) == ALLOWED
    assert decision.intent == Intent(purpose=PURPOSE, txn="txn-from-header", source="txn-token")


def test_without_a_txn_token_the_intent_is_the_access_tokens(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    decision = decide(granted, bearer(access_token(issuer, now, txn="txn-from-token")))
    assert summary(decision) == ALLOWED
    assert decision.intent == Intent(purpose=PURPOSE, txn="txn-from-token", source="access-token")


@pytest.mark.parametrize(
    "case",
    [
        "wrong-sub",
        "no-sub",
        "typ-at+jwt",
        "typ-jwt",
        "no-typ",
        "expired",
        "future-iat",
        "wrong-aud",
        "wrong-iss",
        "alg-none",
        "attacker-key",
        "tampered",
        "no-txn",
        "empty-txn",
        "txn-not-string",
        "scope-not-string",
        "embedded-jwk",
        "garbage",
        "empty",
    ],
)
def test_bad_txn_token_is_refused(
    granted: Pipeline, issuer: DemoIssuer, now: int, case: str
) -> None:
    access = access_token(issuer, now)
    good = txn_token(issuer, now)
    assert summary(decide(granted, bearer(access, {"txn-token": [good]}))) == ALLOWED
    h, p, _ = good.split(".")
    cases: dict[str, Callable[[], str]] = {
        "wrong-sub": lambda: txn_token(issuer, now, sub="bob"),
        "no-sub": lambda: txn_token(issuer, now, sub=DROP),
        "typ-at+jwt": lambda: txn_token(issuer, now, {"typ": "at+jwt"}),
        "typ-jwt": lambda: txn_token(issuer, now, {"typ": "JWT"}),
        "no-typ": lambda: txn_token(issuer, now, {"typ": DROP}),
        "expired": lambda: txn_token(issuer, now, iat=now - 700, exp=now - 100),
        "future-iat": lambda: txn_token(issuer, now, iat=now + 600, exp=now + 900),
        "wrong-aud": lambda: txn_token(issuer, now, aud="other-api"),
        "wrong-iss": lambda: txn_token(issuer, now, iss="https://evil.example"),
        "alg-none": lambda: f"{b64(dumps(header_for(issuer, {'alg': 'none'})))}.{p}.",
        "attacker-key": lambda: token(
            issuer, now, {"typ": "txntoken+jwt"}, {"txn": "t", "scope": PURPOSE}, key=ATTACKER_KEY
        ),
        "tampered": lambda: (
            f"{h}.{b64(dumps(claims_at(now, {'txn': 'x', 'scope': 'billing'})))}"
            f".{good.split('.')[2]}"
        ),
        "no-txn": lambda: txn_token(issuer, now, txn=DROP),
        "empty-txn": lambda: txn_token(issuer, now, txn=""),
        "txn-not-string": lambda: txn_token(issuer, now, txn=7),
        "scope-not-string": lambda: txn_token(issuer, now, scope=["clinical-documentation"]),
        "embedded-jwk": lambda: txn_token(issuer, now, {"jwk": ATTACKER_JWK}),
        "garbage": lambda: "not-a-token",
        "empty": lambda: "",
    }
    bad = cases[case]()
    decision = decide(granted, bearer(access, {"txn-token": [bad]}))
    assert summary(decision) == (False, 401, "invalid_txn_token")


def test_the_access_token_is_not_a_txn_token(
    granted: Pipeline, issuer: DemoIssuer, now: int
) -> None:
    access = access_token(issuer, now)
    decision = decide(granted, bearer(access, {"txn-token": [access]}))
    assert summary(decision) == (False, 401, "invalid_txn_token")


def test_two_txn_token_headers_are_refused(granted: Pipeline, issuer: DemoIssuer, now: int) -> None:
    access, good = access_token(issuer, now), txn_token(issuer, now)
    assert summary(decide(granted, bearer(access, {"txn-token": [good]}))) == ALLOWED
    decision = decide(granted, bearer(access, {"txn-token": [good, good]}))
    assert summary(decision) == (False, 401, "invalid_txn_token")
