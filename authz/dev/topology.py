"""Real Redis topologies on loopback, for the integration tests and the benchmarks.

Both run the same `redis-server` binary the rest of the local stack uses
(`devstack.venv_binary`), bind 127.0.0.1 on free ports, and are stopped by
`close()`:

  SentinelTopology   a primary, one replica, three Sentinels (quorum 2) with
                     fast failover timings; `kill_primary()` then
                     `wait_for_failover()` exercise a real failover
  ClusterTopology    three masters (`cluster-enabled yes`), slots assigned by
                     `redis-cli --cluster create`

Every wait is bounded. The control commands go over a small RESP client here
(only the grant store imports `redis`).
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from authz.dev.stack import free_port, venv_binary

SERVICE = "lasthop"  # the Sentinel service name in SentinelTopology.url
START_TIMEOUT = 20.0
FAILOVER_TIMEOUT = 30.0
COMMAND_TIMEOUT = 1.0

# Fast failover: a primary is subjectively down after 1 s of silence.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
CLUSTER_NODE_TIMEOUT_MS = 2000
CLUSTER_BUS_OFFSET = 10000  # Redis 6.2: the cluster bus listens on port + 10000


class RedisReplyError(Exception):
    """Redis answered a control command with an error reply."""


# A tiny RESP client: enough for PING, INFO, ROLE, SENTINEL, CLUSTER, WAIT. -----------


def _read_reply(stream: IO[bytes]) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RedisReplyError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = stream.read(size + 2)
        return data[:-2].decode("utf-8", "replace")
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"not a RESP reply: {line[:40]!r}")


def command(port: int, *args: str | int, timeout: float = COMMAND_TIMEOUT) -> Any:
    """Send one command to 127.0.0.1:`port` and return the decoded reply."""
    parts = [str(a).encode() for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        with sock.makefile("rb") as stream:
            return _read_reply(stream)


def info(port: int, section: str = "") -> dict[str, str]:
    """`INFO [section]` as a dict (the `key:value` lines)."""
    raw = command(port, "INFO", section) if section else command(port, "INFO")
    pairs = (line.partition(":") for line in str(raw).splitlines() if ":" in line)
    return {key: value for key, _, value in pairs}


def _answers(port: int) -> bool:
    try:
        return bool(command(port, "PING", timeout=0.3) == "PONG")
    except (OSError, ConnectionError, RedisReplyError):
        return False


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    timeout: float,
    procs: list[subprocess.Popen[bytes]] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll `predicate` until true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs or ():
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: process {proc.pid} exited with {proc.returncode}")
        try:
            if predicate():
                return
        except (OSError, ConnectionError, RedisReplyError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what}: not reached within {timeout} s")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Processes:
    """The redis-server processes of one topology; close() stops every one of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def server(self, port: int, *options: str) -> subprocess.Popen[bytes]:
        args = [
            venv_binary("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.workdir / f"redis-{port}.log"),
            *options,
        ]
        return self._start(port, args)

    def sentinel(self, port: int, config: str) -> subprocess.Popen[bytes]:
        path = self.workdir / f"sentinel-{port}.conf"  # Sentinel rewrites its own config
        path.write_text(config)
        return self._start(port, [venv_binary("redis-server"), str(path), "--sentinel"])

    def _start(self, port: int, args: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs[port] = proc
        try:
            wait_until(lambda: _answers(port), f"redis on port {port}", START_TIMEOUT, [proc])
        except (RuntimeError, TimeoutError) as err:
            log = self.workdir / f"redis-{port}.log"
            tail = log.read_text()[-1500:] if log.exists() else ""
            raise RuntimeError(f"{err}\n{tail}") from None
        return proc

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def signal(self, port: int, sig: signal.Signals) -> None:
        self.procs[port].send_signal(sig)

    def close(self) -> None:
        for proc in self.procs.values():
            _stop(proc)


class SentinelTopology:
    """A primary, one replica and three Sentinels (quorum 2), all on loopback."""

    def __init__(self, workdir: Path, service: str = SERVICE) -> None:
        self.service = service
        self._procs = _Processes(workdir)
        try:
            self._start(service)
        except BaseException:
            self.close()
            raise

    def _start(self, service: str) -> None:
        self.primary_port = free_port()
        self.replica_port = free_port()
        fast_sync = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
        self._procs.server(self.primary_port, *fast_sync)
        self._procs.server(
            self.replica_port, *fast_sync, "--replicaof", "127.0.0.1", str(self.primary_port)
        )
        wait_until(
            lambda: info(self.replica_port, "replication").get("master_link_status") == "up",
            "replica in sync",
            START_TIMEOUT,
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        for port in self.sentinel_ports:
            self._procs.sentinel(port, self._sentinel_config(port, service))
        wait_until(
            self._sentinels_ready,
            "sentinels see the primary, the replica and each other",
            START_TIMEOUT,
            interval=0.1,
        )

    def _sentinel_config(self, port: int, service: str) -> str:
        return "\n".join(
            [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {self._procs.workdir}",
                f"logfile {self._procs.workdir / f'sentinel-{port}.log'}",
                f"sentinel monitor {service} 127.0.0.1 {self.primary_port} 2",
                f"sentinel down-after-milliseconds {service} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {service} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {service} 1",
                "",
            ]
        )

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            fields = _pairs(command(port, "SENTINEL", "MASTER", self.service))
            if fields.get("num-other-sentinels") != "2" or fields.get("num-slaves") != "1":
                return False
        return True

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    def primary_address(self) -> tuple[str, int]:
        """The primary as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            with contextlib.suppress(OSError, ConnectionError, RedisReplyError):
                host, found = command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                return str(host), int(found)
        raise ConnectionError("no sentinel answered")

    def wait_for_replica(self, timeout_ms: int = 1000) -> int:
        """WAIT on the primary for one replica; the number that acknowledged."""
        return int(command(self.primary_port, "WAIT", 1, timeout_ms, timeout=timeout_ms / 1000 + 1))

    @contextlib.contextmanager
    def replica_paused(self) -> Iterator[None]:
        """SIGSTOP the replica for the block (it acknowledges nothing), then SIGCONT it.

        Keep the block under DOWN_AFTER_MS, or the Sentinels mark the replica down.
        """
        self._procs.signal(self.replica_port, signal.SIGSTOP)
        try:
            yield
        finally:
            self._procs.signal(self.replica_port, signal.SIGCONT)

    def kill_primary(self) -> int:
        """SIGKILL the current primary (no shutdown, no final sync); its port."""
        killed = self.primary_port
        self._procs.kill(killed)
        return killed

    def wait_for_failover(self, timeout: float = FAILOVER_TIMEOUT) -> float:
        """Until every Sentinel names a new primary that answers as master; seconds taken."""
        started = time.monotonic()
        old = self.primary_port

        def promoted() -> bool:
            ports = {
                int(command(p, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])
                for p in self.sentinel_ports
            }
            if len(ports) != 1 or old in ports:
                return False
            (port,) = ports
            return bool(command(port, "ROLE")[0] == "master")

        wait_until(promoted, "sentinel failover", timeout, interval=0.1)
        self.primary_port, self.replica_port = self.replica_port, old
        return time.monotonic() - started

    def close(self) -> None:
        self._procs.close()


def _pairs(flat: Any) -> dict[str, str]:
    items = [str(x) for x in flat or []]
    return dict(zip(items[::2], items[1::2], strict=True))


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 55000 - CLUSTER_BUS_OFFSET)
        with contextlib.ExitStack() as stack:
            try:
                for candidate in (port, port + CLUSTER_BUS_OFFSET):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return port
    raise OSError("no free port pair for a cluster node")


class ClusterTopology:
    """A Redis Cluster of three masters (no replicas) on loopback."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self._procs = _Processes(workdir)
        try:
            self._start(masters)
        except BaseException:
            self.close()
            raise

    def _start(self, masters: int) -> None:
        self.ports = [_cluster_port() for _ in range(masters)]
        for port in self.ports:
            self._procs.server(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(CLUSTER_NODE_TIMEOUT_MS),
            )
        created = subprocess.run(
            [
                venv_binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({created.returncode}):\n"
                f"{created.stdout[-1500:]}{created.stderr[-1500:]}"
            )
        wait_until(self._ok, "cluster_state:ok on every node", START_TIMEOUT, interval=0.1)

    def _ok(self) -> bool:
        for port in self.ports:
            state = info_cluster(port)
            if state.get("cluster_state") != "ok" or state.get("cluster_known_nodes") != str(
                len(self.ports)
            ):
                return False
        return True

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def keyslot(self, key: str) -> int:
        return int(command(self.ports[0], "CLUSTER", "KEYSLOT", key))

    def node_for(self, key: str) -> int:
        """The port of the master that serves `key`'s slot."""
        slot = self.keyslot(key)
        for start, end, owner, *_ in command(self.ports[0], "CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(owner[1])
        raise LookupError(f"no node serves slot {slot}")

    def close(self) -> None:
        self._procs.close()


def info_cluster(port: int) -> dict[str, str]:
    """`CLUSTER INFO` as a dict."""
    raw = command(port, "CLUSTER", "INFO")
    pairs = (line.partition(":") for line in str(raw).splitlines() if ":" in line)
    return {key: value.strip() for key, _, value in pairs}
