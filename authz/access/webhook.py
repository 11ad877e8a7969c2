"""The access webhook: pending and break-glass requests POSTed, signed, to an approval app.

Signed as Standard Webhooks (standardwebhooks.com) sign: three headers

    webhook-id          msg_<32 hex>, the same on every retry of one message
    webhook-timestamp   seconds since the epoch when it was sent
    webhook-signature   v1,<base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>

with the secret read from `access.webhook_secret_file` (`whsec_<base64>`, as
Standard Webhooks issues them, or any other bytes used as they are). A
receiver recomputes the HMAC over the raw body, compares in constant time,
and refuses timestamps more than a few minutes old; any Standard Webhooks
library does this (`Webhook(secret).verify(body, headers)`).

The body is JSON: {"type": "access_request.pending" | "access_request.break_glass",
"timestamp": RFC 3339, "data": the request as `lasthop access show --output json`
prints it}. Delivery runs in the background, never on the request path: up
to `access.webhook_attempts` tries, `access.webhook_timeout_ms` each, waiting
0.5 s, 1 s, 2 s ... between them; any 2xx answer is delivered. Retries live
in this process: a replica that stops drops the ones it still holds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from authz.codec import rfc3339
from authz.errors import ConfigError
from authz.model import AccessRequest

log = logging.getLogger(__name__)

FIRST_BACKOFF = 0.5
RESULTS = ("delivered", "retried", "failed")
SECRET_PREFIX = "whsec_"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class WebhookObserver(Protocol):
    """`result`: delivered, retried (one failed try, another follows) or failed (gave up)."""

    def webhook(self, result: str) -> None: ...


def read_secret(path: Path) -> bytes:
    """The signing secret; ConfigError naming `access.webhook_secret_file` when unusable."""
    key = "access.webhook_secret_file"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(key, f"cannot read `{path}`: {err}") from None
    if text.startswith(SECRET_PREFIX):
        try:
            secret = base64.b64decode(text.removeprefix(SECRET_PREFIX), validate=True)
        except ValueError:
            raise ConfigError(key, f"`{path}` holds `whsec_` but no base64 after it") from None
    else:
        secret = text.encode()
    if len(secret) < 16:
        raise ConfigError(key, f"the secret in `{path}` is shorter than 16 bytes")
    return secret


def sign(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class Webhook:
    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        attempts: int,
        timeout: float,
        observer: WebhookObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._secret = secret
        self._attempts = attempts
        self._timeout = timeout
        self._observer = observer
        self._clock = clock
        self._tasks: set[asyncio.Task[bool]] = set()

    def notify(self, event: str, request: AccessRequest) -> None:
        """Deliver in the background; never blocks or fails the caller."""
        body = json.dumps(
            {
                "type": f"access_request.{event}",
                "timestamp": rfc3339(self._clock()),
                "data": asdict(request),
            },
            separators=(",", ":"),
        ).encode()
        task = asyncio.get_running_loop().create_task(self.deliver(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(self, body: bytes) -> bool:
        """Try until a 2xx answer or out of attempts; True when delivered."""
        message_id = f"msg_{secrets.token_hex(16)}"
        pause = FIRST_BACKOFF
        for attempt in range(1, self._attempts + 1):
            problem = await asyncio.to_thread(self._post, message_id, body)
            if not problem:
                self._report("delivered")
                return True
            last = attempt == self._attempts
            self._report("failed" if last else "retried")
            log.warning(
                "webhook %s try %d of %d: %s",
                message_id,
                attempt,
                self._attempts,
                problem,
                extra={"event": "access.webhook_failed"},
            )
            if not last:
                await asyncio.sleep(pause)
                pause *= 2
        return False

    def _post(self, message_id: str, body: bytes) -> str:
        """One try: empty on a 2xx answer, else what went wrong."""
        timestamp = int(self._clock())
        request = urllib.request.Request(self._url, data=body, method="POST")
        request.add_header("content-type", "application/json")
        request.add_header("webhook-id", message_id)
        request.add_header("webhook-timestamp", str(timestamp))
        request.add_header("webhook-signature", sign(self._secret, message_id, timestamp, body))
        try:
            with _OPENER.open(request, timeout=self._timeout) as response:
                response.read()
                return ""
        except urllib.error.HTTPError as err:
            err.close()
            return f"HTTP {err.code}"
        except (OSError, ValueError) as err:
            return f"{type(err).__name__}: {err}"

    def _report(self, result: str) -> None:
        if self._observer:
            self._observer.webhook(result)

    async def drain(self) -> None:
        """Wait for every delivery under way to end, delivered or given up."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
