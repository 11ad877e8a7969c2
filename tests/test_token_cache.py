"""The verified-token cache: reused only while unexpired and while the key set is unchanged."""

from __future__ import annotations

import json

import pytest

from authz.check import keys as jwks
from authz.check.identity import AccessTokenVerifier
from authz.dev.tokens import DemoIssuer
from authz.errors import TokenError
from tests.conftest import Clock, keys_for, rules


def test_a_repeated_token_is_not_verified_again(
    issuer: DemoIssuer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = AccessTokenVerifier(keys_for(issuer), rules(), clock)
    token = issuer.access_token("dr-alice", ["scribe"])
    first = verifier.verify(token)
    calls = []
    monkeypatch.setattr("authz.check.identity.verify", lambda *a: calls.append(a))
    assert verifier.verify(token) is first
    assert calls == []


def test_a_cached_token_still_expires(issuer: DemoIssuer, clock: Clock) -> None:
    verifier = AccessTokenVerifier(keys_for(issuer), rules(), clock)
    token = issuer.access_token("dr-alice", ["scribe"], ttl=60)
    verifier.verify(token)
    clock.now += 60 + 31  # past exp and the 30 s leeway
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    assert info.value.reason == "token_expired"


def test_a_key_rotation_drops_cached_tokens(
    issuer: DemoIssuer, rs_issuer: DemoIssuer, clock: Clock
) -> None:
    keys = keys_for(issuer)
    verifier = AccessTokenVerifier(keys, rules(), clock)
    token = issuer.access_token("dr-alice", ["scribe"])
    verifier.verify(token)
    keys.replace(
        jwks.parse_jwks(json.dumps({"keys": [rs_issuer.public_jwk]}), ("RS256", "ES256"), "rotated")
    )
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    assert info.value.reason == "unknown_key"


def test_a_refused_token_is_refused_every_time(issuer: DemoIssuer, clock: Clock) -> None:
    verifier = AccessTokenVerifier(keys_for(issuer), rules(), clock)
    token = issuer.access_token("dr-alice", ["scribe"])
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(3):
        with pytest.raises(TokenError):
            verifier.verify(tampered)
