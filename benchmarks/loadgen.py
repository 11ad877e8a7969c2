"""A small HTTP/1.1 load generator for loopback benchmarks: closed loop and open loop.

Closed loop: C keep-alive connections send back to back for D seconds; the
result is the maximum throughput the target sustains (and its latencies).

Open loop: requests are scheduled at a fixed rate for D seconds and each
latency is measured from its scheduled time, so a stall shows up as latency
instead of as fewer requests (no coordinated omission). Requests wait for a
free connection from a pool of C.

Both are bounded by count and time, and only talk to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

MAX_REQUESTS = 2_000_000


@dataclass
class Result:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """q in [0, 1] -> milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def request_bytes(path: str, token: str = "", host: str = "ehr.local") -> bytes:
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{auth}\r\n".encode()


async def closed_loop(
    port: int, raws: list[bytes], seconds: float, connections: int = 16
) -> Result:
    conns = [await Connection.open(port) for _ in range(connections)]
    result = Result(seconds=seconds)
    deadline = time.perf_counter() + seconds

    async def worker(index: int, conn: Connection) -> None:
        raw = raws[index % len(raws)]
        while time.perf_counter() < deadline and len(result.latencies) < MAX_REQUESTS:
            started = time.perf_counter()
            try:
                status = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                return
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    result.seconds = time.perf_counter() - began
    for conn in conns:
        conn.close()
    return result


async def open_loop(
    port: int, raws: list[bytes], rate: float, seconds: float, connections: int = 32
) -> Result:
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(port))
    result = Result(seconds=seconds)
    total = min(int(rate * seconds), MAX_REQUESTS)
    start = time.perf_counter()

    async def fire(due: float, raw: bytes) -> None:
        conn = await pool.get()
        try:
            status = await conn.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            pool.put_nowait(await Connection.open(port))
            return
        result.latencies.append(time.perf_counter() - due)
        result.statuses[status] = result.statuses.get(status, 0) + 1
        pool.put_nowait(conn)

    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(due, raws[i % len(raws)])))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()
    return result
