"""Signing keys of the token issuer, from a JWKS file or an https URL, kept current.

Keys are loaded at start-up (a key set that cannot be loaded stops start-up);
the request path only reads the in-memory set. Each key is bound to exactly
one algorithm: its JWK `alg`, else the one its `kty`/`crv` implies.
Symmetric (`oct`) keys and private keys are refused.

Rotation at the identity provider must not break traffic:

- a file is checked for changes every FILE_POLL_SECONDS (a stat, and a parse
  only when it changed), so a key added or removed takes effect in seconds;
- a URL is refetched every `identity.jwks_refresh_seconds`, jittered so that
  a fleet of sidecars does not fetch in step;
- a token naming a `kid` we lack triggers an immediate reload, at most once
  per `identity.jwks_refetch_min_seconds` (a file: once a second), so forged
  kids cannot make Lasthop hammer the IdP; the check waits for it at most
  UNKNOWN_KID_WAIT_SECONDS, then the reload finishes in the background;
- a reload that fails (unreachable, not JSON, no usable key) keeps the last
  good set, is logged and counted; it never empties the set.

`loaded_at` is when the set was last confirmed (loaded, or refetched
unchanged): its age is exported as a metric, with the reload results.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt

from authz.config import IdentitySettings
from authz.errors import ConfigError

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT_SECONDS = 5.0
FILE_POLL_SECONDS = 2.0
FILE_REFETCH_MIN_SECONDS = 1.0
UNKNOWN_KID_WAIT_SECONDS = 0.1  # well inside Envoy's usual ext_authz timeout
JITTER = 0.2  # a refresh comes after 80-100 % of the interval
RESULTS = ("updated", "unchanged", "failed")  # the metric's label values


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

    async def refresh_unknown(self) -> bool:
        """A token named a kid we lack: reload if allowed now; True if the set changed."""
        ...


class KeysObserver(Protocol):
    """What a reloading key set reports (metrics); `result` is one of RESULTS."""

    def keys_reloaded(self, result: str) -> None: ...


class StaticKeys:
    """A fixed key set; also what tests hand the verifier."""

    def __init__(self, keys: dict[str, VerifyKey]) -> None:
        self._keys = keys
        self.generation = 0
        self.loaded_at = time.time()

    def get(self, kid: str) -> VerifyKey | None:
        return self._keys.get(kid)

    def replace(self, keys: dict[str, VerifyKey]) -> None:
        self._keys = keys  # one reference swap: readers see the old or the new set
        self.generation += 1

    async def refresh_unknown(self) -> bool:
        return False


def parse_jwks(text: str | bytes, allowed: tuple[str, ...], where: str) -> dict[str, VerifyKey]:
    """Parse a JWKS document. Raises ConfigError naming `where` on anything unusable."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
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


class ReloadingKeys(StaticKeys):
    """A key set read from somewhere that changes: `_read` says where (a file, a URL)."""

    def __init__(
        self,
        where: str,
        allowed: tuple[str, ...],
        *,
        interval: float,
        min_gap: float,
        observer: KeysObserver | None,
        clock: Callable[[], float] = time.monotonic,
        wait: float = UNKNOWN_KID_WAIT_SECONDS,
    ) -> None:
        self._where = where
        self._wait = wait  # how long a check waits for an unknown-kid reload
        self._allowed = allowed
        self._interval = interval
        self._min_gap = min_gap
        self._observer = observer
        self._clock = clock
        self._lock = threading.Lock()  # reloads run in worker threads
        self._last_error = ""
        self._last_try = -min_gap
        self._inflight: asyncio.Future[str] | None = None
        try:
            self._body = self._read()
        except (OSError, ValueError) as err:
            raise ConfigError("identity.jwks", f"cannot read `{where}`: {_why(err)}") from err
        super().__init__(parse_jwks(self._body, allowed, where))

    def _read(self) -> bytes:
        """The JWKS document as it is now; raises OSError or ValueError."""
        raise NotImplementedError

    def reload(self) -> str:
        """Read the set again (blocking); keep the last good one on any failure."""
        with self._lock:
            result = self._reload()
        if self._observer is not None:
            self._observer.keys_reloaded(result)
        return result

    def _reload(self) -> str:
        try:
            body = self._read()
            keys = None if body == self._body else parse_jwks(body, self._allowed, self._where)
        except (OSError, ValueError, ConfigError) as err:
            why = _why(err)
            if why != self._last_error:  # once per distinct failure, not once a poll
                log.error(
                    "jwks reload from `%s` failed, keeping the last keys: %s",
                    self._where,
                    why,
                    extra={"event": "jwks.refresh_failed"},
                )
            self._last_error = why
            return "failed"
        self._last_error = ""
        self.loaded_at = time.time()
        if keys is None:
            return "unchanged"
        self._body = body
        self.replace(keys)
        log.info(
            "jwks reloaded from `%s`: kids %s",
            self._where,
            sorted(keys),
            extra={"event": "jwks.reloaded"},
        )
        return "updated"

    async def refresh_unknown(self) -> bool:
        generation = self.generation
        inflight = self._inflight
        if inflight is None:
            if self._clock() - self._last_try < self._min_gap:
                return False
            self._last_try = self._clock()
            inflight = self._inflight = asyncio.ensure_future(asyncio.to_thread(self.reload))
            inflight.add_done_callback(self._landed)
        try:
            await asyncio.wait_for(asyncio.shield(inflight), self._wait)
        except TimeoutError:
            return False  # it goes on in the background; a later check will see it
        return self.generation != generation

    def _landed(self, done: asyncio.Future[str]) -> None:
        self._inflight = None

    def next_delay(self) -> float:
        return self._interval * random.uniform(1 - JITTER, 1.0)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.next_delay())
            await asyncio.to_thread(self.reload)


class FileKeys(ReloadingKeys):
    """Keys from a local file, reparsed when its size, times or inode change."""

    def __init__(
        self,
        path: Path,
        allowed: tuple[str, ...],
        observer: KeysObserver | None = None,
        wait: float = UNKNOWN_KID_WAIT_SECONDS,
    ) -> None:
        self._path = path
        self._seen: tuple[tuple[int, int, int, int], bytes] | None = None  # last stat, bytes
        super().__init__(
            str(path),
            allowed,
            interval=FILE_POLL_SECONDS,
            min_gap=FILE_REFETCH_MIN_SECONDS,
            observer=observer,
            wait=wait,
        )

    def _read(self) -> bytes:
        stat = self._path.stat()
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if self._seen is not None and self._seen[0] == signature:
            return self._seen[1]
        body = self._path.read_bytes()
        self._seen = (signature, body)
        return body

    def next_delay(self) -> float:
        return self._interval  # a stat a few seconds apart: nothing to spread out


class RemoteKeys(ReloadingKeys):
    """Keys from an https URL, verified against the system CAs or `ca_file`."""

    def __init__(
        self,
        url: str,
        allowed: tuple[str, ...],
        *,
        refresh_seconds: float,
        min_gap: float,
        ca_file: str = "",
        observer: KeysObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: float = UNKNOWN_KID_WAIT_SECONDS,
    ) -> None:
        try:
            self._context = ssl.create_default_context(cafile=ca_file or None)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError("identity.jwks_ca_file", f"cannot load `{ca_file}`: {err}") from err
        super().__init__(
            url,
            allowed,
            interval=refresh_seconds,
            min_gap=min_gap,
            observer=observer,
            clock=clock,
            wait=wait,
        )

    def _read(self) -> bytes:
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._context), _HttpsOnlyRedirects()
        )
        with opener.open(self._where, timeout=FETCH_TIMEOUT_SECONDS) as resp:
            body: bytes = resp.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        return body


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect may not downgrade the fetch to plain http."""

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Any:
        if not newurl.startswith("https://"):
            raise ValueError(f"redirected to `{newurl}`, which is not https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _under(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _why(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


def load(
    ident: IdentitySettings, base: Path, observer: KeysObserver | None = None
) -> ReloadingKeys:
    """The issuer's keys as the settings name them: a file (relative to `base`) or a URL."""
    source = ident.jwks
    if source.startswith("https://"):
        return RemoteKeys(
            source,
            ident.algorithms,
            refresh_seconds=ident.jwks_refresh_seconds,
            min_gap=ident.jwks_refetch_min_seconds,
            ca_file=str(_under(base, ident.jwks_ca_file)) if ident.jwks_ca_file else "",
            observer=observer,
        )
    return FileKeys(_under(base, source), ident.algorithms, observer)
