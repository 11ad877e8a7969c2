"""`lasthop serve --workers N`: N Lasthop processes behind one ext_authz port, each a whole server.

One Python process decides on one core at a time (the GIL); workers are how a
sidecar uses more. This supervisor starts N `lasthop serve` processes and:

- gives them the same `server.listen`, `server.admin_listen` (and
  `server.health_listen`) ports, which they share with SO_REUSEPORT (the kernel
  spreads Envoy's connections over them; a port 0 is chosen here once, so that
  all share it); a Unix socket cannot be shared, and is refused;
- gives worker k `server.metrics_listen` port + k (port 0: each its own);
- gives worker k its own audit trail, `audit.path` for worker 0 and
  `<stem>.w<k><suffix>` beside it for the others (and the same for
  `audit.checkpoints_path` when it is set): one writer per trail, as always.
  `lasthop audit verify` and `lasthop audit disclosures` read them together;
- refuses to start without Redis (`store.redis_url`): grants, agents and
  revocations must be one truth for every worker.

It prints one ready line for all of them. SIGTERM or SIGINT goes to every
worker, each drains as `lasthop serve` does, and the supervisor exits with the
worst exit code. A worker that exits on its own stops the others, and the
supervisor exits 1 (so the pod is restarted whole).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from authz.audit import setup as audit_setup
from authz.audit.files import worker_trail
from authz.config import UNIX_PREFIX, Settings, split_address
from authz.errors import ConfigError

MAX_WORKERS = 64
POLL_SECONDS = 0.2
READY_PREFIX = "lasthop ready "


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[str]
    ready: dict[str, Any]


def check(settings: Settings, workers: int) -> None:
    """Refuse a worker count or configuration workers cannot run with (ConfigError)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError("--workers", f"must be between 1 and {MAX_WORKERS}, got `{workers}`")
    if workers > 1 and not settings.store.redis_url:
        raise ConfigError(
            "store.redis_url",
            f"`--workers {workers}` needs Redis: each worker is its own process, and only "
            "Redis shares grants, agents and revocations between them",
        )
    server = settings.server
    for key, address in (
        ("server.listen", server.listen),
        ("server.admin_listen", server.admin_listen),
    ):
        if workers > 1 and address.startswith(UNIX_PREFIX):
            raise ConfigError(
                key,
                f"`--workers {workers}` share TCP ports; `{address}` is a Unix socket, which "
                "one process at a time can listen on",
            )


def environments(settings: Settings, workers: int) -> list[dict[str, str]]:
    """The `LASTHOP_*` overrides of each worker: shared ports, its metrics port, its trail."""
    server = settings.server
    listen = _concrete("server.listen", server.listen)
    admin = _concrete("server.admin_listen", server.admin_listen)
    metrics_host, metrics_port = split_address("server.metrics_listen", server.metrics_listen)
    shared = {"LASTHOP_SERVER_LISTEN": listen, "LASTHOP_SERVER_ADMIN_LISTEN": admin}
    if server.health_listen:
        shared["LASTHOP_SERVER_HEALTH_LISTEN"] = _concrete(
            "server.health_listen", server.health_listen
        )
    trail = audit_setup.trail_path(settings).absolute()
    anchors = settings.audit.checkpoints_path
    envs = []
    for k in range(workers):
        metrics = metrics_port + k if metrics_port else 0
        env = {
            **shared,
            "LASTHOP_SERVER_METRICS_LISTEN": _address(metrics_host, metrics),
            "LASTHOP_AUDIT_PATH": str(worker_trail(trail, k)),
        }
        if anchors:
            path = audit_setup.checkpoints_path(settings).absolute()
            env["LASTHOP_AUDIT_CHECKPOINTS_PATH"] = str(worker_trail(path, k))
        envs.append(env)
    return envs


def _concrete(key: str, address: str) -> str:
    """`address` with port 0 replaced by a free port, so that every worker binds the same."""
    host, port = split_address(key, address)
    if port == 0:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    return _address(host, port)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def supervise(config: str, settings: Settings, workers: int) -> int:
    """Run `workers` servers until SIGTERM or SIGINT, or until one of them exits."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    running = _start(config, environments(settings, workers))
    if running is None:
        return 1
    print(READY_PREFIX + json.dumps(_ready(running)), flush=True)
    while not stopping and all(w.proc.poll() is None for w in running):
        time.sleep(POLL_SECONDS)
    died = [w for w in running if w.proc.poll() is not None]
    codes = _stop(running)
    if died and not stopping:
        print(
            f"lasthop: worker {died[0].index} exited with {codes[died[0].index]}", file=sys.stderr
        )
        return 1
    return max(codes)


def _start(config: str, envs: list[dict[str, str]]) -> list[Worker] | None:
    """Every worker started and ready; None (and none left running) if one was not."""
    command = [sys.executable, "-m", "authz", "serve", "--config", config]
    procs = [
        subprocess.Popen(
            [*command, "--worker", str(k)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for k, env in enumerate(envs)
    ]
    workers = []
    for k, proc in enumerate(procs):
        assert proc.stdout is not None
        line = proc.stdout.readline()  # its stderr is ours: a failure explains itself there
        if not line.startswith(READY_PREFIX):
            _stop([Worker(n, p, {}) for n, p in enumerate(procs)])
            return None
        workers.append(Worker(k, proc, json.loads(line.removeprefix(READY_PREFIX))))
    return workers


def _ready(workers: list[Worker]) -> dict[str, Any]:
    first = workers[0].ready
    return {
        "listen": first["listen"],
        "admin_listen": first["admin_listen"],
        "metrics_listen": first["metrics_listen"],
        "policy_version": first.get("policy_version", ""),
        "workers": [
            {
                "pid": w.proc.pid,
                "metrics_listen": w.ready["metrics_listen"],
                "audit_path": w.ready.get("audit_path", ""),
            }
            for w in workers
        ],
    }


def _stop(workers: list[Worker]) -> list[int]:
    """SIGTERM every worker still running; wait for each; their exit codes, by worker."""
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    codes = []
    for worker in workers:
        try:
            codes.append(worker.proc.wait(60))
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            codes.append(worker.proc.wait())
    return [abs(code) for code in codes]
