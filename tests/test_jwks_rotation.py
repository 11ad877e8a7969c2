"""Issue 11, item 8: key rotation at the identity provider must not break traffic.

Before: a JWKS file was read once at start-up; a URL was refetched every 300 s
and never for an unknown `kid`, so a token signed with a newly published key
was `unknown_key` for minutes. Now: an unknown kid reloads at once, rate
limited (forged kids cannot hammer the IdP); a file is re-read when it
changes; a URL's refresh is jittered; a bad fetch keeps the last good set;
reload results and the set's age are metrics. The https path is tested
against a real TLS server with a CA made by the test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from authz.check import keys as jwks
from authz.check.identity import AccessTokenVerifier
from authz.config import IdentitySettings
from authz.dev.tokens import DemoIssuer
from authz.errors import ConfigError, TokenError
from authz.server.metrics import Metrics
from tests.conftest import rules
from tests.tls import TestCA

ALGS = ("RS256", "ES256", "EdDSA")
PATIENT_WAIT = 10.0  # how long a test lets a reload take: generous, the machine is shared


class JwksServer:
    """An https server of one JWKS document, with a certificate from the test's CA."""

    def __init__(self, ca: TestCA) -> None:
        self.body = b"{}"
        self.status = 200
        self.hits = 0
        self.location = ""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                server.hits += 1
                if server.location:
                    self.send_response(302)
                    self.send_header("location", server.location)
                    self.end_headers()
                    return
                self.send_response(server.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

        leaf = ca.issue("jwks-server")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(leaf.cert, leaf.key)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._http.socket = context.wrap_socket(self._http.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._http.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def serve(self, *issuers: DemoIssuer) -> None:
        self.body = json.dumps({"keys": [i.public_jwk for i in issuers]}).encode()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def server(ca: TestCA) -> Iterator[JwksServer]:
    srv = JwksServer(ca)
    try:
        yield srv
    finally:
        srv.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def remote(server: JwksServer, ca: TestCA, **kwargs: Any) -> jwks.RemoteKeys:
    options: dict[str, Any] = {"refresh_seconds": 300, "min_gap": 30, "wait": PATIENT_WAIT}
    return jwks.RemoteKeys(server.url, ALGS, ca_file=str(ca.path), **{**options, **kwargs})


def verify(keys: jwks.KeySource, token: str) -> str:
    """`accepted`, or the reason the token was refused, going through the reload path."""
    verifier = AccessTokenVerifier(keys, rules(), time.time)
    try:
        asyncio.run(verifier.verify_current(token))
    except TokenError as err:
        return str(err.reason)
    return "accepted"


# --- https ------------------------------------------------------------------------------------


def test_an_https_jwks_is_fetched_against_the_configured_ca(
    server: JwksServer, ca: TestCA, issuer: DemoIssuer
) -> None:
    server.serve(issuer)
    keys = remote(server, ca)
    assert keys.get(issuer.kid) is not None
    assert verify(keys, issuer.access_token("dr-alice", [])) == "accepted"


def test_an_https_jwks_from_an_untrusted_ca_stops_start_up(
    server: JwksServer, tmp_path: Path, issuer: DemoIssuer
) -> None:
    server.serve(issuer)
    other = TestCA(tmp_path / "other-ca", name="some other CA")
    with pytest.raises(ConfigError) as err:
        jwks.RemoteKeys(server.url, ALGS, refresh_seconds=300, min_gap=30, ca_file=str(other.path))
    assert err.value.key == "identity.jwks"
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_a_redirect_to_plain_http_is_refused(
    server: JwksServer, ca: TestCA, issuer: DemoIssuer
) -> None:
    server.serve(issuer)
    keys = remote(server, ca)
    server.location = "http://127.0.0.1:1/jwks.json"
    assert keys.reload() == "failed"
    assert keys.get(issuer.kid) is not None  # the last good set stays


def test_a_missing_ca_file_names_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        jwks.RemoteKeys(
            "https://127.0.0.1:1/jwks.json",
            ALGS,
            refresh_seconds=300,
            min_gap=30,
            ca_file=str(tmp_path / "nope.pem"),
        )
    assert err.value.key == "identity.jwks_ca_file"


# --- an unknown kid ----------------------------------------------------------------------------


def test_a_newly_published_key_is_used_on_its_first_token(
    server: JwksServer, ca: TestCA, issuer: DemoIssuer
) -> None:
    server.serve(issuer)
    keys = remote(server, ca)
    rotated = DemoIssuer("ES256", kid="rotated-2")
    token = rotated.access_token("dr-alice", [])
    server.serve(issuer, rotated)  # the IdP publishes its new key, then signs with it
    assert server.hits == 1
    assert verify(keys, token) == "accepted"
    assert server.hits == 2


def test_forged_kids_cannot_make_lasthop_hammer_the_idp(
    server: JwksServer, ca: TestCA, issuer: DemoIssuer
) -> None:
    server.serve(issuer)
    clock = Clock()
    keys = remote(server, ca, clock=clock, min_gap=30)
    forged = [
        DemoIssuer("ES256", kid=f"forged-{i}").access_token("dr-alice", []) for i in range(20)
    ]
    assert {verify(keys, t) for t in forged} == {"unknown_key"}
    assert server.hits == 2  # start-up, then one refetch for the whole burst
    clock.now += 29
    assert verify(keys, forged[0]) == "unknown_key"
    assert server.hits == 2
    clock.now += 2  # the minimum gap has passed
    assert verify(keys, forged[0]) == "unknown_key"
    assert server.hits == 3


def test_concurrent_unknown_kids_share_one_fetch(
    server: JwksServer, ca: TestCA, issuer: DemoIssuer
) -> None:
    server.serve(issuer)
    keys = remote(server, ca)
    rotated = DemoIssuer("ES256", kid="rotated-3")
    server.serve(issuer, rotated)

    async def burst() -> list[bool]:
        return await asyncio.gather(*(keys.refresh_unknown() for _ in range(25)))

    changed = asyncio.run(burst())
    assert all(changed)
    assert server.hits == 2


def test_the_check_waits_only_briefly_for_a_slow_idp(
    server: JwksServer, ca: TestCA, issuer: DemoIssuer
) -> None:
    """A check never waits out the fetch timeout: it gives up after `wait`, the fetch goes on."""
    server.serve(issuer)
    keys = remote(server, ca, wait=0.0)
    assert asyncio.run(keys.refresh_unknown()) is False


# --- a bad fetch -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, body",
    [
        (500, b"oops"),
        (200, b"<html>maintenance</html>"),
        (200, b'{"keys": []}'),
        (200, b'{"keys": [{"kid": "k", "kty": "oct", "k": "c2VjcmV0"}]}'),
        (200, b"[" * 5000),
    ],
    ids=["500", "not-json", "no-keys", "symmetric", "deep"],
)
def test_a_bad_fetch_keeps_the_last_good_keys_and_is_counted(
    server: JwksServer,
    ca: TestCA,
    issuer: DemoIssuer,
    status: int,
    body: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.serve(issuer)
    metrics = Metrics(CollectorRegistry())
    keys = remote(server, ca, observer=metrics)
    generation, confirmed = keys.generation, keys.loaded_at
    server.status, server.body = status, body
    with caplog.at_level(logging.ERROR, logger="authz.check.keys"):
        assert [keys.reload() for _ in range(3)] == ["failed"] * 3
    assert len(caplog.records) == 1  # logged once, not once a poll
    assert "keeping the last keys" in caplog.text
    assert (keys.generation, keys.loaded_at) == (generation, confirmed)
    assert verify(keys, issuer.access_token("dr-alice", [])) == "accepted"
    assert metrics.registry.get_sample_value("lasthop_jwks_reload_total", {"result": "failed"}) == 3
    assert (
        metrics.registry.get_sample_value("lasthop_jwks_reload_total", {"result": "updated"}) == 0
    )


def test_an_unchanged_fetch_confirms_the_set_without_flushing_caches(
    server: JwksServer, ca: TestCA, issuer: DemoIssuer
) -> None:
    server.serve(issuer)
    keys = remote(server, ca)
    generation, confirmed = keys.generation, keys.loaded_at
    assert keys.reload() == "unchanged"
    assert keys.generation == generation  # verified tokens stay cached
    assert keys.loaded_at >= confirmed


def test_the_refresh_interval_is_jittered(
    server: JwksServer, ca: TestCA, issuer: DemoIssuer
) -> None:
    server.serve(issuer)
    keys = remote(server, ca, refresh_seconds=300)
    delays = {keys.next_delay() for _ in range(50)}
    assert len(delays) > 1
    assert all((1 - jwks.JITTER) * 300 <= d <= 300 for d in delays)


# --- a file ----------------------------------------------------------------------------------


def write(path: Path, *issuers: DemoIssuer) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": [i.public_jwk for i in issuers]}))
    tmp.replace(path)  # as an operator (or a Kubernetes secret volume) swaps the file


def test_a_file_rotated_under_a_running_server_is_used_for_the_new_kid(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    path = tmp_path / "jwks.json"
    write(path, issuer)
    keys = jwks.FileKeys(path, ALGS, wait=PATIENT_WAIT)
    rotated = DemoIssuer("ES256", kid="file-rotated")
    token = rotated.access_token("dr-alice", [])
    assert verify(keys, token) == "unknown_key"  # not published yet
    keys._last_try -= jwks.FILE_REFETCH_MIN_SECONDS  # the next unknown kid may reload at once
    write(path, issuer, rotated)
    assert verify(keys, token) == "accepted"


def test_a_key_removed_from_the_file_stops_verifying_on_the_next_poll(
    tmp_path: Path, issuer: DemoIssuer
) -> None:
    path = tmp_path / "jwks.json"
    successor = DemoIssuer("ES256", kid="successor")
    write(path, issuer, successor)
    keys = jwks.FileKeys(path, ALGS)
    token = issuer.access_token("dr-alice", [])
    assert verify(keys, token) == "accepted"
    write(path, successor)  # the old key is withdrawn (say, it leaked)
    assert keys.reload() == "updated"
    assert verify(keys, token) == "unknown_key"
    assert keys.reload() == "unchanged"  # a stat, no re-read


def test_a_broken_file_keeps_the_last_good_keys(tmp_path: Path, issuer: DemoIssuer) -> None:
    path = tmp_path / "jwks.json"
    write(path, issuer)
    keys = jwks.FileKeys(path, ALGS)
    path.write_text('{"keys": [')  # a half-written file
    assert keys.reload() == "failed"
    assert keys.reload() == "failed"  # still broken: not "unchanged"
    assert verify(keys, issuer.access_token("dr-alice", [])) == "accepted"
    path.unlink()
    assert keys.reload() == "failed"
    assert verify(keys, issuer.access_token("dr-alice", [])) == "accepted"


def test_load_picks_a_file_or_a_url_and_resolves_paths(tmp_path: Path, issuer: DemoIssuer) -> None:
    write(tmp_path / "jwks.json", issuer)
    keys = jwks.load(IdentitySettings(jwks="jwks.json"), tmp_path)
    assert isinstance(keys, jwks.FileKeys)
    with pytest.raises(ConfigError, match="cannot read"):
        jwks.load(IdentitySettings(jwks="missing.json"), tmp_path)
