"""Issue 11, item 12: the sidecar hop over a Unix socket and over mTLS; the admin API over TLS.

Before, both gRPC listeners were plaintext TCP only: the admin bearer token
crossed the network in clear. Each test runs a real `lasthop serve` and, for
the ext_authz hop, a real Envoy rendered from the shipped templates
(envoy/sidecar-uds.yaml, envoy/sidecar-tls.yaml) with certificates made by
the test (tests/tls.py). A request is allowed and one is denied through each
hop, so the hop carries real decisions both ways.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.cli.admin_client import AdminClient, ClientTls
from authz.dev import stack as devstack
from authz.dev.upstream import DemoUpstream
from authz.errors import AdminError
from tests.integration.conftest import (
    RECORDS,
    Stack,
    assert_deny,
    run_cli,
    running_stack,
    unique,
    wait_until,
)
from tests.tls import Pem, TestCA

pytestmark = pytest.mark.integration

ENVOY_DIR = devstack.ENVOY_TEMPLATE.parent


def allow_and_deny(stack: Stack) -> None:
    """One allow and one deny through Envoy: the hop carries real decisions."""
    user = unique("u-hop")
    stack.grant(user)
    ok = stack.get(RECORDS, stack.token(user, ["scribe"]))
    assert ok.status == 200, ok.raw[:300]
    assert ok.upstream_saw["x-lasthop-user"] == user
    assert_deny(stack.get(RECORDS, stack.token(unique("u-nogrant"), ["scribe"])), 403, "no_grant")
    assert_deny(stack.get(RECORDS), 401, "missing_token")


# --- a Unix domain socket -----------------------------------------------------------------------


def test_the_sidecar_hop_over_a_unix_socket(upstream: DemoUpstream, tmp_path: Path) -> None:
    sock = tmp_path / "authz.sock"

    def envoy(work: Path, lasthop: devstack.LasthopServer, up: DemoUpstream) -> devstack.Envoy:
        assert lasthop.ready["listen"] == f"unix:{sock}"
        return devstack.Envoy(
            work,
            0,
            up.port,
            template=ENVOY_DIR / "sidecar-uds.yaml",
            values={"LASTHOP_SOCKET": str(sock)},
        )

    env = {"LASTHOP_SERVER_LISTEN": f"unix:{sock}"}
    with running_stack(
        "lasthop-uds-", use_redis=False, upstream=upstream, env=env, envoy=envoy
    ) as stack:
        assert sock.is_socket()
        allow_and_deny(stack)
        channel = grpc.insecure_channel(f"unix:{sock}")
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        channel.close()
    assert not sock.exists()  # removed on shutdown


# --- mTLS --------------------------------------------------------------------------------------


class Certs:
    def __init__(self, root: Path) -> None:
        self.ca = TestCA(root / "ca")
        self.lasthop = self.ca.issue("lasthop")  # localhost, 127.0.0.1
        self.envoy = self.ca.issue("envoy-sidecar", dns=(), ips=(), client=True)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


def tls_env(certs: Certs, admin: bool = False) -> dict[str, str]:
    prefix = "LASTHOP_SERVER_ADMIN_TLS" if admin else "LASTHOP_SERVER_TLS"
    return {
        f"{prefix}_CERT": str(certs.lasthop.cert),
        f"{prefix}_KEY": str(certs.lasthop.key),
        f"{prefix}_CLIENT_CA": str(certs.ca.path),
    }


def tls_envoy(certs: Certs) -> Any:
    def envoy(work: Path, lasthop: devstack.LasthopServer, up: DemoUpstream) -> devstack.Envoy:
        return devstack.Envoy(
            work,
            lasthop.port,
            up.port,
            template=ENVOY_DIR / "sidecar-tls.yaml",
            values={
                "LASTHOP_HOST": "127.0.0.1",
                "LASTHOP_TLS_NAME": "localhost",
                "ENVOY_CERT": str(certs.envoy.cert),
                "ENVOY_KEY": str(certs.envoy.key),
                "LASTHOP_CA": str(certs.ca.path),
            },
        )

    return envoy


@pytest.fixture
def mtls_stack(certs: Certs, upstream: DemoUpstream) -> Iterator[Stack]:
    with running_stack(
        "lasthop-mtls-",
        use_redis=False,
        upstream=upstream,
        env=tls_env(certs),
        envoy=tls_envoy(certs),
    ) as stack:
        yield stack


def served_certificate(port: int, client: Pem | None, ca: Path) -> bytes:
    """The DER certificate the listener presents on a new connection."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def health(port: int, credentials: grpc.ChannelCredentials | None) -> Any:
    address = f"127.0.0.1:{port}"
    channel = (
        grpc.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )
        if credentials
        else grpc.insecure_channel(address)
    )
    try:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    finally:
        channel.close()


def test_the_sidecar_hop_over_mtls(mtls_stack: Stack) -> None:
    allow_and_deny(mtls_stack)


def test_the_mtls_listener_refuses_plaintext_and_clients_without_a_certificate(
    mtls_stack: Stack, certs: Certs
) -> None:
    port = mtls_stack.lasthop.port
    ca = certs.ca.path.read_bytes()
    client = certs.envoy.read()
    ok = health(
        port, grpc.ssl_channel_credentials(ca, private_key=client[1], certificate_chain=client[0])
    )
    assert ok.status == health_pb2.HealthCheckResponse.SERVING
    for refused in (
        None,  # plaintext
        grpc.ssl_channel_credentials(ca),  # TLS, no client certificate
    ):
        with pytest.raises(grpc.RpcError) as err:
            health(port, refused)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    stranger = TestCA(certs.ca.directory.parent / "stranger").issue("stranger", client=True)
    with pytest.raises(grpc.RpcError):
        health(
            port,
            grpc.ssl_channel_credentials(
                ca, private_key=stranger.read()[1], certificate_chain=stranger.read()[0]
            ),
        )


def test_a_rotated_certificate_is_served_to_new_connections(
    mtls_stack: Stack, certs: Certs
) -> None:
    port = mtls_stack.lasthop.port
    before = served_certificate(port, certs.envoy, certs.ca.path)
    fresh = certs.ca.issue("lasthop-renewed")
    # as cert-manager renews: new files in place (key first, then the certificate)
    certs.lasthop.key.write_bytes(fresh.key.read_bytes())
    certs.lasthop.cert.write_bytes(fresh.cert.read_bytes())
    assert wait_until(
        lambda: served_certificate(port, certs.envoy, certs.ca.path) != before, timeout=10
    )
    assert served_certificate(port, certs.envoy, certs.ca.path) == ssl.PEM_cert_to_DER_cert(
        fresh.cert.read_text()
    )
    allow_and_deny(mtls_stack)  # Envoy's open connection and new ones both still work


def test_a_broken_renewal_keeps_the_current_certificate(mtls_stack: Stack, certs: Certs) -> None:
    port = mtls_stack.lasthop.port
    before = served_certificate(port, certs.envoy, certs.ca.path)
    other = certs.ca.issue("other")
    certs.lasthop.key.write_bytes(other.key.read_bytes())  # a key that is not the cert's
    assert served_certificate(port, certs.envoy, certs.ca.path) == before
    assert wait_until(lambda: "keeping the current certificate" in mtls_stack.lasthop.logs(), 5)
    allow_and_deny(mtls_stack)


# --- the admin API over TLS ---------------------------------------------------------------------


def test_the_admin_api_over_mtls_and_the_cli_with_a_ca(
    certs: Certs, upstream: DemoUpstream
) -> None:
    admin_client = certs.ca.issue("ops-laptop", dns=(), ips=(), client=True)
    with running_stack(
        "lasthop-admin-tls-", use_redis=False, upstream=upstream, env=tls_env(certs, admin=True)
    ) as stack:
        address = stack.admin_address
        token = stack.issuer.admin_token()
        pem = admin_client.read()
        client = AdminClient(
            address,
            token,
            ClientTls(ca=certs.ca.path.read_bytes(), cert=pem[0], key=pem[1]),
        )
        try:
            assert "scribe" in {a.id for a in client.list_agents()}
        finally:
            client.close()
        plaintext = AdminClient(address, token)
        try:
            with pytest.raises(AdminError) as err:
                plaintext.list_agents()
            assert err.value.code == "unavailable"
        finally:
            plaintext.close()
        cli = run_cli(
            "agents",
            "list",
            "--admin-url",
            f"grpcs://{address}",
            "--admin-ca",
            str(certs.ca.path),
            "--admin-cert",
            str(admin_client.cert),
            "--admin-key",
            str(admin_client.key),
            "--output",
            "json",
            env={"LASTHOP_ADMIN_TOKEN": token},
        )
        assert cli.returncode == 0, cli.stderr
        assert '"id": "scribe"' in cli.stdout
        without_ca = run_cli(
            "agents",
            "list",
            "--admin-url",
            f"grpcs://{address}",
            env={"LASTHOP_ADMIN_TOKEN": token},
        )
        assert without_ca.returncode == 5  # unavailable: the TLS handshake fails
        assert "unavailable" in without_ca.stderr
