"""The alert webhook: an HTTP POST of the detection as JSON, signed so the receiver can trust it.

    POST detect.webhook_url
    content-type: application/json
    x-lasthop-timestamp: 1767225600                      seconds since the epoch
    x-lasthop-signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

A receiver recomputes the signature over the timestamp and the raw body with
the shared secret (`detect.webhook_secret_file`), compares in constant time
(`verify` below does both) and refuses a timestamp more than five minutes
off, so a captured request cannot be replayed later. Delivery is off the
check path, in a worker thread: up to ATTEMPTS tries with a growing pause,
each bounded by `detect.webhook_timeout_ms`; a 2xx ends it. A delivery that
never succeeds is logged and counted (`lasthop_detect_actions_total`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from authz.errors import ConfigError

log = logging.getLogger(__name__)

ATTEMPTS = 4
PAUSES = (0.2, 1.0, 3.0)  # between attempts
TOLERANCE_SECONDS = 300
SIGNATURE_HEADER = "x-lasthop-signature"
TIMESTAMP_HEADER = "x-lasthop-timestamp"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Acted(Protocol):
    def acted(self, action: str, ok: bool) -> None: ...


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, now: float) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def read_secret(path: Path) -> bytes:
    """The shared secret at start-up; ConfigError naming the key when it is unusable."""
    try:
        secret = path.read_bytes().strip()
    except OSError as err:
        raise ConfigError(
            "detect.webhook_secret_file", f"cannot read `{path}`: {err.strerror or err}"
        ) from err
    if len(secret) < 16:
        raise ConfigError("detect.webhook_secret_file", f"`{path}` holds fewer than 16 bytes")
    return secret


class Webhook:
    def __init__(
        self,
        url: str,
        secret: bytes,
        timeout: float,
        observer: Acted | None = None,
        clock: Callable[[], float] = time.time,
        pauses: tuple[float, ...] = PAUSES,
    ) -> None:
        self.url = url
        self._secret = secret
        self._timeout = timeout
        self._observer = observer
        self._clock = clock
        self._pauses = pauses

    async def send(self, payload: dict[str, Any]) -> bool:
        """Deliver `payload`, retrying; True once the receiver answered 2xx."""
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(self._pauses[min(attempt - 1, len(self._pauses) - 1)])
            problem = await asyncio.to_thread(self._post, body)
            if not problem:
                self._report(True)
                return True
            log.warning("webhook %s attempt %d: %s", self.url, attempt + 1, problem)
        log.error("webhook %s: gave up after %d attempts", self.url, ATTEMPTS)
        self._report(False)
        return False

    def _post(self, body: bytes) -> str:
        """One attempt; "" on a 2xx, else what went wrong."""
        timestamp = int(self._clock())
        request = urllib.request.Request(self.url, data=body, method="POST")
        request.add_header("content-type", "application/json")
        request.add_header(TIMESTAMP_HEADER, str(timestamp))
        request.add_header(SIGNATURE_HEADER, sign(self._secret, timestamp, body))
        try:
            with _OPENER.open(request, timeout=self._timeout) as response:
                return "" if 200 <= response.status < 300 else f"status {response.status}"
        except urllib.error.HTTPError as err:
            return f"status {err.code}"
        except (urllib.error.URLError, OSError) as err:
            return f"{type(err).__name__}: {err}"

    def _report(self, ok: bool) -> None:
        if self._observer:
            self._observer.acted("webhook", ok)
