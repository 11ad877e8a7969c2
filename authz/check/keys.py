"""Signing keys of the token issuer, from a JWKS file or an https URL.

Keys are loaded at start-up and, for a URL, refreshed in the background;
the request path only ever reads the current in-memory set. Each key is
bound to exactly one algorithm: its JWK `alg`, else the one its `kty`/`crv`
implies. Symmetric (`oct`) keys and private keys are refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt

from authz.errors import ConfigError

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str
    algorithm: str
    jwk: jwt.PyJWK

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        return bool(self.jwk.Algorithm.verify(signing_input, self.jwk.key, signature))


class KeySource(Protocol):
    generation: int  # changes whenever the key set changes (caches key on it)

    def get(self, kid: str) -> VerifyKey | None: ...


class StaticKeys:
    """A fixed key set; also what tests hand the verifier."""

    def __init__(self, keys: dict[str, VerifyKey]) -> None:
        self._keys = keys
        self.generation = 0

    def get(self, kid: str) -> VerifyKey | None:
        return self._keys.get(kid)

    def replace(self, keys: dict[str, VerifyKey]) -> None:
        self._keys = keys  # one reference swap: readers see the old or the new set
        self.generation += 1


def parse_jwks(text: str | bytes, allowed: tuple[str, ...], where: str) -> dict[str, VerifyKey]:
    """Parse a JWKS document. Raises ConfigError naming `where` on anything unusable."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError("identity.jwks", f"`{where}` is not JSON: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ConfigError("identity.jwks", f"`{where}` has no `keys` list")
    keys: dict[str, VerifyKey] = {}
    for index, entry in enumerate(doc["keys"]):
        key = _parse_key(entry, allowed, f"{where} key {index}")
        if key is None:
            continue
        if key.kid in keys:
            raise ConfigError("identity.jwks", f"`{where}` repeats kid `{key.kid}`")
        keys[key.kid] = key
    if not keys:
        raise ConfigError("identity.jwks", f"`{where}` holds no usable key for {list(allowed)}")
    return keys


def _parse_key(entry: Any, allowed: tuple[str, ...], where: str) -> VerifyKey | None:
    if not isinstance(entry, dict):
        raise ConfigError("identity.jwks", f"{where} is not an object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ConfigError("identity.jwks", f"{where} has no `kid`")
    if entry.get("kty") == "oct":
        raise ConfigError("identity.jwks", f"{where} (`{kid}`) is symmetric; only public keys")
    if "d" in entry:
        raise ConfigError("identity.jwks", f"{where} (`{kid}`) is a private key; publish public")
    if entry.get("use", "sig") != "sig":
        return None  # an encryption key: not ours to use
    try:
        jwk = jwt.PyJWK(entry)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as err:
        raise ConfigError("identity.jwks", f"{where} (`{kid}`) is unusable: {err}") from err
    if jwk.algorithm_name not in allowed:
        log.warning(
            "jwks key `%s` uses `%s`, not in identity.algorithms; ignored",
            kid,
            jwk.algorithm_name,
            extra={"event": "jwks.key_ignored"},
        )
        return None
    return VerifyKey(kid=kid, algorithm=jwk.algorithm_name, jwk=jwk)


def load_file(path: Path, allowed: tuple[str, ...]) -> StaticKeys:
    try:
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError("identity.jwks", f"cannot read `{path}`: {err.strerror}") from err
    return StaticKeys(parse_jwks(text, allowed, str(path)))


def _fetch(url: str) -> bytes:
    context = ssl.create_default_context()
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECONDS, context=context) as resp:
        body: bytes = resp.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
    return body


class RemoteKeys(StaticKeys):
    """Keys from an https URL: fetched once at start-up, then refreshed in the background.

    A failed refresh keeps the last good set and logs; it never empties the set.
    """

    def __init__(self, url: str, allowed: tuple[str, ...], refresh_seconds: int) -> None:
        self._url = url
        self._allowed = allowed
        self._refresh = refresh_seconds
        try:
            body = _fetch(url)
        except (OSError, ValueError) as err:
            raise ConfigError("identity.jwks", f"cannot fetch `{url}`: {err}") from err
        super().__init__(parse_jwks(body, allowed, url))

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            try:
                body = await asyncio.to_thread(_fetch, self._url)
                self.replace(parse_jwks(body, self._allowed, self._url))
            except (OSError, ValueError, ConfigError) as err:
                log.error(
                    "jwks refresh from `%s` failed, keeping the last good keys: %s",
                    self._url,
                    err,
                    extra={"event": "jwks.refresh_failed"},
                )


def load(source: str, base: Path, allowed: tuple[str, ...], refresh_seconds: int) -> StaticKeys:
    if source.startswith("https://"):
        return RemoteKeys(source, allowed, refresh_seconds)
    path = Path(source)
    return load_file(path if path.is_absolute() else base / path, allowed)
