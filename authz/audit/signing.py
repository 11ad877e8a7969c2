"""Lasthop's own Ed25519 key: it signs audit checkpoints and decision receipts.

- `load_key` reads `audit.signing_key`, a PEM file holding an unencrypted
  Ed25519 private key; anything else stops start-up with a `ConfigError`
  naming the key and the file.
- A key's `kid` is its RFC 7638 JWK thumbprint, so the same key always has
  the same id and an auditor can recompute it.
- The public half is published as a JWKS (`audit.jwks_path`, and on the
  metrics listener). `write_jwks` keeps the keys already in that file, so
  the trail written under an earlier key still verifies after a rotation.
- `read_jwks` is what the offline verifiers use: only Ed25519 (`OKP`,
  `Ed25519`) public keys, each with a `kid`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from authz.codec import b64url, b64url_decode
from authz.errors import ConfigError, JwksError

log = logging.getLogger(__name__)

SIGNING_KEY_SETTING = "audit.signing_key"
MAX_KEY_BYTES = 16 * 1024
MAX_JWKS_BYTES = 1024 * 1024


def public_jwk(public: Ed25519PublicKey) -> dict[str, str]:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = b64url(raw)
    # RFC 7638: the thumbprint hashes the required members, sorted, no whitespace.
    thumbprint = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": x}, sort_keys=True, separators=(",", ":")
    ).encode("ascii")
    kid = b64url(hashlib.sha256(thumbprint).digest())
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    jwk: dict[str, str]  # the public half, with `kid`

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> SigningKey:
        return cls(private=private, jwk=public_jwk(private.public_key()))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls.from_private(Ed25519PrivateKey.generate())

    def write_pem(self, path: Path) -> Path:
        """Write the private key, readable by its owner only (0600)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        return path


def load_key(path: Path, setting: str = SIGNING_KEY_SETTING) -> SigningKey:
    """The Ed25519 private key in the PEM file at `path`; ConfigError naming `setting` otherwise."""
    try:
        data = path.read_bytes()[: MAX_KEY_BYTES + 1]
    except OSError as err:
        raise ConfigError(setting, f"cannot read `{path}`: {err.strerror or err}") from err
    if len(data) > MAX_KEY_BYTES:
        raise ConfigError(setting, f"`{path}` is larger than {MAX_KEY_BYTES} bytes; not a key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:  # encrypted PEM
        raise ConfigError(
            setting,
            f"`{path}` is encrypted; Lasthop needs an unencrypted "
            "PEM key (protect it with file permissions)",
        ) from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ConfigError(setting, f"`{path}` is not a PEM private key: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            setting,
            f"`{path}` holds a {type(key).__name__.removeprefix('_')}, "
            "not an Ed25519 key; generate one with `lasthop audit keygen FILE`",
        )
    if path.stat().st_mode & 0o077:
        log.warning(
            "%s `%s` is readable by other users; make it 0600",
            setting,
            path,
            extra={"event": "audit.key_readable_by_others"},
        )
    return SigningKey.from_private(key)


def jwks_document(keys: list[dict[str, str]]) -> dict[str, Any]:
    return {"keys": keys}


def write_jwks(path: Path, key: SigningKey) -> dict[str, Any]:
    """Write `key`'s public JWK to `path`, keeping every other key already listed there."""
    kept: list[dict[str, str]] = []
    if path.exists():
        try:
            _read_entries(path)  # refuse to rewrite a file that is not a sound JWKS
            doc = json.loads(path.read_bytes())
        except (JwksError, OSError, ValueError) as err:
            raise ConfigError("audit.jwks_path", str(err)) from err
        kept = [
            jwk for jwk in doc["keys"] if not (isinstance(jwk, dict) and jwk.get("kid") == key.kid)
        ]
    doc = jwks_document([key.jwk, *kept])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # workers write it at once
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="ascii")
    os.replace(tmp, path)
    return doc


def read_jwks(path: Path) -> dict[str, Ed25519PublicKey]:
    """kid -> public key, for every Ed25519 key in the JWKS at `path`. Raises JwksError."""
    keys: dict[str, Ed25519PublicKey] = {}
    for kid, jwk in _read_entries(path).items():
        try:
            keys[kid] = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
        except ValueError as err:
            raise JwksError(f"`{path}`: key `{kid}` is not a valid Ed25519 key: {err}") from err
    if not keys:
        raise JwksError(f"`{path}` holds no Ed25519 key")
    return keys


def verify_signature(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _read_entries(path: Path) -> dict[str, dict[str, str]]:
    try:
        text = path.read_bytes()[:MAX_JWKS_BYTES]
        doc = json.loads(text)
    except OSError as err:
        raise JwksError(f"cannot read JWKS `{path}`: {err.strerror or err}") from err
    except ValueError as err:
        raise JwksError(f"JWKS `{path}` is not JSON: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError(f"JWKS `{path}` has no `keys` list")
    entries: dict[str, dict[str, str]] = {}
    for index, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        kid, x = jwk.get("kid"), jwk.get("x")
        if not isinstance(kid, str) or not kid or not isinstance(x, str):
            raise JwksError(f"JWKS `{path}` key {index} has no string `kid` and `x`")
        if kid in entries:
            raise JwksError(f"JWKS `{path}` repeats kid `{kid}`")
        entries[kid] = {str(k): str(v) for k, v in jwk.items()}
    return entries
