"""A TCP relay on loopback that can partition Redis subscribers silently.

Lasthop connects to Redis through it; it forwards bytes both ways untouched. A
connection that has sent SUBSCRIBE is a subscriber. `connect_delay` holds every new
connection that long before it reaches Redis (a slow network or TLS handshake, a
Redis busy accepting). `blackhole_subscribers()` stops
forwarding on those connections without closing them: what a network partition, a
hung Redis or a NAT that forgot the flow looks like to the client (no FIN, no RST,
just silence). `close_subscribers()` ends them, as a Redis restart would. `junk`, when
set, answers every command on the other connections with those bytes instead of
forwarding it (a reply of the wrong type: `:1\r\n` where a string is due).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

BUFFER = 65536


@dataclass
class _Link:
    client: socket.socket
    server: socket.socket
    subscriber: bool = False
    blackholed: bool = False
    closed: bool = False
    pending: bytes = b""  # the start of a command not yet complete (junk mode)
    threads: list[threading.Thread] = field(default_factory=list)

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._closed = False
        self.connect_delay = 0.0
        self.junk: bytes | None = None
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._connect, args=(client, self.connect_delay), daemon=True
            ).start()

    def _connect(self, client: socket.socket, delay: float) -> None:
        if delay:
            time.sleep(delay)
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            server.settimeout(None)
        except OSError:
            client.close()
            return
        link = _Link(client, server)
        with self._lock:
            if self._closed:
                link.close()
                return
            self._links.append(link)
        for source, sink, upstream in ((client, server, True), (server, client, False)):
            thread = threading.Thread(
                target=self._pump, args=(link, source, sink, upstream), daemon=True
            )
            link.threads.append(thread)
            thread.start()

    def _pump(
        self, link: _Link, source: socket.socket, sink: socket.socket, upstream: bool
    ) -> None:
        try:
            while data := source.recv(BUFFER):
                if upstream and b"SUBSCRIBE" in data.upper():
                    link.subscriber = True
                junk = self.junk
                if upstream and junk is not None and not link.subscriber:
                    source.sendall(junk * _complete_commands(link, data))
                elif not link.blackholed:
                    sink.sendall(data)
        except OSError:
            pass
        if not link.blackholed:
            link.close()

    def subscribers(self) -> list[_Link]:
        with self._lock:
            self._links = [link for link in self._links if not link.closed]
            return [link for link in self._links if link.subscriber and not link.blackholed]

    def blackhole_subscribers(self) -> int:
        """Stop forwarding on every live subscriber connection, keeping it open; how many."""
        found = self.subscribers()
        for link in found:
            link.blackholed = True
        return len(found)

    def close_subscribers(self) -> None:
        """End every blackholed connection (the client then sees the connection close)."""
        with self._lock:
            gone = [link for link in self._links if link.blackholed]
            self._links = [link for link in self._links if not link.blackholed]
        for link in gone:
            link.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()


def _complete_commands(link: _Link, data: bytes) -> int:
    """How many whole RESP commands `data` completes on `link` (the rest is kept)."""
    buffer = link.pending + data
    count = 0
    while (end := _command_end(buffer)) is not None:
        buffer = buffer[end:]
        count += 1
    link.pending = buffer
    return count


def _command_end(buffer: bytes) -> int | None:
    """Where the first command (`*N` then N `$len` strings) in `buffer` ends, if it does."""
    line_end = buffer.find(b"\r\n")
    if not buffer.startswith(b"*") or line_end < 0:
        return None
    at = line_end + 2
    for _ in range(int(buffer[1:line_end])):
        size_end = buffer.find(b"\r\n", at)
        if size_end < 0:
            return None
        at = size_end + 2 + int(buffer[at + 1 : size_end]) + 2
        if at > len(buffer):
            return None
    return at
