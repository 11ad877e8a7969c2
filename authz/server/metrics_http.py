"""The metrics listener: Prometheus `/metrics`, plus fixed JSON documents at their own paths.

Lasthop serves its receipts JWKS here (`/.well-known/lasthop-receipts.json`),
so an upstream can fetch the key that signs the receipts it receives.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def app(registry: CollectorRegistry, documents: Mapping[str, object]) -> WsgiApp:
    metrics = make_wsgi_app(registry)
    bodies = {path: json.dumps(doc, indent=2).encode() for path, doc in documents.items()}

    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = bodies.get(environ.get("PATH_INFO", ""))
        if body is None:
            result: Iterable[bytes] = metrics(environ, start_response)
            return result
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "max-age=300"),
            ],
        )
        return [body]

    return serve


def start(
    host: str, port: int, registry: CollectorRegistry, documents: Mapping[str, object]
) -> ThreadingWSGIServer:
    """Serve in a daemon thread; `shutdown()` the returned server to stop."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    httpd = make_server(host, port, app(registry, documents), Server, handler_class=_SilentHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
