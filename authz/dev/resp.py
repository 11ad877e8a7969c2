"""A tiny RESP client for control commands to local Redis servers and Sentinels.

Enough for PING, INFO, ROLE, SENTINEL, CLUSTER, WAIT, CLIENT: the topologies
(topology.py) and the tests drive Redis with it, since only the store imports
`redis`. Every call opens its own connection, with a timeout, and is bounded.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import IO, Any

COMMAND_TIMEOUT = 1.0


class RedisReplyError(Exception):
    """Redis answered a control command with an error reply."""


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


def _pack(*args: str | int) -> bytes:
    parts = [str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def command(
    port: int, *args: str | int, timeout: float = COMMAND_TIMEOUT, password: str = ""
) -> Any:
    """Send one command to 127.0.0.1:`port` (after AUTH `password`, if given); its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall((_pack("AUTH", password) if password else b"") + _pack(*args))
        with sock.makefile("rb") as stream:
            if password:
                _read_reply(stream)
            return _read_reply(stream)


def info(port: int, section: str = "") -> dict[str, str]:
    """`INFO [section]` as a dict (the `key:value` lines)."""
    raw = command(port, "INFO", section) if section else command(port, "INFO")
    pairs = (line.partition(":") for line in str(raw).splitlines() if ":" in line)
    return {key: value for key, _, value in pairs}


def answers(port: int, password: str = "") -> bool:
    try:
        return bool(command(port, "PING", timeout=0.3, password=password) == "PONG")
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
