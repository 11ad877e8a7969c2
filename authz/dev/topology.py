"""Real Redis topologies on loopback, for the integration tests and the benchmarks.

Both run the same `redis-server` binary the rest of the local stack uses
(`devstack.venv_binary`), bind 127.0.0.1 on free ports, and are stopped by
`close()`:

  SentinelTopology   a primary, one replica, three Sentinels (quorum 2) with
                     fast failover timings, optionally password-protected
                     (Redis and the Sentinels); `kill_primary()` or
                     `failover()` (SENTINEL FAILOVER, the old primary still
                     up) then `wait_for_failover()` exercise a real failover
  ClusterTopology    three masters (`cluster-enabled yes`), optionally each
                     with a replica, slots assigned by `redis-cli --cluster
                     create`; `takeover()` promotes a replica at once

Every wait is bounded. The control commands go over the small RESP client in
resp.py (only the store imports `redis`).
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from authz.dev.resp import (
    COMMAND_TIMEOUT,
    RedisReplyError,
    answers,
    command,
    info,
    wait_until,
)
from authz.dev.stack import free_port, venv_binary

SERVICE = "lasthop"  # the Sentinel service name in SentinelTopology.url
START_TIMEOUT = 20.0
FAILOVER_TIMEOUT = 30.0

# Fast failover: a primary is subjectively down after 1 s of silence.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
CLUSTER_NODE_TIMEOUT_MS = 2000
CLUSTER_BUS_OFFSET = 10000  # Redis 6.2: the cluster bus listens on port + 10000


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

    def __init__(self, workdir: Path, password: str = "") -> None:
        self.workdir = workdir
        self.password = password
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.args: dict[int, list[str]] = {}

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
            *(
                ("--requirepass", self.password, "--masterauth", self.password)
                if self.password
                else ()
            ),
            *options,
        ]
        return self._start(port, args)

    def sentinel(self, port: int, config: str) -> subprocess.Popen[bytes]:
        path = self.workdir / f"sentinel-{port}.conf"  # Sentinel rewrites its own config
        path.write_text(config)
        return self._start(port, [venv_binary("redis-server"), str(path), "--sentinel"])

    def restart(self, port: int) -> None:
        """Start the server on `port` again, as it was started (its data is gone)."""
        self._start(port, self.args[port])

    def _start(self, port: int, args: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs[port] = proc
        self.args[port] = args
        try:
            wait_until(
                lambda: answers(port, self.password),
                f"redis on port {port}",
                START_TIMEOUT,
                [proc],
            )
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

    @contextlib.contextmanager
    def paused(self, port: int) -> Iterator[None]:
        """SIGSTOP the server on `port` for the block (it answers nothing), then SIGCONT it."""
        self.signal(port, signal.SIGSTOP)
        try:
            yield
        finally:
            self.signal(port, signal.SIGCONT)

    def close(self) -> None:
        for proc in self.procs.values():
            _stop(proc)


class SentinelTopology:
    """A primary, one replica and three Sentinels (quorum 2), all on loopback.

    With `password`, Redis and the Sentinels all require it (`requirepass`), as a
    production deployment does; the control commands here send it.
    """

    def __init__(self, workdir: Path, service: str = SERVICE, password: str = "") -> None:
        self.service = service
        self.password = password
        self._procs = _Processes(workdir, password)
        try:
            self._start(service)
        except BaseException:
            self.close()
            raise

    def command(self, port: int, *args: str | int, timeout: float = COMMAND_TIMEOUT) -> Any:
        """One command to a server or Sentinel of this topology (authenticated)."""
        return command(port, *args, timeout=timeout, password=self.password)

    def _start(self, service: str) -> None:
        self.primary_port = free_port()
        self.replica_port = free_port()
        fast_sync = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
        self._procs.server(self.primary_port, *fast_sync)
        self._procs.server(
            self.replica_port, *fast_sync, "--replicaof", "127.0.0.1", str(self.primary_port)
        )
        self.wait_in_sync(self.replica_port)
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
        auth = (
            [f"requirepass {self.password}", f"sentinel auth-pass {service} {self.password}"]
            if self.password
            else []
        )
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
                *auth,
                "",
            ]
        )

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            fields = _pairs(self.command(port, "SENTINEL", "MASTER", self.service))
            if fields.get("num-other-sentinels") != "2" or fields.get("num-slaves") != "1":
                return False
        return True

    def wait_in_sync(self, port: int) -> None:
        """Until the replica on `port` has its link to the primary up."""
        wait_until(
            lambda: self._info(port).get("master_link_status") == "up",
            f"replica {port} in sync",
            START_TIMEOUT,
        )

    def _info(self, port: int) -> dict[str, str]:
        raw = self.command(port, "INFO", "replication")
        pairs = (line.partition(":") for line in str(raw).splitlines() if ":" in line)
        return {key: value for key, _, value in pairs}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    def primary_address(self) -> tuple[str, int]:
        """The primary as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            with contextlib.suppress(OSError, ConnectionError, RedisReplyError):
                host, found = self.command(
                    port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                )
                return str(host), int(found)
        raise ConnectionError("no sentinel answered")

    def wait_for_replica(self, timeout_ms: int = 1000) -> int:
        """WAIT on the primary for one replica; the number that acknowledged."""
        return int(
            self.command(self.primary_port, "WAIT", 1, timeout_ms, timeout=timeout_ms / 1000 + 1)
        )

    @contextlib.contextmanager
    def replica_paused(self) -> Iterator[None]:
        """SIGSTOP the replica for the block (it acknowledges nothing), then SIGCONT it.

        Keep the block under DOWN_AFTER_MS, or the Sentinels mark the replica down.
        """
        with self._procs.paused(self.replica_port):
            yield

    def kill_primary(self) -> int:
        """SIGKILL the current primary (no shutdown, no final sync); its port."""
        killed = self.primary_port
        self._procs.kill(killed)
        return killed

    def failover(self) -> None:
        """`SENTINEL FAILOVER`: promote the replica while the primary is still up and serving.

        Sentinel names the new primary about a second later, and turns the old one into a
        replica only some ten seconds after that (`demote_old_primary` does it at once).
        """
        self.command(self.sentinel_ports[0], "SENTINEL", "FAILOVER", self.service)

    def wait_for_failover(self, timeout: float = FAILOVER_TIMEOUT) -> float:
        """Until every Sentinel names a new primary that answers as master; seconds taken."""
        started = time.monotonic()
        old = self.primary_port

        def promoted() -> bool:
            ports = {
                int(self.command(p, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])
                for p in self.sentinel_ports
            }
            if len(ports) != 1 or old in ports:
                return False
            (port,) = ports
            return bool(self.command(port, "ROLE")[0] == "master")

        wait_until(promoted, "sentinel failover", timeout, interval=0.1)
        self.primary_port, self.replica_port = self.replica_port, old
        return time.monotonic() - started

    def restart_old_primary(self) -> None:
        """Start a killed old primary again (empty) as the new primary's replica, as Sentinel
        reconfigures it once it is back. Waits for the sync."""
        self._procs.restart(self.replica_port)
        self.demote_old_primary()

    def demote_old_primary(self) -> None:
        """What Sentinel's `+convert-to-slave` does to a demoted primary that is still up:
        `REPLICAOF` the new primary (it drops its own data and resyncs). Waits for the sync."""
        self.command(self.replica_port, "REPLICAOF", "127.0.0.1", self.primary_port)
        self.wait_in_sync(self.replica_port)

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
    """A Redis Cluster of three masters on loopback, each with `replicas` replicas."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0) -> None:
        self._procs = _Processes(workdir)
        try:
            self._start(masters, replicas)
        except BaseException:
            self.close()
            raise

    def _start(self, masters: int, replicas: int) -> None:
        self.ports = [_cluster_port() for _ in range(masters * (1 + replicas))]
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
                str(replicas),
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
        if replicas:
            wait_until(self._replicas_in_sync, "replicas in sync", START_TIMEOUT, interval=0.1)

    def _ok(self) -> bool:
        for port in self.ports:
            state = info_cluster(port)
            if state.get("cluster_state") != "ok" or state.get("cluster_known_nodes") != str(
                len(self.ports)
            ):
                return False
        return True

    def _replicas_in_sync(self) -> bool:
        return all(
            info(port, "replication").get("master_link_status") == "up"
            for port in self.ports
            if port not in self.masters()
        )

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def _live(self) -> int:
        """A node that answers, to ask about the cluster."""
        for port in self.ports:
            if answers(port):
                return port
        raise ConnectionError("no cluster node answers")

    def keyslot(self, key: str) -> int:
        return int(command(self._live(), "CLUSTER", "KEYSLOT", key))

    def node_for(self, key: str) -> int:
        """The port of the master that serves `key`'s slot."""
        slot = self.keyslot(key)
        for start, end, owner, *_ in command(self._live(), "CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(owner[1])
        raise LookupError(f"no node serves slot {slot}")

    def masters(self) -> set[int]:
        """The ports of the masters that serve slots, as a live node sees them."""
        return {int(owner[1]) for _, _, owner, *_ in command(self._live(), "CLUSTER", "SLOTS")}

    def replica_of(self, master: int) -> int:
        """The port of a replica of the master on `master`."""
        nodes = [line.split() for line in str(command(master, "CLUSTER", "NODES")).splitlines()]
        master_id = next(n[0] for n in nodes if n[1].split("@")[0].endswith(f":{master}"))
        for node in nodes:
            if node[3] == master_id:
                return int(node[1].split("@")[0].rpartition(":")[2])
        raise LookupError(f"master {master} has no replica")

    def paused(self, port: int) -> contextlib.AbstractContextManager[None]:
        """SIGSTOP the node on `port` for the block, then SIGCONT it."""
        return self._procs.paused(port)

    def kill(self, port: int) -> None:
        self._procs.kill(port)

    def restart(self, port: int) -> None:
        """Start a killed node again on its port, empty; it rejoins from its nodes.conf (a
        master whose slots were taken becomes a replica of the node that took them)."""
        self._procs.restart(port)

    def cut_replication(self, master: int) -> None:
        """Close the replication links of `master` (`CLIENT KILL TYPE replica`): what it
        writes from now on reaches no replica until one connects again."""
        command(master, "CLIENT", "KILL", "TYPE", "replica")

    def wait_replica_in_sync(self, port: int) -> None:
        wait_until(
            lambda: info(port, "replication").get("master_link_status") == "up",
            f"replica {port} in sync",
            FAILOVER_TIMEOUT,
        )

    def takeover(self, replica: int) -> None:
        """`CLUSTER FAILOVER TAKEOVER` on `replica`: it becomes master of its master's slots
        at once, without agreement. Waits until every live master routes them to it."""
        command(replica, "CLUSTER", "FAILOVER", "TAKEOVER")

        def routed() -> bool:
            slots = [command(p, "CLUSTER", "SLOTS") for p in self.masters() if answers(p)]
            return command(replica, "ROLE")[0] == "master" and all(
                any(int(owner[1]) == replica for _, _, owner, *_ in view) for view in slots
            )

        wait_until(routed, f"takeover by {replica}", FAILOVER_TIMEOUT, interval=0.05)

    def close(self) -> None:
        self._procs.close()


def info_cluster(port: int) -> dict[str, str]:
    """`CLUSTER INFO` as a dict."""
    raw = command(port, "CLUSTER", "INFO")
    pairs = (line.partition(":") for line in str(raw).splitlines() if ":" in line)
    return {key: value.strip() for key, _, value in pairs}
