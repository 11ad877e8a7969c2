"""Password-protected Sentinels, and Sentinels behind TLS (issue 12: neither the password
nor TLS reached the Sentinels, so discovery failed with `MasterNotFoundError`).

The topology requires a password everywhere (`requirepass` on Redis and on every
Sentinel). The TLS case puts a TLS terminator (tls_relay.py) in front of each Sentinel,
since this redis-server is built without TLS; the client must complete a real handshake,
verified against a CA made at test time, to find the primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.dev import stack as devstack
from authz.dev.topology import SentinelTopology
from authz.dev.upstream import DemoUpstream
from authz.stores.redis_store import RedisStore
from tests.integration.conftest import unique
from tests.integration.fleet import running_fleet
from tests.integration.tls_relay import ThrowawayCA, TlsRelay

pytestmark = pytest.mark.integration

PASSWORD = "sentinel-test-password"  # a test fixture, not a secret


@pytest.fixture(scope="module")
def protected() -> Iterator[SentinelTopology]:
    with devstack.workdir("lasthop-it-sentinel-auth-") as work:
        topology = SentinelTopology(work, password=PASSWORD)
        try:
            yield topology
        finally:
            topology.close()


def _with_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://:{PASSWORD}@{rest}"


def test_password_protected_sentinels_serve_checks(
    protected: SentinelTopology, upstream: DemoUpstream
) -> None:
    url = _with_password(protected.url)
    env = {"LASTHOP_STORE_SENTINEL_PASSWORD": PASSWORD}
    with running_fleet(
        "lasthop-it-sentinel-auth-fleet-", url, size=1, env=env, upstream=upstream
    ) as fleet:
        user = unique("u-sentinel-auth")
        fleet.grant(user, "scribe")
        fleet.wait_allowed(fleet.replicas[0], fleet.token(user, ["scribe"]))


def test_sentinels_behind_tls_are_reached_with_tls_and_the_password(
    protected: SentinelTopology, tmp_path: Path
) -> None:
    ca = ThrowawayCA(tmp_path / "tls")
    relays = [TlsRelay(port, ca) for port in protected.sentinel_ports]
    try:
        hosts = ",".join(f"127.0.0.1:{r.port}" for r in relays)
        url = f"rediss+sentinel://:{PASSWORD}@{hosts}/{protected.service}?ssl_ca_certs={ca.ca_path}"

        async def discover() -> Any:
            store = RedisStore(url, 1000, sentinel_password=PASSWORD)
            try:
                return await store.redis.connection_pool.get_master_address()
            finally:
                await store.close()

        assert asyncio.run(discover()) == ("127.0.0.1", protected.primary_port)
        assert sum(r.handshakes for r in relays) >= 1
    finally:
        for relay in relays:
            relay.close()
