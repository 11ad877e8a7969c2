"""The signing key, the published JWKS, and the audit settings: every refusal names its key."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from authz import config
from authz.audit import setup as audit_setup
from authz.audit.signing import SigningKey, load_key, read_jwks, write_jwks
from authz.errors import ConfigError, JwksError


def pem(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, password: bytes | None = None
) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def test_generated_key_loads_back_with_the_same_kid(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = key.write_pem(tmp_path / "keys" / "audit.pem")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).kid == key.kid
    assert key.jwk["kty"] == "OKP" and key.jwk["crv"] == "Ed25519" and key.jwk["alg"] == "EdDSA"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"not a key", "is not a PEM private key"),
        (pem(ec.generate_private_key(ec.SECP256R1())), "not an Ed25519 key"),
        (pem(ed25519.Ed25519PrivateKey.generate(), b"secret"), "is encrypted"),
    ],
    ids=["missing", "garbage", "ec-key", "encrypted"],
)
def test_an_unusable_key_names_the_setting(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "audit.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"config `audit.signing_key`: .*{message}"):
        load_key(path)


def test_jwks_keeps_earlier_keys_after_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "lasthop-receipts.json"
    old, new = SigningKey.generate(), SigningKey.generate()
    write_jwks(path, old)
    doc = write_jwks(path, new)
    assert [k["kid"] for k in doc["keys"]] == [new.kid, old.kid]
    assert json.loads(path.read_text()) == doc
    assert set(read_jwks(path)) == {new.kid, old.kid}
    assert [k["kid"] for k in write_jwks(path, new)["keys"]] == [new.kid, old.kid]


def test_jwks_keeps_keys_of_other_types(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    other = {"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": "AAAA", "y": "AAAA"}
    path.write_text(json.dumps({"keys": [other]}))
    key = SigningKey.generate()
    assert write_jwks(path, key)["keys"] == [key.jwk, other]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "no `keys` list"),
        ('{"keys": [{"kty": "RSA", "kid": "r", "n": "x", "e": "AQAB"}]}', "no Ed25519 key"),
        ('{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}', "no string `kid`"),
        (
            '{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "AAAA"}]}',
            "not a valid Ed25519 key",
        ),
        ("{", "is not JSON"),
    ],
)
def test_read_jwks_refuses(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(text)
    with pytest.raises(JwksError, match=message):
        read_jwks(path)


def load(tmp_path: Path, audit: str) -> config.Settings:
    path = tmp_path / "lasthop.toml"
    path.write_text(f"[audit]\n{audit}\n")
    return config.load(path, environ={})


def test_audit_defaults_and_derived_paths(tmp_path: Path) -> None:
    s = load(tmp_path, 'path = "trail/decisions.jsonl"')
    assert s.audit.fsync == "always" and s.audit.fsync_interval_seconds == 0
    assert s.audit.receipts
    assert audit_setup.jwks_path(s) == tmp_path / "trail" / "lasthop-receipts.json"
    assert audit_setup.checkpoints_path(s) == tmp_path / "trail" / "decisions.jsonl.checkpoints"
    assert load(tmp_path, 'fsync = "50ms"').audit.fsync_interval_seconds == 0.05


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('fsync = "sometimes"', "audit.fsync"),
        ('fsync = "0ms"', "audit.fsync"),
        ('fsync = "50s"', "audit.fsync"),
        ('on_failure = "allow"', "audit.on_failure"),
        ("checkpoint_records = 0", "audit.checkpoint_records"),
        ("checkpoint_seconds = 0", "audit.checkpoint_seconds"),
        ("rotate_bytes = 10", "audit.rotate_bytes"),
        ("receipt_ttl_seconds = 0", "audit.receipt_ttl_seconds"),
        ("receipts = 1", "audit.receipts"),
    ],
)
def test_bad_audit_settings_name_the_key(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"`{key}`"):
        load(tmp_path, line)


def test_on_failure_allow_explains_why_not(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never allows a request it cannot record"):
        load(tmp_path, 'on_failure = "allow"')


def test_serving_needs_a_signing_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`audit.signing_key`: must name an Ed25519"):
        audit_setup.build(load(tmp_path, ""))


def test_build_writes_the_jwks_and_wires_receipts(tmp_path: Path) -> None:
    key = SigningKey.generate()
    key.write_pem(tmp_path / "audit.pem")
    parts = audit_setup.build(load(tmp_path, 'signing_key = "audit.pem"'))
    assert parts.key.kid == key.kid and parts.receipts is not None
    assert json.loads(parts.jwks_path.read_text()) == parts.jwks == {"keys": [key.jwk]}
    assert parts.log.options.key is not None and parts.log.durable_before_answer
    off = audit_setup.build(load(tmp_path, 'signing_key = "audit.pem"\nreceipts = false'))
    assert off.receipts is None
