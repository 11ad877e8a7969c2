"""The running server: ext_authz + health on `server.listen`, the admin API on
`server.admin_listen`, Prometheus on `server.metrics_listen`, and health alone on
`server.health_listen` when set (for a kubelet's gRPC probe while ext_authz stays
on loopback).

Start-up says what it runs with, twice: in its first log lines and in the
`lasthop ready {...}` line on stdout (the store and its topology, the policy
version, the audit trail's path and fsync mode, tracing).

`listen` and `admin_listen` are `host:port` or a Unix socket (`unix:/path`),
plaintext or TLS (mTLS with a client CA): `authz.server.tls`. Check is served
by `authz.server.front` (grpcio's threaded server, or grpc.aio). A port in use
stops start-up, unless this is one of `--workers`, which share their ports.

SIGTERM/SIGINT: health goes NOT_SERVING, listeners stop accepting, in-flight
checks finish (up to `server.shutdown_grace_seconds`), the audit trail is
flushed, and the process exits 0.

Health (`grpc.health.v1`, the overall service "" and the ext_authz service):
SERVING once the listeners are up; NOT_SERVING for good once the audit trail
has failed (every check is then denied `audit_unavailable` until a restart,
which a probe on health will now do), and on shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client.exposition import ThreadingWSGIServer

from authz._proto import access_pb2_grpc, agents_pb2_grpc, grants_pb2_grpc
from authz.audit.setup import WELL_KNOWN_JWKS
from authz.config import UNIX_PREFIX, split_address
from authz.errors import StoreUnavailable
from authz.server import metrics_http
from authz.server.app import EMBEDDED_STORE, App
from authz.server.front import AUTHZ_SERVICE, Front

log = logging.getLogger(__name__)


def _bind(server: Any, key: str, address: str, creds: grpc.ServerCredentials | None) -> str:
    """Bind `address` (`host:port` or `unix:/path`); the address actually bound."""
    unix = address.startswith(UNIX_PREFIX)
    host = "" if unix else split_address(key, address)[0]
    try:
        port = (
            server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        )
    except RuntimeError as err:  # grpcio's way of saying the bind failed
        raise OSError(f"cannot listen on `{address}` ({key}): {err}") from None
    if port == 0:
        raise OSError(f"cannot listen on `{address}` ({key})")
    return address if unix else f"{host}:{port}"


@dataclass
class _Listeners:
    authz: Any  # grpc.aio.Server, or front.ThreadedServer (the same interface)
    admin: grpc.aio.Server
    health_only: Any
    metrics: ThreadingWSGIServer
    health: Any  # grpc_health's aio HealthServicer, or front.ThreadedHealth
    addresses: dict[str, str]


async def serve(app: App, shared_ports: bool = False) -> int:
    """Run until SIGTERM or SIGINT, then drain and exit 0.

    `shared_ports`: one of `--workers` (its listeners bind with SO_REUSEPORT); else a port
    already in use stops start-up."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.audit.open()
    summary = app.summary()
    _announce(summary)
    await _first_contact(app)
    # What start-up built (policies, keys, protobuf descriptors) lives as long as the
    # process: out of the collector's way, a full collection does not walk it on a check.
    gc.collect()
    gc.freeze()
    listeners = _listen(app, [("grpc.so_reuseport", int(shared_ports))])
    background = [asyncio.create_task(task()) for task in app.background]
    await listeners.authz.start()
    await listeners.admin.start()
    if listeners.health_only is not None:
        await listeners.health_only.start()
    await _health(listeners.health, health_pb2.HealthCheckResponse.SERVING)
    background.append(asyncio.create_task(_not_serving_once_audit_fails(app, listeners.health)))
    ready = {**listeners.addresses, **summary}
    print(f"lasthop ready {json.dumps(ready)}", flush=True)
    await stop.wait()
    await _shutdown(app, listeners, background)
    return 0


def _announce(summary: dict[str, str]) -> None:
    """The first log lines: what this process decides with, so nobody has to guess."""
    store = summary["store"]
    if store == EMBEDDED_STORE:
        log.warning(
            "store: %s; every replica would hold its own grants and agents, so run more "
            "than one only with store.redis_url",
            store,
            extra={"event": "server.store", "store": store},
        )
    else:
        log.info("store: %s", store, extra={"event": "server.store", "store": store})
    version = summary["policy_version"]
    log.info("policies: version %s", version, extra={"event": "server.policies"})
    log.info(
        "audit: %s, fsync %s",
        summary["audit_path"],
        summary["audit_fsync"],
        extra={"event": "server.audit"},
    )
    log.info("tracing: %s", summary["tracing"], extra={"event": "server.tracing"})


async def _health(servicer: Any, status: int) -> None:
    for service in ("", AUTHZ_SERVICE):
        await servicer.set(service, status)


async def _not_serving_once_audit_fails(app: App, servicer: Any) -> None:
    why = await app.audit.wait_failed()
    log.error(
        "health: NOT_SERVING (%s); restart Lasthop once the trail can be written",
        why,
        extra={"event": "server.not_serving"},
    )
    await _health(servicer, health_pb2.HealthCheckResponse.NOT_SERVING)


async def _first_contact(app: App) -> None:
    """Reach the store and seed the registry; a store that is down is not fatal."""
    try:
        if app.redis is not None:
            await app.redis.ping()
            for warning in await app.redis.fencing_warnings():
                log.warning("store: %s", warning, extra={"event": "store.fencing"})
        await app.seed_registry(app.pipeline.bundle)
    except StoreUnavailable as err:
        log.warning(
            "%s; checks get 503 store_unavailable until it is back (the registry "
            "is seeded as soon as it is back)",
            err.detail,
            extra={"event": "store.unavailable_at_start"},
        )


def _listen(app: App, options: list[tuple[str, int]]) -> _Listeners:
    """Bind ext_authz + health, the admin API and the metrics listener (not yet serving)."""
    server = app.settings.server
    front = Front(app.pipeline, server.threads, options)
    health_only = None
    addresses = {}
    if server.health_listen:
        health_only = front.health_only()
        addresses["health_listen"] = _bind(
            health_only, "server.health_listen", server.health_listen, None
        )
    authz_server = front.server
    listen = _bind(authz_server, "server.listen", server.listen, app.authz_tls)

    admin_server = grpc.aio.server(options=options)
    grants_pb2_grpc.add_GrantsServicer_to_server(app.grants_service, admin_server)
    agents_pb2_grpc.add_AgentsServicer_to_server(app.agents_service, admin_server)
    access_pb2_grpc.add_AccessServicer_to_server(app.access_service, admin_server)
    admin = _bind(admin_server, "server.admin_listen", server.admin_listen, app.admin_tls)

    host, port = split_address("server.metrics_listen", server.metrics_listen)
    documents = {WELL_KNOWN_JWKS: app.receipts_jwks}
    metrics = metrics_http.start(host, port, app.metrics.registry, documents)
    addresses.update(
        listen=listen, admin_listen=admin, metrics_listen=f"{host}:{metrics.server_port}"
    )
    return _Listeners(authz_server, admin_server, health_only, metrics, front.health, addresses)


async def _shutdown(app: App, listeners: _Listeners, background: list[asyncio.Task[None]]) -> None:
    """Not serving, stop accepting, let in-flight checks finish, flush the trail."""
    log.info("shutting down: draining in-flight checks", extra={"event": "server.shutting_down"})
    await listeners.health.enter_graceful_shutdown()
    grace = app.settings.server.shutdown_grace_seconds
    await asyncio.gather(listeners.authz.stop(grace), listeners.admin.stop(grace))
    if listeners.health_only is not None:
        await listeners.health_only.stop(0)
    for task in background:
        task.cancel()
    if app.monitor is not None:
        await app.monitor.close()  # responses under way reach the store and the trail
    await app.audit.close()
    await app.store.close()
    if app.stores.admin_redis is not None:
        await app.stores.admin_redis.close()
    for flush in app.on_shutdown:
        flush()
    listeners.metrics.shutdown()
    print("lasthop stopped", file=sys.stderr, flush=True)
