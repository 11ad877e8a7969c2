"""Integration fixtures: real Redis, real `lasthop serve`, real Envoy, the demo EHR upstream.

Everything binds 127.0.0.1 on free ports (authz.dev.stack) and is stopped when the
fixture ends. The shared stack is session-scoped: tests on it use their own
user ids, so grants issued by one test never cover another test's requests.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authz._proto import grants_pb2 as pb
from authz.cli.admin_client import AdminClient
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.dev.upstream import DemoUpstream

PURPOSE = "clinical-documentation"
RECORDS = "/patients/p-1001/records"
HTTP_TIMEOUT = 5.0
CLI_TIMEOUT = 30.0

# No proxy, whatever the environment says: all traffic stays on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lowercase names
    body: dict[str, Any]
    raw: bytes

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", ""))

    @property
    def upstream_saw(self) -> dict[str, str]:
        """The `x-lasthop-*` headers the demo upstream received (lowercase names)."""
        seen = self.body.get("lasthop", {})
        assert isinstance(seen, dict), self.body
        return {str(k).lower(): str(v) for k, v in seen.items()}


def _parse(status: int, headers: Any, raw: bytes) -> Response:
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return Response(status, {k.lower(): v for k, v in headers.items()}, body, raw)


def request(
    base: str,
    path: str,
    token: str | None = None,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
) -> Response:
    """One HTTP request with urllib; any status comes back as a Response."""
    req = urllib.request.Request(base + path, method=method, data=data)
    if token is not None:
        req.add_header("authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with _OPENER.open(req, timeout=HTTP_TIMEOUT) as resp:
            return _parse(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return _parse(err.code, err.headers, err.read())


def raw_request(port: int, path: str, token: str | None = None, method: str = "GET") -> Response:
    """Send `path` byte for byte (http.client does not normalise it, urllib might)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if token is not None:
            conn.putheader("authorization", f"Bearer {token}")
        conn.endheaders()
        resp = conn.getresponse()
        return _parse(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def assert_deny(resp: Response, status: int, reason: str) -> None:
    """A deny reaches the client as `status` with the JSON body {decision, reason, decision_id}."""
    assert resp.status == status, (resp.status, resp.raw[:500])
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    assert resp.body.get("decision") == "deny", resp.body
    assert resp.body.get("reason") == reason, resp.body
    decision_id = resp.body.get("decision_id")
    assert isinstance(decision_id, str) and len(decision_id) >= 16, resp.body
    assert "lasthop" not in resp.body, "a deny must not reach the upstream"


def unique(prefix: str) -> str:
    """A user id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`python -m authz ARGS` with LASTHOP_* removed from the environment unless given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LASTHOP_")}
    return subprocess.run(
        [sys.executable, "-m", "authz", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        cwd=Path(__file__).resolve().parents[2],
    )


@dataclass
class Stack:
    work: Path
    issuer: DemoIssuer
    config: Path
    lasthop: devstack.LasthopServer
    envoy: devstack.Envoy
    upstream: DemoUpstream
    admin: AdminClient
    redis: devstack.RedisServer | None = None

    @property
    def base(self) -> str:
        return self.envoy.url

    @property
    def admin_address(self) -> str:
        return self.lasthop.ready["admin_listen"]

    @property
    def audit_path(self) -> Path:
        return self.work / "audit" / "decisions.jsonl"

    def token(self, user: str, agents: list[str], purpose: str = PURPOSE, **extra: Any) -> str:
        return self.issuer.access_token(user, agents, purpose=purpose, **extra)

    def grant(
        self,
        user: str,
        agent: str = "scribe",
        *,
        actions: tuple[str, ...] = ("read",),
        resources: tuple[str, ...] = ('Patient::"p-1001"',),
        purpose: str = PURPOSE,
        ttl: int = 600,
        max_uses: int = 0,
    ) -> pb.Grant:
        return self.admin.issue(
            pb.IssueGrantRequest(
                agent=agent,
                user=user,
                actions=list(actions),
                resources=list(resources),
                purpose=purpose,
                ttl_seconds=ttl,
                max_uses=max_uses,
            )
        )

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> Response:
        return request(self.base, path, token, **kwargs)


EnvoyFactory = Callable[[Path, devstack.LasthopServer, DemoUpstream], devstack.Envoy]


def sidecar(work: Path, lasthop: devstack.LasthopServer, upstream: DemoUpstream) -> devstack.Envoy:
    """The shipped sidecar (envoy/sidecar.yaml) in front of `upstream`, asking `lasthop`."""
    return devstack.Envoy(work, lasthop.port, upstream.port)


def _close_lasthop(lasthop: devstack.LasthopServer) -> int | None:
    code = lasthop.close()
    if lasthop.proc.stdout is not None:
        lasthop.proc.stdout.close()
    return code


@contextlib.contextmanager
def running_stack(
    prefix: str,
    *,
    use_redis: bool = True,
    upstream: DemoUpstream | None = None,
    policies: Path = devstack.POLICIES,
    audit: str = "",
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    envoy: EnvoyFactory = sidecar,
    detect: str = devstack.EXAMPLE_DETECT,
) -> Iterator[Stack]:
    """Redis (optional) + `lasthop serve` + Envoy (+ an upstream unless given); all stopped.

    `audit`: extra lines for the `[audit]` table; `command`: replaces `python -m authz serve`;
    `env`: extra environment for Lasthop; `envoy`: starts the Envoy (another template);
    `detect`: the `[detect]` table (the shipped example's unless given).
    """
    with devstack.workdir(prefix) as work, contextlib.ExitStack() as stack:
        issuer = DemoIssuer("ES256", kid=f"it-{uuid.uuid4().hex[:6]}")
        jwks = issuer.write_jwks(work / "keys" / "jwks.json")
        redis = None
        if use_redis:
            redis = devstack.RedisServer(work)
            stack.callback(redis.close)
        if upstream is None:
            upstream = DemoUpstream()
            stack.callback(upstream.close)
        config = devstack.write_config(
            work,
            jwks,
            redis_url=redis.url if redis else "",
            policies=policies,
            extra=audit,
            detect=detect,
        )
        lasthop = devstack.LasthopServer(config, env=env, command=command)
        stack.callback(_close_lasthop, lasthop)
        proxy = envoy(work, lasthop, upstream)
        stack.callback(proxy.close)
        admin = AdminClient(lasthop.ready["admin_listen"], issuer.admin_token(ttl=1800))
        stack.callback(admin.close)
        yield Stack(
            work=work,
            issuer=issuer,
            config=config,
            lasthop=lasthop,
            envoy=proxy,
            upstream=upstream,
            admin=admin,
            redis=redis,
        )


NO_DETECT = "[detect]\nenabled = false\n"


@pytest.fixture(scope="session")
def upstream() -> Iterator[DemoUpstream]:
    server = DemoUpstream()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def stack(upstream: DemoUpstream) -> Iterator[Stack]:
    """The shared stack: Redis + Lasthop on Redis + Envoy + the demo EHR.

    Its detectors are off. The suite sends one agent (the scribe) hundreds of deliberate
    denials a minute from tests that share nothing else, and the shipped example rightly
    stops a probing agent's writes (`risk_probing`): with detection on, whether a test's
    write passed would depend on which tests ran in the minute before it. Detection runs
    on stacks of its own (test_detect, test_detect_faults, test_posture, the demo).
    """
    with running_stack("lasthop-it-", upstream=upstream, detect=NO_DETECT) as shared:
        yield shared


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def read_audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]
