"""The access webhook against a real HTTP receiver on loopback, verified by the reference
Standard Webhooks library: signed, retried with the same id, given up on, and its secret read
once at start-up (a bad one stops start-up naming the key)."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from authz.access import webhook
from authz.access.webhook import Webhook, read_secret
from authz.errors import ConfigError
from authz.model import AccessRequest

SECRET = "whsec_" + base64.b64encode(b"a-test-secret-of-32-bytes-long!!").decode()


class Receiver(http.server.ThreadingHTTPServer):
    """Records each POST (headers, body); answers 500 to the first `failures` of them."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures = failures
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/inbox"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
        failing = len(self.server.posts) <= self.server.failures
        self.send_response(500 if failing else 204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook, "FIRST_BACKOFF", 0.01)


class Results:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def webhook(self, result: str) -> None:
        self.seen.append(result)


REQUEST = AccessRequest(
    id="r-1",
    agent="scribe",
    user="dr-alice",
    chain=("scribe",),
    action="write",
    resource='Notes::"p-1001"',
    purpose="clinical-documentation",
    ttl_seconds=600,
    max_uses=0,
    txn="",
    reason="visit note",
    break_glass=False,
    created_at=1,
    expires_at=301,
    approvers=("user:dr-alice",),
)


def hook(url: str, secret: bytes, attempts: int = 3) -> tuple[Webhook, Results]:
    results = Results()
    return Webhook(url, secret, attempts=attempts, timeout=2.0, observer=results), results


def secret_bytes(tmp_path: Path, text: str = SECRET) -> bytes:
    path = tmp_path / "secret"
    path.write_text(text + "\n")
    return read_secret(path)


def deliver(sender: Webhook) -> None:
    async def go() -> None:
        sender.notify("pending", REQUEST)
        await sender.drain()

    asyncio.run(go())


def test_a_pending_request_arrives_signed_and_verifies(receiver: Receiver, tmp_path: Path) -> None:
    sender, results = hook(receiver.url, secret_bytes(tmp_path))
    deliver(sender)
    [(headers, body)] = receiver.posts
    payload = Verifier(SECRET).verify(body, headers)
    assert payload["type"] == "access_request.pending"
    assert payload["data"]["id"] == "r-1" and payload["data"]["approvers"] == ["user:dr-alice"]
    assert headers["webhook-id"].startswith("msg_") and headers["webhook-signature"][:3] == "v1,"
    assert results.seen == ["delivered"]


def test_a_receiver_with_another_secret_refuses_it(receiver: Receiver, tmp_path: Path) -> None:
    sender, _ = hook(receiver.url, secret_bytes(tmp_path))
    deliver(sender)
    [(headers, body)] = receiver.posts
    other = "whsec_" + base64.b64encode(b"some-other-secret-entirely-here!").decode()
    with pytest.raises(WebhookVerificationError):
        Verifier(other).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(SECRET).verify(body.replace(b"dr-alice", b"mallory!"), headers)


def test_a_failing_receiver_gets_retries_with_the_same_id(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.failures = 2
    sender, results = hook(receiver.url, secret_bytes(tmp_path))
    deliver(sender)
    assert len(receiver.posts) == 3
    assert len({h["webhook-id"] for h, _ in receiver.posts}) == 1
    assert results.seen == ["retried", "retried", "delivered"]
    for headers, body in receiver.posts:
        Verifier(SECRET).verify(body, headers)


def test_delivery_gives_up_after_its_attempts(receiver: Receiver, tmp_path: Path) -> None:
    receiver.failures = 10
    sender, results = hook(receiver.url, secret_bytes(tmp_path), attempts=2)
    deliver(sender)
    assert len(receiver.posts) == 2 and results.seen == ["retried", "failed"]


def test_an_unreachable_receiver_is_retried_then_given_up(tmp_path: Path) -> None:
    closed = Receiver()
    url = closed.url
    closed.shutdown()
    closed.server_close()
    sender, results = hook(url, secret_bytes(tmp_path), attempts=2)
    deliver(sender)
    assert results.seen == ["retried", "failed"]


def test_a_raw_secret_is_used_as_it_is(receiver: Receiver, tmp_path: Path) -> None:
    raw = "a plain shared secret, long enough"
    sender, _ = hook(receiver.url, secret_bytes(tmp_path, raw))
    deliver(sender)
    [(headers, body)] = receiver.posts
    assert json.loads(body)["data"]["id"] == "r-1"
    Verifier(raw.encode()).verify(body, headers)


@pytest.mark.parametrize(
    ("text", "says"),
    [("short", "shorter than 16 bytes"), ("whsec_!!!", "no base64"), (None, "cannot read")],
)
def test_an_unusable_secret_names_the_key(tmp_path: Path, text: str | None, says: str) -> None:
    path = tmp_path / "secret"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_secret(path)
    assert err.value.key == "access.webhook_secret_file" and says in str(err.value)
